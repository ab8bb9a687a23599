"""The partitions this replica holds, as far as its builders got, and the fenced commit that saves them.

Per partition: its series (loaded lazily, with their saved state: ``SeriesLoader``), the last entry of its trades
stream processed, what its reads changed since its last commit (``Unsaved``) and a lock (one read, timer tick,
backfill or unfollow at a time). ``save`` commits in one ``Ownership.fenced`` script the commands queued (closed
candles: ``queue_candles``; in-progress ones: ``LiveCandles``), the state of every series changed and the new offset;
a commit that raised drops the partition (``drop``): the next read resumes from what Redis holds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from services.candle_builder.core import Emitted
from services.candle_builder.core.state import dump_state
from services.candle_builder.series import Pair, Series, encode_candle
from services.candle_builder.settings import Settings
from shared import streams
from shared.ownership import PREVIOUS, Ownership
from shared.partitions import partition_of
from shared.schemas import pack

__all__ = ["GROUP", "SAVE_EVERY_S", "HeldPartitions", "Unsaved"]

GROUP = streams.GROUP_CANDLE_BUILDER
#: Longest time a partition's state and offset stay unsaved while its reads publish nothing: what a new owner reads
#: again after a crash (it resumes from the saved state and offset, so nothing counts twice).
SAVE_EVERY_S = 1.0


@dataclass(slots=True)
class Unsaved:
    """What a partition's reads changed since its last commit: the series and the offset read to."""

    since: float  # monotonic time of the first unsaved change
    series: dict[Pair, Series] = field(default_factory=dict)
    offset: bytes | None = None


class HeldPartitions:
    """The series, offsets, unsaved changes and locks of the partitions held; ``save`` commits them fenced."""

    def __init__(self, settings: Settings, ownership: Ownership) -> None:
        self.settings = settings
        self.ownership = ownership
        self.series: dict[Pair, Series] = {}  # pairs of the partitions held (loaded lazily, with their saved state)
        self._partitions: dict[Pair, int] = {}  # pair -> its partition (``partition``)
        self.offsets: dict[int, bytes] = {}  # partition held -> the last entry of its trades stream processed
        self.unsaved: dict[int, Unsaved] = {}  # partition -> what its reads changed since its last commit
        self._locks: dict[int, asyncio.Lock] = {}  # one read, timer tick or backfill of a partition at a time
        self.candles_out = 0

    def partition(self, exchange: str, symbol: str) -> int:
        """The partition of (exchange, symbol)."""
        # remembered per pair: a partition-wide watermark asks it for every pair built here (partition_of hashes,
        # ~0.7 us: O(pairs) per watermark per partition, ~0.4 s of a 500-symbol backtest, ~4 s at 5,000 symbols)
        got = self._partitions.get((exchange, symbol))
        if got is None:
            got = self._partitions[(exchange, symbol)] = partition_of(exchange, symbol, self.settings.partitions)
        return got

    def lock(self, partition: int) -> asyncio.Lock:
        """The partition's lock: one read, timer tick, backfill or unfollow of a partition at a time."""
        return self._locks.setdefault(partition, asyncio.Lock())

    def drop(self, partition: int) -> None:
        """Forget a partition's series: whoever runs it next resumes from what Redis holds."""
        self.offsets.pop(partition, None)
        self.unsaved.pop(partition, None)
        for pair in [pair for pair, series in self.series.items() if series.partition == partition]:
            del self.series[pair]

    def changed(self, partition: int, changed: list[Series]) -> Unsaved:
        """The partition's unsaved changes, with ``changed`` series added."""
        unsaved = self.unsaved.get(partition)
        if unsaved is None:
            unsaved = self.unsaved[partition] = Unsaved(time.monotonic())
        for series in changed:
            unsaved.series[(series.exchange, series.symbol)] = series
        return unsaved

    async def save(self, partition: int, commands: list[Any]) -> None:
        """Run ``commands`` fenced, with the state of every series changed since the partition's last commit and
        its new offset: what is published and the state it came from are saved together. The caller holds the
        partition's lock. If this raises (lease lost, Redis away) the partition is dropped: its builders ran ahead of
        what Redis holds, and the next read resumes from there."""
        unsaved = self.unsaved.pop(partition, None)
        if unsaved is not None:
            commands += [self._state_command(series) for series in unsaved.series.values()]
            if unsaved.offset is not None:
                commands.append(("HSET", streams.part_state(partition, GROUP),
                                 streams.offset_field(streams.part_trades(partition)), unsaved.offset))
        if commands:
            try:
                await self.ownership.fenced(partition, commands)
            except BaseException:
                self.drop(partition)
                raise

    def queue_candles(self, commands: list[Any], series: Series, emitted: list[Emitted],
                      history: bool = False) -> None:
        """The fenced commands of closed candles: XADD to the partition's stream, the same entry (id and data) to the
        series' stream (``PREVIOUS``: the id the first XADD got), PUBLISH, and the series' registry entry."""
        ex, sym, p = series.exchange, series.symbol, series.partition
        part, part_maxlen = streams.part_candles(p), self.settings.part_candles_maxlen
        for tf, bar in emitted:
            data = encode_candle(ex, sym, tf, bar, history=history)
            commands.append(("XADD", part, "MAXLEN", "~", part_maxlen, "*", streams.FIELD, data))
            commands.append(("XADD", streams.series_candles(p, ex, sym, tf), "MAXLEN", "~",
                             self.settings.retention(tf), PREVIOUS, streams.FIELD, data))
            commands.append(("PUBLISH", streams.channel_candles(ex, sym, tf), data))
            if tf not in series.registered:
                series.registered.add(tf)
                commands.append(("SADD", streams.part_candle_registry(p), streams.registry_member(ex, sym, tf)))
        self.candles_out += len(emitted)

    def _state_command(self, series: Series) -> tuple[Any, ...]:
        state = dump_state(series.builder)
        if series.live_ts is not None:  # the exchange-time throttle's last point (``LiveCandles.exchange_throttle``)
            state["live_ts"] = series.live_ts
        return ("HSET", streams.part_state(series.partition, GROUP),
                streams.pair_field(series.exchange, series.symbol), pack(state))
