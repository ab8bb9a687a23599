"""The engines of the partitions this replica holds (or last drained), one ``PartitionEngine`` each.

An engine is opened for a partition (built for the plan's series and the rules, warmed up from what Redis holds as
processed), kept while it is current (the partition's plan did not change; a change of rules alone is applied to it,
windows kept), and retired when its partition goes or a new engine replaces it: its alert counts are kept here. The
engines share one raw reader (``shared.partitioned.raw_reader``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from redis.asyncio import Redis

from services.alert_engine.partition import PartitionEngine, PlanStale
from services.alert_engine.rule_source import RuleSource
from services.alert_engine.series_sync import SeriesSync
from services.alert_engine.settings import Settings
from shared.bus import Bus
from shared.partitioned import raw_reader

__all__ = ["PartitionEngines"]

logger = logging.getLogger(__name__)


class PartitionEngines(Mapping[int, PartitionEngine]):
    """Partition held -> its engine (read only: ``open`` and ``drop`` change it); ``counts`` of alerts over the live
    and the retired engines."""

    def __init__(self, settings: Settings, redis: Redis, bus: Bus, series_sync: SeriesSync, rule_source: RuleSource,
                 clock: Callable[[], int] | None) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = bus
        self.series_sync = series_sync
        self.rule_source = rule_source
        self.clock = clock
        self._engines: dict[int, PartitionEngine] = {}
        self._raw: Any = None  # (``raw_reader``, made once Redis answered: a cluster client knows its nodes then)
        self.refilled = 0  # partition engines built again because their plan changed
        self.published = self.suppressed = self.duplicates = 0  # of engines retired (``counts`` adds the live ones)

    def __getitem__(self, partition: int) -> PartitionEngine:
        return self._engines[partition]

    def __iter__(self) -> Iterator[int]:
        return iter(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def counts(self) -> dict[str, int]:
        """Alerts published, suppressed (cooldown, a resolve of nothing) and duplicate ids, by this replica."""
        out = {"published": self.published, "suppressed": self.suppressed, "duplicates": self.duplicates}
        for pe in self._engines.values():
            for k in out:
                out[k] += getattr(pe.commit, k)
        return out

    async def open(self, partition: int) -> PartitionEngine:
        """A new engine for ``partition``, warmed up from what Redis holds as processed."""
        old = await self.drop(partition)
        if old is not None and old.version != self.series_sync.versions.get(partition, 0):
            self.refilled += 1
        pe = PartitionEngine(self.settings, self.redis, self.reader(), self.bus, partition,
                             self.series_sync.plan(partition), self.series_sync.versions.get(partition, 0),
                             self.rule_source.ruleset, self.clock)
        await pe.open()
        self._engines[partition] = pe
        return pe

    async def drop(self, partition: int) -> PartitionEngine | None:
        """Retire the engine of ``partition`` (its counts kept, its commit's connections closed); the engine, if any."""
        gone = self._engines.pop(partition, None)
        if gone is not None:
            self._retire(gone)
            with contextlib.suppress(Exception):
                await gone.commit.close()
        return gone

    def reader(self) -> Any:
        """The raw reader of the engines' XREADs (made at the first call after ``close_reader``)."""
        if self._raw is None:
            self._raw = raw_reader(self.redis)
        return self._raw

    async def close_reader(self) -> None:
        """Close the engines' raw reader (a drain's end, the service's)."""
        if self._raw is not None:
            with contextlib.suppress(Exception):
                await self._raw.aclose()
            self._raw = None

    def current(self, pe: PartitionEngine | None, partition: int) -> bool:
        """``pe`` is still the engine for ``partition``'s plan (False: open a new one); the rules running now are
        given to it if they changed."""
        if pe is None or pe.version != self.series_sync.versions.get(partition, 0):
            return False
        ruleset = self.rule_source.ruleset
        if pe.ruleset is not ruleset:  # rules changed, not what the partition reads: windows are kept
            pe.engine.set_rules(ruleset)
            pe.ruleset = ruleset
        return True

    async def replan(self, pe: PartitionEngine, stale: PlanStale) -> None:
        """A read met pairs the plan does not list: sync the plan now (the read is not committed: it comes again, to
        the engine built for the new plan); pairs the new plan still leaves out are ignored by this engine."""
        logger.info("alert_engine: partition %d: %s; reading the registries again", pe.partition, stale)
        await self.series_sync.sync()
        if self.current(pe, pe.partition):
            pe.ignored |= stale.pairs

    def _retire(self, pe: PartitionEngine) -> None:
        self.published += pe.commit.published
        self.suppressed += pe.commit.suppressed
        self.duplicates += pe.commit.duplicates
