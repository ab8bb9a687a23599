"""alert_engine wiring: one engine per partition held; each reads its partition's streams, evaluates the rules
(``core``) and commits the alerts with its new offsets, fenced by its lease.

Work is split by (exchange, symbol) partition, like candle_builder's (docs/scale-out.md): this replica holds
partitions of group ``alert_engine`` by lease (``shared.ownership``, ``shared.partitioned.PartitionWorkers``) and runs
one worker per partition held. The worker builds the partition's own ``AlertEngine`` (``partition.PartitionEngine``),
warms it up from Redis (the candles processed up to the saved offsets), then reads ``part_candles(p)`` and the other
streams of ``p`` the rules need with XREAD from those offsets (plus the series of other partitions its
multi-symbol rules read), and commits each read in one script (``commit.py``): the lease check, the alerts with
their exactly-once records, the rule state rows and the new offsets. A partition lost drops its engine; its new owner
warms a new one up from what was committed, so 1, 2 or 3 replicas give the same alerts.

Around it: ``PartitionEngines`` (``engines.py``: the engines of the partitions held, opened, kept current and
retired), ``RuleSource`` (the rules file and the API's rules, re-read when they change) and ``SeriesSync`` (what
each partition reads, and the subscriptions), the last two run by ``_housekeeping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis

from services.alert_engine.commit import AlertCommit
from services.alert_engine.core import AlertEngine, Fire
from services.alert_engine.inputs import Input, decode_input
from services.alert_engine.engines import PartitionEngines
from services.alert_engine.partition import PartitionEngine, PlanStale
from services.alert_engine.rule_source import RuleSource
from services.alert_engine.series_sync import SeriesSync
from services.alert_engine.settings import Settings
from shared import metrics, streams
from shared.bus import Bus
from shared.outage import REDIS_DOWN, backoff_delay
from shared.ownership import FencedError, Ownership
from shared.partitioned import PartitionWorkers, entry_id
from shared.partitions import partition_of
from shared.rules import RuleSet
from shared.runtime import consumer_name, heartbeat, quiet_gc

__all__ = ["AlertEngineApp", "Input", "decode_input"]

logger = logging.getLogger(__name__)

SERVICE = "alert_engine"
GROUP = streams.GROUP_ALERT_ENGINE
#: a drain holds the partitions it works on with a lease this long (it renews none; released when done)
DRAIN_LEASE_MS = 600_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class AlertEngineApp:
    """The alert engine service: ``await AlertEngineApp(settings, redis).run(stop)``."""

    def __init__(self, settings: Settings, redis: Redis, *, ruleset: RuleSet | None = None) -> None:
        """``ruleset``: rules given in code (tests); None reads ``settings.rules_file``."""
        self.settings = settings
        self.redis = redis
        self.name = consumer_name(SERVICE, settings.consumer_name)
        self.rule_source = RuleSource(redis, settings.rules_file, ruleset)
        self.clock = wall_clock_ms if settings.clock == "wall" else None
        # the rules' routes, for the plan (never fed): each partition runs its own engine
        self.routing = AlertEngine(self.rule_source.ruleset, keep=settings.keep_bars, clock=self.clock)
        self.bus = Bus(redis, settings.bus_settings(), service=SERVICE)
        self.ownership = Ownership(redis, GROUP, self.name, settings.partitions, ttl_ms=settings.lease_ttl_ms)
        self.workers = PartitionWorkers(self.ownership, self.work, name=SERVICE, outage=self.bus.outage)
        self.series_sync = SeriesSync(settings, redis, self.routing, self.name)
        self.engines = PartitionEngines(settings, redis, self.bus, self.series_sync, self.rule_source, self.clock)
        self.commit = AlertCommit(settings, redis, self.routing)  # ``publish`` outside a worker (tools, tests)
        self.rewarmed = 0  # partition engines built again after a failure
        self._stopping = asyncio.Event()
        self._failed: set[int] = set()  # partitions whose worker failed: its next engine is a re-warm

    @property
    def ruleset(self) -> RuleSet:
        """The rules running: the file's merged with the API's (disabled ones included)."""
        return self.rule_source.ruleset

    @property
    def reload_error(self) -> str | None:
        return self.rule_source.reload_error

    @property
    def rules(self) -> list[Any]:
        """The enabled rules."""
        return self.routing.rules

    @property
    def streams(self) -> set[str]:
        """Every stream the engines of the partitions held (or last drained) read."""
        return {name for pe in self.engines.values() for name in pe.all_streams}

    @property
    def deferred(self) -> int:
        """Closed bars whose evaluation waits for another series, over the engines."""
        return sum(pe.engine.deferred for pe in self.engines.values())

    def engine_of(self, exchange: str, symbol: str) -> AlertEngine:
        """The engine of the partition of (exchange, symbol), held by this replica (KeyError otherwise)."""
        return self.engines[partition_of(exchange, symbol, self.settings.partitions)].engine

    def counts(self) -> dict[str, int]:
        """Alerts published, suppressed (cooldown, a resolve of nothing) and duplicate ids, by this replica."""
        return self.engines.counts()

    def status(self) -> dict[str, Any]:
        return {"rules": len(self.routing.rules), "series": len(self.series_sync.subscriptions.subscribed),
                **self.counts(), "reload_error": self.reload_error or "", "group": GROUP,
                "partitions": ",".join(map(str, self.workers.owned)),
                "deferred": self.deferred}

    # ---- lifecycle --------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not await self._start(stop):
            return
        workers = asyncio.create_task(self.workers.run(self._stopping), name=f"{SERVICE}-partitions")
        helpers = [
            asyncio.create_task(self._housekeeping(stop), name=f"{SERVICE}-sync"),
            asyncio.create_task(self._sample_loop(stop), name=f"{SERVICE}-metrics"),
            asyncio.create_task(heartbeat(self.redis, SERVICE, stop, self.status, outage=self.bus.outage,
                                          beat=self.series_sync.subscriptions.refresh, instance=self.name),
                                name=f"{SERVICE}-hb"),
        ]
        try:
            await stop.wait()
            self._stopping.set()  # (workers see it: a backtest's last waiting bars are evaluated, see ``work``)
            await workers
        finally:
            self._stopping.set()
            for t in [workers, *helpers]:
                t.cancel()
            await asyncio.gather(workers, *helpers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.series_sync.subscriptions.drop_all()
            await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.commit.close()
        await self.engines.close_reader()

    async def _start(self, stop: asyncio.Event) -> bool:
        """The rules and the plan before the first read. Redis going away meanwhile (it answered the service's
        start-up check a moment before) is waited for, told once, instead of ending the service; False if stopped."""
        attempt = 0
        while True:
            try:
                await self._sync_rules(await self.rule_source.start())
                self.bus.outage.ok()
                quiet_gc()  # start-up's objects out of the collector's sight: no ~60 ms pause behind an alert
                return True
            except REDIS_DOWN as exc:
                self.bus.outage.lost(exc, "start-up")
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff_delay(attempt, base=0.1, cap=5.0))
                if stop.is_set():
                    return False

    async def _sync_rules(self, ruleset: RuleSet) -> None:
        self.routing.set_rules(ruleset)
        await self.series_sync.sync()

    async def reload_rules(self) -> bool:
        """Take the rules file's and the API's changes (a bad file keeps the rules running: ``reload_error``);
        True when the rule set changed (the partitions' engines follow it)."""
        ruleset = await self.rule_source.poll()
        if ruleset is None:
            return False
        await self._sync_rules(ruleset)
        return True

    async def sync_series(self) -> None:
        """Follow the symbols the registries list now (``SeriesSync.sync``)."""
        await self.series_sync.sync()

    async def publish(self, fires: list[Fire]) -> list[int]:
        """Commit ``fires`` outside any worker (no fence, no offsets: tools and tests); the answers: 1 published,
        0 duplicate, -1 cooling down, -2 a resolve whose run published no firing alert."""
        return await self.commit.publish(fires)

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        next_sync = next_reload = loop.time()
        while not stop.is_set():
            try:
                if loop.time() >= next_reload:
                    next_reload = loop.time() + s.reload_every_s
                    await self.reload_rules()
                    self.bus.outage.ok()  # (said only after commands reached Redis: a round may send none)
                if loop.time() >= next_sync:
                    next_sync = loop.time() + s.registry_poll_s
                    await self.series_sync.sync()
                    self.bus.outage.ok()
            except REDIS_DOWN as exc:  # told once per outage
                self.bus.outage.lost(exc, "housekeeping")
            except Exception:  # a bug: logged, and the next round retries
                logger.exception("alert_engine: housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(s.reload_every_s, s.registry_poll_s))

    async def _sample_loop(self, stop: asyncio.Event, every_s: float = 5.0) -> None:
        """The consumer lag metric, from the offsets of the partitions held (entries after each)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            offsets = {n: o for pe in list(self.engines.values()) for n, o in pe.offsets.items()}
            await metrics.sample_offsets(self.redis, GROUP, offsets)

    # ---- one worker per partition held ------------------------------------------------------------------------------

    async def work(self, partition: int, stop: asyncio.Event) -> None:
        """Run the engine of ``partition`` until ``stop`` (the partition was lost, or the service stops)."""
        s = self.settings
        pe: PartitionEngine | None = None
        failed = partition in self._failed  # (a restarted worker: the engine that failed may be ahead of Redis)
        self._failed.discard(partition)
        try:
            while not stop.is_set():
                if pe is None or not self.engines.current(pe, partition):
                    pe = await self.engines.open(partition)
                    if failed:
                        self.rewarmed += 1
                        failed = False
                        logger.info("alert_engine: partition %d warmed up again from what was committed", partition)
                waited = wall_clock_ms() - s.cross_series_wait_ms if s.clock == "wall" else None
                try:
                    await pe.step(self.ownership, block_ms=s.block_ms, waited_since=waited)
                except PlanStale as stale:
                    await self.engines.replan(pe, stale)
            if pe is not None and self._stopping.is_set() and s.clock == "exchange":
                # a backtest ends when its input does: bars still waiting for another series are evaluated now.
                # Live, they are not: the next owner's warm-up finds them waiting again.
                await pe.flush(self.ownership)
        except FencedError:
            raise
        except Exception:
            self._failed.add(partition)
            raise
        finally:
            await self.engines.drop(partition)

    # ---- burst mode (tests, tools) ----------------------------------------------------------------------------------

    async def drain(self, *, final: bool = True) -> int:
        """Burst mode: sync the rules and the plan once, then, partition by partition (each held by a lease for the
        time being; one held by a running replica is skipped), process everything available now.

        ``final``: what was read is all there is, so bars still waiting for another series are evaluated with what
        that series has; False leaves them waiting for the next drain (or owner). An engine is kept between drains
        while Redis holds exactly what it processed."""
        await self._sync_rules(await self.rule_source.start())
        owner = Ownership(self.redis, GROUP, self.name, self.settings.partitions, ttl_ms=DRAIN_LEASE_MS)
        n = 0
        try:
            for p in range(self.settings.partitions):
                if not await owner.acquire(p):
                    logger.warning("alert_engine: partition %d is held by a running replica; not drained", p)
                    continue
                try:
                    pe = self.engines.get(p)
                    if pe is None or not self.engines.current(pe, p) or not await self._unchanged(pe):
                        pe = await self.engines.open(p)
                    pe.raw = self.engines.reader()  # (the last drain closed its reader)
                    while True:
                        try:
                            got = await pe.step(owner, block_ms=None)
                        except PlanStale as stale:
                            await self.engines.replan(pe, stale)
                            if not self.engines.current(pe, p):
                                pe = await self.engines.open(p)
                            continue
                        if not got:
                            break
                        n += got
                    if final:
                        await pe.flush(owner)
                    if pe.engine.stale:  # backfilled candles read last: merged now rather than at the next bar
                        pe.engine.rewarm()
                finally:
                    await owner.release(p)
        finally:
            await self.commit.close()
            for pe in self.engines.values():
                await pe.commit.close()
            await self._close()
        return n

    async def warm_up(self, exchange: str, symbol: str) -> AlertEngine:
        """The engine of the partition of (exchange, symbol), built and warmed up from Redis now, as a new owner's
        is (tools, tests); a drain that follows goes on with it."""
        await self._sync_rules(await self.rule_source.start())
        return (await self.engines.open(partition_of(exchange, symbol, self.settings.partitions))).engine

    async def _unchanged(self, pe: PartitionEngine) -> bool:
        """Redis holds the offsets ``pe`` has (nobody processed the partition since)."""
        saved = await self.redis.hgetall(streams.part_state(pe.partition, GROUP))
        want = {streams.offset_field(n).encode(): o for n, o in pe.offsets.items() if entry_id(o) != (0, 0)}
        return all(saved.get(k) == v for k, v in want.items())

    async def caught_up(self) -> bool:
        """Every partition's engine has processed every entry of its streams (a backtest's end): the offsets saved
        in Redis, compared with each stream's last entry."""
        for p in range(self.settings.partitions):
            names = [streams.part_candles(p)]
            pe = self.engines.get(p)
            if pe is not None:
                names = pe.all_streams
            saved: dict[Any, Any] = await self.redis.hgetall(streams.part_state(p, GROUP))
            for name in names:
                last = await self.redis.xrevrange(name, count=1)
                if not last:
                    continue
                offset = saved.get(streams.offset_field(name).encode())
                if offset is None or entry_id(offset) < entry_id(last[0][0]):
                    return False
        return True
