"""Closing on time: candles of a live series closed by the wall clock when no trade or watermark comes to close them
(``close_on_timer``), as long as its partition's stream holds nothing unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from services.candle_builder.core import Emitted
from services.candle_builder.held import HeldPartitions
from services.candle_builder.series import Series, entry_id
from services.candle_builder.settings import Settings
from shared import metrics, streams

__all__ = ["ClosingTimer"]

#: Longest a series goes unchecked by the timer (its feed's latency may have shrunk since: it is due that much sooner)
RECHECK_MS = 500


class ClosingTimer:
    """Ticks of the wall clock closing what live series have due; ``closed`` counts the candles it closed."""

    def __init__(self, settings: Settings, redis: Redis, held: HeldPartitions) -> None:
        self.settings = settings
        self.redis = redis
        self.held = held
        self.closed = 0

    async def run(self, stop: asyncio.Event, guarded: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]]
                  ) -> None:
        """A tick every ``timer_every_ms`` until ``stop`` (none unless ``close_on_timer``), each run by ``guarded`` (the
        app's: an outage or a bug is told and the next tick retries)."""
        if not self.settings.close_on_timer:
            return
        every = self.settings.timer_every_ms / 1000
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            if stop.is_set():
                return
            # (the next tick retries; trades and watermarks still close candles meanwhile)
            await guarded("closing timer", lambda: self.tick(int(time.time() * 1000)))

    async def tick(self, now_ms: int) -> int:
        """Close what live series have due by the wall clock (``now_ms``), if their partition's stream holds nothing
        unread.

        Estimated exchange time = now − the series' feed latency − grace. Replays (latency of years) never qualify,
        and a series whose stream holds entries not yet processed waits for them: the timer never closes early what
        the stream already holds. Returns how many candles it closed.
        """
        s = self.settings
        due: dict[int, list[tuple[Series, int]]] = {}
        for series in self.held.series.values():
            if series.timer_check_at > now_ms:  # (nothing can be due before then: the usual series of a tick)
                continue
            offset = series.live_offset
            if offset is None or abs(offset) > s.live_max_skew_ms:
                series.timer_check_at = now_ms + RECHECK_MS  # (a replay, or no trade yet)
                continue
            estimate = now_ms - offset - s.close_grace_ms
            next_close = series.builder.next_close_at()
            if next_close is not None and next_close <= estimate:
                due.setdefault(series.partition, []).append((series, estimate))
            else:  # when it would be due by this offset; a trade or a close moves its next close only later
                series.timer_check_at = (now_ms + RECHECK_MS if next_close is None
                                         else min(now_ms + RECHECK_MS, next_close + offset + s.close_grace_ms))
        closed = 0
        for partition, items in due.items():
            newest = await self.redis.xrevrange(streams.part_trades(partition), count=1)
            async with self.held.lock(partition):
                done = self.held.offsets.get(partition)
                if done is None or (newest and entry_id(newest[0][0]) > entry_id(done)):
                    continue  # entries wait in the stream: they, not the clock, decide
                commands: list[Any] = []
                counted: list[Emitted] = []
                try:
                    for series, estimate in items:
                        if self.held.series.get((series.exchange, series.symbol)) is not series:
                            continue
                        out: list[Emitted] = []
                        series.builder.advance(estimate, out)
                        if out:
                            closed += len(out)
                            self.held.queue_candles(commands, series, out)
                            counted.extend(out)
                            self.held.changed(partition, [series])
                    if commands:
                        await self.held.save(partition, commands)
                        metrics.count_candles(counted)
                except BaseException:
                    self.held.drop(partition)
                    raise
        self.closed += closed
        return closed
