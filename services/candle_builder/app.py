"""candle_builder wiring: trades streams → ``core.SeriesBuilder`` → candle streams, exactly once across restarts.

For each batch read from the trades streams (one consumer group, large COUNT), one MULTI/EXEC holds everything the
batch changed: the closed candles (XADD + PUBLISH), each series' state (in-progress candles and the last stream entry
id processed) and the XACK. A ``kill -9`` before EXEC leaves the entries pending and the state as it was; after EXEC
they are acked. A re-delivered entry whose id is not above the saved one is skipped, so nothing counts twice; the
first batch a process sees of a stream is preceded by an XRANGE of whatever lies between the saved id and it (entries
still pending at a dead consumer), so nothing is lost or reordered either.

Series: every (exchange, symbol) in ``streams.FEED_REGISTRY`` gets ``settings.timeframes``; the series live
subscribers ask for (``shared.subscriptions``: owned by each subscriber instance, gone when it dies) add timeframes. A pair removed from
FEED_REGISTRY is unfollowed (its stream no longer read, its state left in Redis so a re-add resumes exactly, its
members dropped from CANDLE_REGISTRY); a subscribed timeframe whose count fell to 0 and that settings do not list stops.

History: a new series is seeded with max(``history_bars``, the look-back its subscribers ask for) candles
per timeframe (``history_bars`` unset = 500 when the feed is live, none for replays); a look-back that grows later, or
a timeframe added to a running series, is backfilled further back (older candles appended, the live seam untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from itertools import chain
from typing import Any

from redis.asyncio import Redis

from services.candle_builder import history
from services.candle_builder.bars import rows_rolled_up
from services.candle_builder.core import Emitted, SeriesBuilder
from services.candle_builder.leases import Leases
from services.candle_builder.series import Series, encode_candle, entry_id, retune, say_start, text
from services.candle_builder.settings import MAX_HISTORY_BARS, Settings
from shared import metrics, streams
from shared.bus import FIELD, Batch, Bus, Consumer, Entry
from shared.errors import ConfigError, DecodeError
from shared.outage import REDIS_DOWN
from shared.runtime import heartbeat
from shared.schemas import Candle, FeedMessage, GapMarker, TradeBatch, Watermark, decode_feed, pack, trade_rows, unpack
from shared.subscriptions import Subscriptions
from shared.timeframes import timeframe_ms

logger = logging.getLogger(__name__)

SERVICE = "candle_builder"


class CandleBuilderApp:
    """``await CandleBuilderApp(settings, redis).run(stop)`` builds candles until ``stop`` is set."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = Bus(redis, settings.bus_settings(), service=SERVICE)
        # A stable name (settings.consumer_name, else candle_builder-<hostname>): a restarted builder re-reads its own
        # pending entries first; with leases, each instance's name is also its lease owner.
        self.consumer: Consumer[FeedMessage] = Consumer(
            self.bus, settings.consumer_settings(streams.GROUP_CANDLE_BUILDER, SERVICE, count=settings.read_count,
                                                 block_ms=settings.block_ms),
            decode=decode_feed, handler=self.handle)
        self.name = self.consumer.name
        self.leases = Leases(redis, self.name, settings.lease_ttl_ms) if settings.leases else None
        self.subscriptions = Subscriptions(redis)
        self.seeder = history.Seeder(settings, redis)
        self.series: dict[str, Series] = {}  # trades stream -> series (loaded lazily, with its saved state)
        self.pairs: dict[str, tuple[str, str]] = {}  # trades stream -> (exchange, symbol)
        self.wanted: dict[tuple[str, str], set[str]] = {}  # (exchange, symbol) -> timeframes
        self.lookback: dict[tuple[str, str], dict[str, int]] = {}  # (exchange, symbol) -> timeframe -> candles
        self.backfilled = 0  # older history candles written after a look-back grew / a timeframe was added
        self._rolled_up: set[tuple[str, str]] = set()  # (stream, timeframe) rolled up from base candles (_roll_up_added)
        self._lock = asyncio.Lock()  # one batch or timer tick changes builders and writes their state at a time
        self.trades_in = 0
        self.timer_closed = 0
        self.candles_out = 0
        self.skipped_entries = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.discover()
        consumer = asyncio.create_task(self.consumer.run(stop), name=f"{SERVICE}-consume")
        helpers = [asyncio.create_task(self._discover_loop(stop), name=f"{SERVICE}-discover"),
                   asyncio.create_task(self._timer_loop(stop), name=f"{SERVICE}-timer"),
                   asyncio.create_task(self._balance_loop(stop), name=f"{SERVICE}-leases"),
                   asyncio.create_task(heartbeat(self.redis, SERVICE, stop, self.status, outage=self.bus.outage),
                                       name=f"{SERVICE}-hb")]
        try:
            await consumer
        finally:
            consumer.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(consumer, *helpers, return_exceptions=True)
            if self.leases is not None:
                with contextlib.suppress(Exception):
                    async with self._lock:
                        await self.leases.leave()

    def status(self) -> dict[str, Any]:
        late = sum(s.builder.late_dropped for s in self.series.values())
        return {"series": len(self.series), "trades": self.trades_in, "candles": self.candles_out,
                "timer_closed": self.timer_closed,
                "late_dropped": late, "skipped_entries": self.skipped_entries}

    async def _discover_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.discover_every_s)
            if stop.is_set():
                return
            await self._guarded("discovery", self.discover)

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
        """Read FEED_REGISTRY and the live subscribers' series; follow new trades streams, unfollow removed ones,
        follow timeframe changes, backfill what a grown look-back needs."""
        feeds = await self.redis.smembers(streams.FEED_REGISTRY)
        self.bus.outage.ok()  # (only commands that reached Redis say it is back: a timer tick may send none)
        subscribed = await self.subscriptions.read_all()
        wanted: dict[tuple[str, str], set[str]] = {}
        for member in feeds:
            parts = streams.split_registry_member(member)
            if len(parts) == 2:
                wanted.setdefault((parts[0], parts[1]), set()).update(self.settings.timeframes)
        lookback: dict[tuple[str, str], dict[str, int]] = {}
        for (ex, sym, tf), bars in subscribed.items():
            try:
                timeframe_ms(tf)
            except ConfigError:
                logger.warning("candle_builder: ignoring a subscription to %s %s with timeframe %r", ex, sym, tf)
                continue
            if (ex, sym) in wanted:  # a subscription adds a timeframe to a pair the feed publishes, not a pair
                wanted[(ex, sym)].add(tf)
            if bars > 0:
                lookback.setdefault((ex, sym), {})[tf] = min(bars, MAX_HISTORY_BARS)
        self.lookback = lookback
        gone, dropped = self.apply_wanted(wanted)
        if gone or dropped:
            await self._unfollow(gone, dropped)
        await self._backfill_all()

    def apply_wanted(self, wanted: dict[tuple[str, str], set[str]]
                     ) -> tuple[list[str], dict[tuple[str, str], set[str]]]:
        """Follow new pairs and timeframe changes; return the streams no longer wanted and, per pair still followed,
        the timeframes it no longer builds (both for ``_unfollow``)."""
        new_streams = []
        dropped: dict[tuple[str, str], set[str]] = {}
        for (exchange, symbol), tfs in wanted.items():
            stream = streams.trades(exchange, symbol)
            if stream not in self.pairs:
                self.pairs[stream] = (exchange, symbol)
                new_streams.append(stream)
            before = self.wanted.get((exchange, symbol))
            if before != tfs:
                self.wanted[(exchange, symbol)] = set(tfs)
                if before:
                    dropped[(exchange, symbol)] = before - tfs
                series = self.series.get(stream)
                if series is not None:
                    retune(series.builder, tfs)
                    say_start(series, tfs - (before or set()), series.history_bars if series.history_bars is not None
                              else self.settings.history_bars)
        if new_streams and self.leases is None:
            logger.info("candle_builder: following %s", ", ".join(new_streams))
            self.consumer.add_streams(new_streams)
        gone = [stream for stream, pair in self.pairs.items() if pair not in wanted]
        return gone, {pair: tfs for pair, tfs in dropped.items() if tfs}

    async def _unfollow(self, gone: list[str], dropped: dict[tuple[str, str], set[str]]) -> None:
        """Stop reading pairs no longer wanted and drop what is no longer built from CANDLE_REGISTRY.

        Nothing is lost: each series' state (in-progress candles, last entry id processed) is saved in Redis with
        every batch and timer tick, so a re-added pair resumes exactly where it stopped; entries read but not yet
        processed stay pending in the group (``_handle`` leaves streams no longer followed alone) and are re-read
        first when the pair comes back.
        """
        async with self._lock:  # no batch or timer tick in flight for these series
            members: list[str] = []
            for stream in gone:
                pair = self.pairs.pop(stream)
                self.wanted.pop(pair, None)
                self.series.pop(stream, None)
                if self.leases is not None and pair in self.leases.owned:
                    await self.leases.release(pair)
                members.extend(m for m in map(text, await self.redis.smembers(streams.CANDLE_REGISTRY))
                               if streams.split_registry_member(m)[:2] == list(pair))
                logger.info("candle_builder: no longer following %s (state kept in Redis)", stream)
            for pair, tfs in dropped.items():
                series = self.series.get(streams.trades(*pair))
                for tf in tfs:
                    if series is not None:
                        series.registered.discard(tf)
                    members.append(streams.registry_member(*pair, tf))
                logger.info("candle_builder: %s %s no longer builds %s", *pair, ", ".join(sorted(tfs)))
            if gone:
                self.consumer.set_streams([s for s in self.consumer.streams if s not in set(gone)])
            if members:
                await self.redis.srem(streams.CANDLE_REGISTRY, *members)

    # ---- leases (several instances) --------------------------------------------------------------------------------

    async def _balance_loop(self, stop: asyncio.Event) -> None:
        if self.leases is None:
            return
        every = self.settings.lease_ttl_ms / 3000
        while not stop.is_set():  # (leases expire on their own if this keeps failing; others take over)
            await self._guarded("lease balancing", lambda: self.balance(int(time.time() * 1000)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def balance(self, now_ms: int) -> None:
        """Renew leases, hand back pairs over this instance's fair share, take free ones up to it."""
        leases = self.leases
        pairs = set(self.pairs.values())
        async with self._lock:  # our own PEXPIRE must not trip the WATCH of a batch in flight
            for pair in await leases.renew():
                logger.warning("candle_builder: lost the lease of %s %s", *pair)
                self._forget(pair)
            share = await leases.share(len(pairs), now_ms)
            excess, candidates = leases.plan(pairs, share)
            for pair in excess:
                await leases.release(pair)
                self._forget(pair)
                logger.info("candle_builder: handed %s %s back (share %d)", *pair, share)
            for pair in candidates:
                if len(leases.owned) >= share:
                    break
                if await leases.acquire(pair):
                    logger.info("candle_builder: took %s %s", *pair)
            owned = [streams.trades(*pair) for pair in sorted(leases.owned)]
            if set(owned) != set(self.consumer.streams):
                self.consumer.set_streams(owned)

    def _forget(self, pair: tuple[str, str]) -> None:
        """Drop a pair's in-memory series: whoever owns it next resumes from what Redis holds."""
        self.series.pop(streams.trades(*pair), None)

    def _owns(self, stream: str) -> bool:
        """Followed (not removed since the entries were read) and, with leases, leased by this instance."""
        return stream in self.pairs and (self.leases is None or self.pairs[stream] in self.leases.owned)

    async def _fence(self, tx: Any, stream_names: list[str]) -> set[str]:
        """WATCH the leases of ``stream_names`` and return the ones still ours; then start MULTI."""
        if self.leases is None:
            return set(stream_names)
        keys = [streams.builder_lease(*self.pairs[s]) for s in stream_names]
        if keys:
            await tx.watch(*keys)
            values = await tx.mget(keys)
        else:
            values = []
        mine = self.name.encode()
        ours = {s for s, v in zip(stream_names, values) if v == mine}
        for s in set(stream_names) - ours:
            logger.warning("candle_builder: %s is no longer ours; leaving its entries to the new owner", s)
            self.leases.owned.discard(self.pairs[s])
            self._forget(self.pairs[s])
        tx.multi()
        return ours

    # ---- the batch handler -----------------------------------------------------------------------------------------

    async def handle(self, batch: Batch[FeedMessage]) -> None:
        async with self._lock:
            await self._handle(batch)

    async def _handle(self, batch: Batch[FeedMessage]) -> None:
        by_stream: dict[str, list[Entry[FeedMessage]]] = {}
        for entry in batch.entries:
            by_stream.setdefault(entry.stream, []).append(entry)
        batch.acked = True  # acked below, in the transaction, and only for streams this instance owns
        async with self.bus.pipeline(transaction=True) as tx:
            ours = await self._fence(tx, [s for s in by_stream if self._owns(s)])
            try:
                await self._process(tx, batch.group, {s: e for s, e in by_stream.items() if s in ours})
            except BaseException:  # lease lost (WatchError), a bug, cancellation: whatever was not saved is undone
                for s in ours:  # builders may have run ahead of what Redis holds: reload them from it
                    self.series.pop(s, None)
                raise

    async def _process(self, tx: Any, group: str, by_stream: dict[str, list[Entry[FeedMessage]]]) -> None:
        out: dict[str, list[Emitted]] = {}
        touched: dict[str, Series] = {}
        extra_acks: dict[str, list[bytes]] = {}
        for stream, entries in by_stream.items():
            series = self.series.get(stream) or await self._load(stream)
            if series.needs_seed:
                await self.seeder.seed(series, self._asked(series))
            emitted = out.setdefault(stream, [])
            if series.seeded:  # history candles, before any live one
                self._queue_candles(tx, series, series.seeded, history=True)
                series.seeded = []
                for tf, since in series.builder.history_from.items():
                    tx.hset(streams.CANDLE_HISTORY_FROM, streams.registry_member(series.exchange, series.symbol, tf),
                            since)
            if not series.checked:
                await self._catch_up(series, entries[0].id, emitted, extra_acks)
            start = 0
            if series.last_id is not None:  # re-delivered entries (ids never above the saved one) are skipped
                while start < len(entries) and entry_id(entries[start].id) <= series.last_id:
                    start += 1
                self.skipped_entries += start
            if start == len(entries):
                continue
            self._apply_run([e.value for e in entries[start:]], series, emitted)
            series.last_id = entry_id(entries[-1].id)
            last = entries[-1].value
            if type(last) is TradeBatch and last.trades:
                series.live_offset = series.last_id[0] - last.trades[-1][1]
            elif type(last) is Watermark:
                series.live_offset = series.last_id[0] - last.ts
            touched[stream] = series
        touched.update({s: self.series[s] for s in extra_acks})
        for stream, emitted in out.items():
            self._queue_candles(tx, self.series[stream], emitted)
        for series in touched.values():
            self._queue_state(tx, series)
        for stream, entries in by_stream.items():
            tx.xack(stream, group, *extra_acks.get(stream, ()), *(e.id for e in entries))
        await tx.execute()
        metrics.count_candles(e for emitted in out.values() for e in emitted)
        if self.settings.live_candles and touched:
            await self._publish_live(touched.values())

    # ---- closing on time -------------------------------------------------------------------------------------------

    async def _timer_loop(self, stop: asyncio.Event) -> None:
        if not self.settings.close_on_timer:
            return
        every = self.settings.timer_every_ms / 1000
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            if stop.is_set():
                return
            # (the next tick retries; trades and watermarks still close candles meanwhile)
            await self._guarded("closing timer", lambda: self.tick(int(time.time() * 1000)))

    async def tick(self, now_ms: int) -> int:
        """Close what live series have due by the wall clock (``now_ms``), if their streams hold nothing unread.

        Estimated exchange time = now − the series' feed latency − grace. Replays (latency of years) never qualify,
        and a series whose stream holds entries not yet processed waits for them: the timer never closes early what
        the stream already holds. Returns how many candles it closed.
        """
        s = self.settings
        due: list[tuple[Series, int]] = []
        for series in self.series.values():
            offset = series.live_offset
            if offset is None or abs(offset) > s.live_max_skew_ms:
                continue
            estimate = now_ms - offset - s.close_grace_ms
            next_close = series.builder.next_close_at()
            if next_close is not None and next_close <= estimate:
                due.append((series, estimate))
        if not due:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for series, _ in due:
                pipe.xrevrange(series.stream, count=1)
            newest = await pipe.execute()
        closed = 0
        async with self._lock:
            async with self.bus.pipeline(transaction=True) as tx:
                ours = await self._fence(tx, [series.stream for series, _ in due])
                try:
                    closed = self._close_due(tx, due, newest, ours)
                    await tx.execute()
                except BaseException:
                    for series, _ in due:
                        self.series.pop(series.stream, None)
                    raise
        self.timer_closed += closed
        return closed

    def _close_due(self, tx: Any, due: list[tuple[Series, int]], newest: list, ours: set[str]) -> int:
        closed = 0
        for (series, estimate), last in zip(due, newest):
            if series.stream not in ours or self.series.get(series.stream) is not series:
                continue
            if last and series.last_id is not None and entry_id(last[0][0]) > series.last_id:
                continue  # entries wait in the stream: they, not the clock, decide
            out: list[Emitted] = []
            series.builder.advance(estimate, out)
            if out:
                closed += len(out)
                self._queue_candles(tx, series, out)
                metrics.count_candles(out)
            self._queue_state(tx, series)
        return closed

    def _queue_state(self, tx: Any, series: Series) -> None:
        if series.last_id is not None:  # HSET queued directly (redis-py's hset() wrapper costs more than packing it)
            tx.execute_command("HSET", streams.builder_state(series.exchange, series.symbol),
                               b"state", pack(series.builder.dump()), b"last_id", b"%d-%d" % series.last_id)

    def _apply_run(self, messages: list[FeedMessage], series: Series, out: list[Emitted]) -> None:
        """Apply a stream's messages in order; consecutive trade batches go through the builder in one call."""
        rows: list[Any] = []
        n = 0
        for msg in messages:
            if type(msg) is TradeBatch:
                rows.append(trade_rows(msg.trades))
                n += len(msg.trades)
                continue
            if rows:
                self._apply_trades(series, rows, n, out)
                rows, n = [], 0
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

    def _queue_candles(self, tx: Any, series: Series, emitted: list[Emitted], history: bool = False) -> None:
        ex, sym = series.exchange, series.symbol
        maxlen = self.settings.candles_maxlen
        for tf, bar in emitted:
            data = encode_candle(ex, sym, tf, bar, history=history)
            self.bus.add_to(tx, streams.candles(ex, sym, tf), data, maxlen=maxlen,
                            channel=streams.channel_candles(ex, sym, tf))
            if tf not in series.registered:
                series.registered.add(tf)
                tx.sadd(streams.CANDLE_REGISTRY, streams.registry_member(ex, sym, tf))
        self.candles_out += len(emitted)

    async def _publish_live(self, touched: Any) -> None:
        now = time.monotonic()
        throttle = self.settings.live_throttle_ms / 1000
        due = [s for s in touched if now - s.last_live >= throttle]
        if not due:
            return
        maxlen = self.settings.live_maxlen
        async with self.bus.pipeline() as pipe:
            for series in due:
                series.last_live = now
                ex, sym = series.exchange, series.symbol
                builder = series.builder
                for tf, bar in builder.in_progress():
                    data = encode_candle(ex, sym, tf, bar, closed=False, prev_ts=builder.last_closed(tf))
                    self.bus.add_to(pipe, streams.candles_live(ex, sym, tf), data, maxlen=maxlen,
                                    channel=streams.channel_candles_live(ex, sym, tf))
            await pipe.execute()

    # ---- state -----------------------------------------------------------------------------------------------------

    def _new_builder(self, exchange: str, symbol: str) -> SeriesBuilder:
        s = self.settings
        tfs = self.wanted.get((exchange, symbol)) or set(s.timeframes)
        return SeriesBuilder(tfs, base=s.base_timeframe, flat_candles=s.flat_candles, lateness_ms=s.lateness_ms,
                             max_flat=s.max_flat_candles)

    async def _load(self, stream: str) -> Series:
        """Create the series of a trades stream and restore its saved state."""
        exchange, symbol = self.pairs[stream]
        builder = self._new_builder(exchange, symbol)
        saved_state, saved_id = await self.redis.hmget(streams.builder_state(exchange, symbol), b"state", b"last_id")
        series = Series(exchange, symbol, stream, builder)
        if saved_state is not None:
            series.last_id = entry_id(saved_id)
            try:
                builder.restore(unpack(saved_state))
                logger.info("candle_builder: %s %s resumes after entry %s", exchange, symbol, saved_id.decode())
            except (ValueError, KeyError, TypeError, DecodeError) as exc:
                # e.g. base_timeframe changed between runs: the saved candles cannot continue. Resume from the
                # saved stream position with empty candles rather than stall the stream.
                logger.error("candle_builder: %s %s: saved state unusable (%s); resuming after entry %s with new "
                             "candles (the first ones are partial)", exchange, symbol, exc, saved_id.decode())
                series.builder = self._new_builder(exchange, symbol)
        elif self.settings.history_bars != 0:  # unset (auto) or a count: decided at the first trade (_seed)
            series.needs_seed = True
        series.late_counted = (series.builder.late_revised, series.builder.late_dropped)
        self.series[stream] = series
        return series

    def _asked(self, series: Series) -> dict[str, int]:
        """The look-back subscribers ask for, per timeframe of ``series``."""
        return self.lookback.get((series.exchange, series.symbol), {})

    async def _backfill_all(self) -> None:
        """Fetch older history where a look-back grew or a timeframe was added (see ``SeriesBuilder.backfill_range``);
        one series and timeframe at a time, the fetch outside the lock so live candles keep flowing meanwhile."""
        now = time.monotonic()
        for stream, series in list(self.series.items()):
            if series.needs_seed or series.last_id is None or not self._owns(stream):
                continue
            if series.history_bars is None:
                await self.seeder.decide(series, series.live_offset)
            if series.history_bars == 0:  # no exchange history: a timeframe added mid-run from our own base candles
                await self._roll_up_added(series)
                continue
            for tf, bars in self.seeder.bars(series, self._asked(series)).items():
                span = series.builder.backfill_range(tf, bars)
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
        trade it kept), once the bucket under way when it was added has ended (``SeriesBuilder.backfill_range``)."""
        builder = series.builder
        if not builder.emit_base:
            return  # (say_start said from when it is built)
        for tf in list(builder.derived):
            span = builder.backfill_range(tf, MAX_HISTORY_BARS)
            if span is None or (series.stream, tf) in self._rolled_up:
                continue
            self._rolled_up.add((series.stream, tf))  # once per process: a restart plans from the saved state
            latest: dict[int, Candle] = {}
            stream = streams.candles(series.exchange, series.symbol, builder.base_tf)
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
        async with self._lock:
            if self.series.get(series.stream) is not series:
                return  # unfollowed, lease lost or reloaded meanwhile: the next round plans again
            out: list[Emitted] = []
            series.builder.backfill(tf, *span, rows, out)
            if series.builder.history_from.get(tf) != span[0]:
                return
            async with self.bus.pipeline(transaction=True) as tx:
                if series.stream not in await self._fence(tx, [series.stream]):
                    return
                try:
                    self._queue_candles(tx, series, out, history=True)
                    self._queue_state(tx, series)
                    tx.hset(streams.CANDLE_HISTORY_FROM, streams.registry_member(series.exchange, series.symbol, tf),
                            span[0])
                    await tx.execute()
                except BaseException:
                    self.series.pop(series.stream, None)
                    raise
        self.backfilled += len(out)
        logger.info("candle_builder: %s %s %s: %d older candles from history (back to %d)", series.exchange,
                    series.symbol, tf, len(out), span[0])

    async def _catch_up(self, series: Series, first_id: bytes, out: list[Emitted],
                        extra_acks: dict[str, list[bytes]]) -> None:
        """Process, first, entries between the saved id and ``first_id`` still pending in the group.

        They were delivered to a consumer that died (or to this one before a failure) and never acked; reading the
        newer entry first would otherwise make them look re-delivered. Entries in that range that are no longer
        pending were dead-lettered: they stay out.
        """
        series.checked = True
        low = "-" if series.last_id is None else "(%d-%d" % series.last_id
        high = "(" + (first_id.decode() if isinstance(first_id, bytes) else first_id)
        group = streams.GROUP_CANDLE_BUILDER
        while True:
            pending = await self.redis.xpending_range(series.stream, group, min=low, max=high,
                                                      count=self.settings.read_count)
            if not pending:
                return
            wanted = {p["message_id"] for p in pending}
            entries = await self.redis.xrange(series.stream, min=low, max=text(pending[-1]["message_id"]))
            logger.info("candle_builder: %s: %d entries before %s were left pending; processing them first",
                        series.stream, len(wanted), high[1:])
            ids = extra_acks.setdefault(series.stream, [])
            for raw_id, fields in entries:
                if raw_id not in wanted:
                    continue  # acked by now (dead-lettered): not ours to count
                ids.append(raw_id)
                try:
                    msg = decode_feed((fields or {}).get(FIELD) or b"")
                except DecodeError as exc:
                    await self.bus.dead_letter(series.stream, raw_id, (fields or {}).get(FIELD),
                                               f"undecodable: {exc}", group)
                    continue
                self._apply(series, msg, out)
                series.last_id = entry_id(raw_id)
            missing = wanted - {raw_id for raw_id, _ in entries}
            ids.extend(missing)  # pending but trimmed from the stream: nothing left to count
            low = "(" + text(pending[-1]["message_id"])

