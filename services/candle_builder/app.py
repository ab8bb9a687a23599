"""candle_builder wiring: a partition's trades stream → ``core.SeriesBuilder`` → candle streams, exactly once.

Work is split by partition (``shared.partitions``): this replica runs one worker per partition it holds by lease
(group ``candle_builder``, ``shared.partitioned.PartitionWorkers``; N replicas with default settings share them,
and a dead replica's partitions move to the others within about ``lease_ttl_ms``). A worker reads
``streams.part_trades(p)`` with XREAD from the offset saved in ``streams.part_state(p, "candle_builder")`` and
commits what reads changed in one ``Ownership.fenced`` script: the closed candles (XADD to the partition's
``part_candles(p)`` and, with the same entry id, to the series' ``series_candles(p, ex, sym, tf)``; PUBLISH), the
series' registry entries, the state of each pair touched since the last commit (in-progress candles) and the new
offset. A read that publishes nothing (most one-trade reads of a live feed) commits nothing: its pairs' state and the
offset wait for the next read that publishes, an idle read, or ``SAVE_EVERY_S`` (a commit per read was most of the
builder's CPU at one trade per read). Every key it
writes carries the partition's hash tag: on a Redis Cluster the script runs in one slot. In-progress candles go to
``part_live(p)`` in the same script (throttled per series). A ``kill -9`` before the script leaves the
state and offset as they were (the next owner reads the same entries again); a replica that lost the lease cannot
write at all. Nothing counts twice, nothing is lost.

Around the worker (``work``, ``_handle``: entries → builders → one commit):
- ``held.HeldPartitions``: the series, offsets and unsaved changes of the partitions held, and the fenced commit;
- ``live.LiveCandles``: in-progress candles, their throttles and commands;
- ``following.Following``: which pairs and timeframes are built (discovery: the feeds' registry, the subscriptions);
- ``loader.SeriesLoader``: a series loaded from its saved state, seeded from history, backfilled further back;
- ``timer.ClosingTimer``: candles closed by the wall clock when no trade or watermark comes to close them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from itertools import chain
from typing import Any

from redis.asyncio import Redis

from services.candle_builder.core import Emitted
from services.candle_builder.following import Following
from services.candle_builder.held import GROUP, SAVE_EVERY_S, HeldPartitions
from services.candle_builder.live import LiveCandles
from services.candle_builder.loader import SeriesLoader
from services.candle_builder.series import Pair, Series, entry_id
from services.candle_builder.settings import Settings
from services.candle_builder.timer import ClosingTimer
from shared import metrics, streams
from shared.bus import FIELD, Bus
from shared.errors import DecodeError
from shared.feed_codec import trade_rows
from shared.feed_runs import decode_feed_runs
from shared.outage import REDIS_DOWN
from shared.ownership import Ownership
from shared.partitioned import PartitionWorkers, raw_reader, read_streams
from shared.runtime import consumer_name, heartbeat, quiet_gc
from shared.schemas import FeedMessage, GapMarker, TradeBatch, Watermark
from shared.stream_entries import entry_data

logger = logging.getLogger(__name__)

SERVICE = "candle_builder"


class CandleBuilderApp:
    """``await CandleBuilderApp(settings, redis).run(stop)`` builds candles until ``stop`` is set."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = Bus(redis, settings.bus_settings(), service=SERVICE)
        self.name = consumer_name(SERVICE, settings.consumer_name)
        self.ownership = Ownership(redis, GROUP, self.name, settings.partitions, ttl_ms=settings.lease_ttl_ms,
                                   replication=settings.durability)
        self.workers = PartitionWorkers(self.ownership, self.work, name=SERVICE, outage=self.bus.outage)
        self.raw = raw_reader(redis)
        self.held = HeldPartitions(settings, self.ownership)
        self.following = Following(settings, redis, self.held, self.bus.outage)
        self.loader = SeriesLoader(settings, redis, self.held, self.following)
        self.live = LiveCandles(settings, self.held)
        self.timer = ClosingTimer(settings, redis, self.held)
        self.trades_in = 0
        self.skipped_entries = 0

    @property
    def series(self) -> dict[Pair, Series]:
        """The series of the partitions held (``HeldPartitions.series``)."""
        return self.held.series

    @property
    def wanted(self) -> dict[Pair, set[str]]:
        """The pairs followed and their timeframes (``Following.wanted``)."""
        return self.following.wanted

    @property
    def backfilled(self) -> int:
        """Older candles written since a look-back grew or a timeframe was added (``SeriesLoader``)."""
        return self.loader.backfilled

    @property
    def timer_closed(self) -> int:
        """Candles the closing timer closed (``ClosingTimer``)."""
        return self.timer.closed

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.discover()
        # start-up's objects out of the cyclic collector's sight: with ~50k of them a full collection cost ~30 ms
        # here, ~14 of them per 300k one-trade entries (bench_candles; ~2 us of the ~9 us CPU per trade with the
        # young ones)
        quiet_gc()
        workers = asyncio.create_task(self.workers.run(stop), name=f"{SERVICE}-partitions")
        helpers = [asyncio.create_task(self._discover_loop(stop), name=f"{SERVICE}-discover"),
                   asyncio.create_task(self.timer.run(stop, self._guarded), name=f"{SERVICE}-timer"),
                   asyncio.create_task(self._sample_loop(stop), name=f"{SERVICE}-metrics"),
                   asyncio.create_task(heartbeat(self.redis, SERVICE, stop, self.status, outage=self.bus.outage),
                                       name=f"{SERVICE}-hb")]
        try:
            await workers
        finally:
            workers.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(workers, *helpers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.raw.aclose()

    def status(self) -> dict[str, Any]:
        late = sum(s.builder.late_dropped for s in self.held.series.values())
        return {"series": len(self.held.series), "trades": self.trades_in, "candles": self.held.candles_out,
                "timer_closed": self.timer.closed, "partitions": ",".join(map(str, self.workers.owned)),
                "late_dropped": late, "skipped_entries": self.skipped_entries}

    async def _discover_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.discover_every_s)
            if stop.is_set():
                return
            await self._guarded("discovery", self.discover)

    async def _sample_loop(self, stop: asyncio.Event, every_s: float = 5.0) -> None:
        """The consumer lag metric, from the offsets of the partitions held (entries after each)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            offsets = {streams.part_trades(p): offset for p, offset in list(self.held.offsets.items())}
            await metrics.sample_offsets(self.redis, GROUP, offsets)

    async def _guarded(self, what: str, step: Any) -> None:
        """Run one round of a helper loop: a Redis outage is told once (``Bus.outage``; discovery, the heartbeat
        and the consumer tell when it is back), a bug is logged and the next round retries; neither kills the
        service."""
        try:
            await step()
        except REDIS_DOWN as exc:
            self.bus.outage.lost(exc, what)
        except Exception:
            logger.exception("candle_builder: %s failed", what)

    async def discover(self) -> None:
        """Read FEED_REGISTRY and the live subscribers' series; follow new pairs, unfollow removed ones, follow
        timeframe changes, backfill what a grown look-back needs."""
        await self.following.refresh()
        await self.loader.backfill_all()

    # ---- one worker per partition held -----------------------------------------------------------------------------

    async def work(self, partition: int, stop: asyncio.Event) -> None:
        """Build the pairs of ``partition`` from its trades stream, from the saved offset, until ``stop`` (the
        partition was lost, or the service stops)."""
        stream = streams.part_trades(partition)
        held = self.held
        held.drop(partition)  # (a restarted worker: builders may have run ahead of what Redis holds)
        try:
            while not stop.is_set():
                offset = held.offsets.get(partition)
                if offset is None:  # first read, or a timer tick's / backfill's failed commit dropped the partition
                    # (``HeldPartitions.drop``): resume from what Redis holds, as a new owner would
                    saved = await self.redis.hget(streams.part_state(partition, GROUP), streams.offset_field(stream))
                    offset = held.offsets[partition] = saved or b"0-0"
                read = await read_streams(self.raw, {stream: offset}, count=self.settings.read_count,
                                          block_ms=self.settings.block_ms)
                if read and not stop.is_set():
                    async with held.lock(partition):
                        await self._handle(partition, stream, read[0][1])
                elif partition in held.unsaved:  # an idle read (or stopping): what waits is saved
                    async with held.lock(partition):
                        await held.save(partition, [])
        finally:
            held.drop(partition)

    async def _handle(self, partition: int, stream: str, entries: list[Any]) -> None:
        """Apply one read of the partition's trades stream; commit it (fenced: candles, pair states, offset) when it
        publishes something or the partition's last commit is ``SAVE_EVERY_S`` old, else leave it unsaved."""
        held, live_candles = self.held, self.live
        # per pair: (id of the first entry, id of the last entry, message): consecutive one-trade entries of a pair
        # come as one batch (``decode_feed_runs``)
        runs: dict[Pair, list[tuple[bytes, bytes, FeedMessage]]] = {}
        pair: Pair = ("", "")  # the pair of the last entry of one pair, and its run
        run: list[tuple[bytes, bytes, FeedMessage]] = []
        # (the bus's one field inline, else ``entry_data``: a call per entry was ~4% of the builder's CPU)
        datas = [f[1] if type(f) is list and len(f) == 2 and f[0] == FIELD else entry_data(f) or b"" for _, f in entries]
        for first, last, msg in decode_feed_runs(datas):
            if isinstance(msg, DecodeError):
                raw_id, fields = entries[first]
                await self.bus.dead_letter(stream, raw_id, entry_data(fields), f"undecodable: {msg}", GROUP)
                continue
            ids = (entries[first][0], entries[last][0], msg)
            if msg.symbol == pair[1] and msg.exchange == pair[0]:  # the pair of the entry before (the common case)
                run.append(ids)
            elif msg.symbol == "" and isinstance(msg, Watermark):  # every pair of the exchange in the partition:
                # the ones built here so far (a final one: all, so a pair taken over just before it closes too)
                part_of = held.partition
                for p in (self.following.wanted if msg.final else held.series):
                    if p[0] == msg.exchange and part_of(*p) == partition:
                        runs.setdefault(p, []).append(ids)
            else:
                pair = (msg.exchange, msg.symbol)
                run = runs.setdefault(pair, [])
                run.append(ids)
        commands: list[Any] = []
        touched: list[Series] = []
        counted: list[Emitted] = []
        live: list[tuple[Series, list[tuple[str, bytes]]]] = []  # in-progress candles to publish, per series
        wall: list[Series] = []  # series throttled in wall time (live_throttle_clock: wall)
        try:
            for pair, run in runs.items():
                series = held.series.get(pair)
                if series is None:
                    series = await self.loader.load(pair, partition)
                if series.needs_seed:
                    await self.loader.seed(series, run)
                emitted: list[Emitted] = []
                if series.seeded:  # history candles, before any live one
                    self.loader.queue_seeded(commands, series)
                series.last_id = entry_id(run[-1][1])
                last = run[-1][2]
                if type(last) is TradeBatch and last.trades:
                    series.live_offset = series.last_id[0] - last.trades[-1][1]
                elif type(last) is Watermark:
                    series.live_offset = series.last_id[0] - last.ts
                snaps: list[tuple[int, str, bytes]] | None = (
                    [] if self.settings.live_candles and live_candles.exchange_throttle(series) else None)
                self._apply_run([m for _, _, m in run], series, emitted, snaps)
                if snaps:  # closed and in-progress candles written in the order they were made (alert_engine's order)
                    live_candles.queue_in_order(commands, series, emitted, snaps)
                    live.append((series, [(tf, data) for _, tf, data in snaps]))
                else:
                    held.queue_candles(commands, series, emitted)
                counted.extend(emitted)
                touched.append(series)
                if snaps is None and self.settings.live_candles:
                    wall.append(series)
            offset = entries[-1][0]
            for series, now in live_candles.wall_snapshots(wall) if wall else []:
                live_candles.queue_entries(commands, series, [data for _, data in now])
                live.append((series, now))
            if live:
                live_candles.announce(commands, partition, live)
            unsaved = held.changed(partition, touched)
            unsaved.offset = offset
            if commands or time.monotonic() - unsaved.since >= SAVE_EVERY_S:
                await held.save(partition, commands)
        except BaseException:  # lease lost, a bug, cancellation: builders ran ahead of what Redis holds
            held.drop(partition)
            raise
        held.offsets[partition] = offset
        metrics.count_candles(counted)

    def _apply_run(self, messages: list[FeedMessage], series: Series, out: list[Emitted],
                   snaps: list[tuple[int, str, bytes]] | None = None) -> None:
        """Apply a stream's messages in order; consecutive trade batches go through the builder in one call.
        ``snaps`` (exchange-time throttle): the in-progress candles as of each throttle point are appended to it,
        each with the number of closed candles in ``out`` made before it."""
        rows: list[Any] = []
        flat: list[Any] | None = None  # the last of ``rows`` when it is a list of the batches' rows (one per entry:
        # the builder iterates one list, not a chain of thousands of one-trade lists)
        n = 0
        live = self.live
        for msg in messages:
            if type(msg) is TradeBatch:
                if snaps is not None:
                    for part, last in live.cut(series, msg.trades):
                        rows.append(trade_rows(part))
                        n += len(part)
                        if last:  # a throttle point: the in-progress candles as of this trade
                            self._apply_trades(series, rows, n, out)
                            rows, n = [], 0
                            snaps += [(len(out), tf, data) for tf, data in live.snapshot(series)]
                    continue
                trades = trade_rows(msg.trades)
                if type(trades) is list:
                    if flat is None:
                        flat = []
                        rows.append(flat)
                    flat += trades
                else:
                    rows.append(trades)
                    flat = None
                n += len(msg.trades)
                continue
            if rows:
                self._apply_trades(series, rows, n, out)
                rows, n, flat = [], 0, None
            self._apply(series, msg, out)
        if rows:
            self._apply_trades(series, rows, n, out)

    def _apply_trades(self, series: Series, rows: list[Any], n: int, out: list[Emitted]) -> None:
        trades = rows[0] if len(rows) == 1 else chain.from_iterable(rows)
        series.builder.add_trades(trades, out)
        self.trades_in += n
        self._note_late(series)

    def _apply(self, series: Series, msg: FeedMessage, out: list[Emitted]) -> None:
        series.builder.apply(msg, out)
        if isinstance(msg, TradeBatch):
            self.trades_in += len(msg.trades)
            self._note_late(series)
        elif isinstance(msg, GapMarker):
            logger.info("candle_builder: %s %s: gap %d..%d (%s): candles there are incomplete", series.exchange,
                        series.symbol, msg.start, msg.end, msg.reason)

    def _note_late(self, series: Series) -> None:
        builder = series.builder
        metrics.count_late(series)
        if builder.late_dropped != series.late_logged:
            now = time.monotonic()
            if now - series.late_logged_at >= 10.0:  # at most one warning per series every 10 s
                logger.warning("candle_builder: %s %s: %d trades later than the %d ms lateness window dropped "
                               "(%d in all)", series.exchange, series.symbol, builder.late_dropped - series.late_logged,
                               builder.lateness_ms, builder.late_dropped)
                series.late_logged, series.late_logged_at = builder.late_dropped, now
