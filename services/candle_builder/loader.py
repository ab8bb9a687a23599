"""The state of a series: loaded from what its partition's last owner saved, seeded from the exchange's history at its
first trade, and backfilled further back when a look-back grows or a timeframe is added.

History: a new series is seeded with max(``history_bars``, the look-back its subscribers ask for) candles per timeframe
(``history_bars`` unset = 500 when the feed is live, none for replays; ``history.Seeder``); a look-back that grows
later, or a timeframe added to a running series, is backfilled further back (older candles appended, the live seam
untouched), or, without exchange history, rolled up from the series' own base candles.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis

from services.candle_builder import history
from services.candle_builder.bars import rows_rolled_up
from services.candle_builder.core import Emitted, SeriesBuilder
from services.candle_builder.core.history import backfill, backfill_range
from services.candle_builder.core.state import restore_state
from services.candle_builder.following import Following
from services.candle_builder.held import GROUP, HeldPartitions
from services.candle_builder.series import Pair, Series, entry_id
from services.candle_builder.settings import MAX_HISTORY_BARS, Settings
from shared import streams
from shared.bus import FIELD
from shared.errors import DecodeError
from shared.schemas import Candle, FeedMessage, TradeBatch, unpack
from shared.timeframes import timeframe_ms

__all__ = ["SeriesLoader"]

logger = logging.getLogger(__name__)


class SeriesLoader:
    """Loads, seeds and backfills the series of the partitions held; ``backfilled`` counts the older candles written."""

    def __init__(self, settings: Settings, redis: Redis, held: HeldPartitions, following: Following) -> None:
        self.settings = settings
        self.redis = redis
        self.held = held
        self.following = following  # (a series' timeframes and look-back)
        self.seeder = history.Seeder(settings, redis)
        self.backfilled = 0  # older history candles written after a look-back grew / a timeframe was added
        self._rolled_up: set[tuple[Pair, str]] = set()  # (pair, timeframe) rolled up from base candles (_roll_up_added)

    async def load(self, pair: Pair, partition: int) -> Series:
        """Create the series of a pair and restore its saved state (its timeframes learnt first when its entries came
        before discovery saw it: ``Following.learn``)."""
        if pair not in self.following.wanted:
            await self.following.learn(pair)
        exchange, symbol = pair
        builder = self._new_builder(exchange, symbol)
        saved_state = await self.redis.hget(streams.part_state(partition, GROUP), streams.pair_field(exchange, symbol))
        series = Series(exchange, symbol, partition, builder)
        if saved_state is not None:
            try:
                saved = unpack(saved_state)
                restore_state(builder, saved)
                series.live_ts = saved.get("live_ts")
                logger.info("candle_builder: %s %s resumes (partition %d)", exchange, symbol, partition)
            except (ValueError, KeyError, TypeError, DecodeError) as exc:
                # e.g. base_timeframe changed between runs: the saved candles cannot continue. Resume from the
                # partition's offset with empty candles rather than stall it.
                logger.error("candle_builder: %s %s: saved state unusable (%s); resuming with new candles (the first "
                             "ones are partial)", exchange, symbol, exc)
                series.builder = self._new_builder(exchange, symbol)
        elif self.settings.history_bars != 0:  # unset (auto) or a count: decided at the first trade (seed)
            series.needs_seed = True
        series.late_counted = (series.builder.late_revised, series.builder.late_dropped)
        self.held.series[pair] = series
        return series

    def _new_builder(self, exchange: str, symbol: str) -> SeriesBuilder:
        s = self.settings
        tfs = self.following.wanted.get((exchange, symbol)) or set(s.timeframes)
        return SeriesBuilder(tfs, base=s.base_timeframe, flat_candles=s.flat_candles, lateness_ms=s.lateness_ms,
                             max_flat=s.max_flat_candles)

    async def seed(self, series: Series, run: list[tuple[bytes, bytes, FeedMessage]]) -> None:
        """A new series waiting for its first trade (``needs_seed``): seeded from history up to the first trade of
        ``run`` (a read's entries of its pair: first id, last id, message), if it holds one."""
        first = next(((raw_id, m) for raw_id, _, m in run if type(m) is TradeBatch and m.trades), None)
        if first is not None:
            await self.seeder.seed(series, self.following.asked(series), first[1].trades[0][1],
                                   entry_id(first[0])[0])

    def queue_seeded(self, commands: list[Any], series: Series) -> None:
        """The fenced commands of a seeded series' history candles (before any live one) and of how far back each of
        its timeframes now reaches (``part_candle_history_from``)."""
        self.held.queue_candles(commands, series, series.seeded, history=True)
        series.seeded = []
        for tf, since in series.builder.history_from.items():
            commands.append(("HSET", streams.part_candle_history_from(series.partition),
                             streams.registry_member(series.exchange, series.symbol, tf), since))

    async def backfill_all(self) -> None:
        """Fetch older history where a look-back grew or a timeframe was added (see ``core.history.backfill_range``);
        one series and timeframe at a time, the fetch outside the lock so live candles keep flowing meanwhile."""
        now = time.monotonic()
        for series in list(self.held.series.values()):
            if series.needs_seed or series.last_id is None:
                continue
            if series.history_bars is None:
                await self.seeder.decide(series, series.live_offset)
            if series.history_bars == 0:  # no exchange history: a timeframe added mid-run from our own base candles
                await self._roll_up_added(series)
                continue
            for tf, bars in self.seeder.bars(series, self.following.asked(series)).items():
                span = backfill_range(series.builder, tf, bars)
                if span is None or series.backfill_retry.get(tf, 0.0) > now:
                    continue
                rows = await history.fetch(self.redis, series.exchange, series.symbol, tf, *span,
                                           limit=(span[1] - span[0]) // timeframe_ms(tf) + 1,
                                           timeout_s=self.settings.history_timeout_s)
                if rows is None:  # no history service (or an error): try again later, not every round
                    series.backfill_retry[tf] = time.monotonic() + 60.0
                    continue
                await self._write_backfill(series, tf, span, rows)

    async def _roll_up_added(self, series: Series) -> None:
        """A timeframe added to the running series of a replay (or with history off) gets the buckets before it was
        added rolled up from the closed base candles this builder published (their stream goes back to the first
        trade it kept), once the bucket under way when it was added has ended (``core.history.backfill_range``)."""
        builder = series.builder
        if not builder.emit_base:
            return  # (say_start said from when it is built)
        for tf in list(builder.derived):
            if not builder.start_at.get(tf):
                continue  # built from the series' first trade: no earlier bucket to roll up (nothing to read)
            span = backfill_range(builder, tf, MAX_HISTORY_BARS)
            if span is None or ((series.exchange, series.symbol), tf) in self._rolled_up:
                continue
            # once per process: a restart plans from the saved state
            self._rolled_up.add(((series.exchange, series.symbol), tf))
            latest: dict[int, Candle] = {}
            stream = streams.series_candles(series.partition, series.exchange, series.symbol, builder.base_tf)
            entries: Any = await self.redis.xrange(stream)
            for _, fields in entries:
                try:
                    c = Candle.decode(fields[FIELD])
                except (DecodeError, KeyError):
                    continue
                if c.closed and span[0] <= c.ts < span[1] and (c.ts not in latest or c.revision >= latest[c.ts].revision):
                    latest[c.ts] = c
            rows = rows_rolled_up([latest[ts] for ts in sorted(latest)], timeframe_ms(tf))
            if rows:
                await self._write_backfill(series, tf, (rows[0][0], span[1]), rows)

    async def _write_backfill(self, series: Series, tf: str, span: tuple[int, int], rows: list) -> None:
        async with self.held.lock(series.partition):
            if self.held.series.get((series.exchange, series.symbol)) is not series:
                return  # unfollowed, partition lost or reloaded meanwhile: the next round plans again
            out: list[Emitted] = []
            backfill(series.builder, tf, *span, rows, out)
            if series.builder.history_from.get(tf) != span[0]:
                return
            commands: list[Any] = []
            self.held.queue_candles(commands, series, out, history=True)
            commands.append(("HSET", streams.part_candle_history_from(series.partition),
                             streams.registry_member(series.exchange, series.symbol, tf), span[0]))
            self.held.changed(series.partition, [series])
            await self.held.save(series.partition, commands)
        self.backfilled += len(out)
        logger.info("candle_builder: %s %s %s: %d older candles from history (back to %d)", series.exchange,
                    series.symbol, tf, len(out), span[0])
