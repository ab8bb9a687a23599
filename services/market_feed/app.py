"""market_feed wiring: a trade source (recording, simulated market, or live exchanges) → FeedCore → Redis streams.

Where a trade enters: ``shared.trade_blocks.read_trade_blocks`` (replay: blocks of columns at full speed, trade by
trade when paced), ``simulated.SimulatedMarket`` (simulated),
``adapters.ccxt_feed`` (live). Where it leaves: ``publisher.Outbox.flush`` (XADD to ``streams.part_trades(p)`` of
the pair's partition, only while this replica holds the partition's lease: two feeds of one source publish once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from itertools import repeat
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from services.market_feed.core import Event, FeedCore, TickEvent, pace_delay
from services.market_feed.publisher import Outbox, RedisRetry, check_symbol_list, read_last_ids, register_feeds
from services.market_feed.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.outage import suppress_unavailable
from shared.ownership import FencedError, Ownership
from shared.partitioned import entry_id, read_offset
from shared.partitions import partition_of
from shared.runtime import consumer_name, heartbeat
from shared.feed_codec import TextColumns
from shared.schemas import Trade, TradeText
from shared.trade_blocks import read_trade_blocks
from shared.simulated import SimulatedMarket, quote

logger = logging.getLogger(__name__)

SERVICE = "market_feed"


class MarketFeedApp:
    """Publishes trades (and tickers) of the configured source until it ends or ``stop`` is set.

    Progress for the CLI: ``trades_published``, ``entries_published``, ``trades_skipped`` (duplicates of what a
    previous run already published), ``exchange_time`` (ms), ``done`` (source ended and the final watermark is out).
    """

    def __init__(self, settings: Settings, redis: Redis, *, bus: Bus | None = None,
                 source: tuple[list[str], Iterator[tuple[str, TradeText | TextColumns]]] | None = None) -> None:
        self.settings = settings
        # mode=replay of trades the caller reads (``sentinel backtest``: many files and symbols of this exchange, in
        # time order) instead of ``replay_file``: (symbols, (symbol, trade or block of one symbol's trades) in exchange
        # order)
        self.source = source
        self.redis = redis
        self.bus = bus or Bus(redis, settings.bus_settings(settings.stream_maxlen), service="market_feed")
        self.exchange = settings.resolved_exchange()
        self.done = False
        self.exchange_time: int | None = None
        self._outbox: Outbox | None = None
        self._core: FeedCore | None = None
        self.ownership: Any = None  # shared.ownership.Ownership of a replay / simulated source
        self.live: Any = None  # the live feed (adapters.ccxt_feed.LiveFeed) in mode=live
        self.books: Any = None  # books.BookTasks when order books or futures data are configured
        self.redis_retry = RedisRetry(SERVICE, base_s=settings.backoff_base_s, cap_s=settings.backoff_cap_s)
        if settings.mode == "live":  # an unknown exchange id is a configuration mistake: say so before starting
            from services.market_feed.adapters.ccxt_exchange import check_exchange_ids

            check_exchange_ids(settings.exchanges)
        if settings.books or settings.derivatives:  # a book's owner is its trades' owner: same symbols needed
            from services.market_feed.books import check_book_symbols

            check_book_symbols(settings, self.trade_symbols())

    def trade_symbols(self) -> dict[str, list[str]]:
        """Exchange name -> the symbols whose trades this replica feeds."""
        s = self.settings
        if s.mode == "live":
            return {f.name: list(f.symbols) for f in s.exchanges}
        if s.mode == "simulated":
            return {self.exchange: list(s.sim_symbols)}
        return {self.exchange: list(self.source[0]) if self.source is not None else [s.resolved_symbol()]}

    def trade_leases(self, name: str) -> Ownership | None:
        """The leases (feed group) under which this replica publishes the trades of exchange ``name``, once made."""
        if self.live is not None:
            return self.live.ownerships.get(name)  # type: ignore[no-any-return]
        return self.ownership if name == self.exchange else None

    # ---- progress ----------------------------------------------------------------------------------------------

    @property
    def trades_published(self) -> int:
        if self.live is not None:
            return self.live.trades_published
        return self._outbox.trades_published if self._outbox else 0

    published_trades = trades_published  # the name the CLI reads

    @property
    def entries_published(self) -> int:
        return self._outbox.entries_published if self._outbox else 0

    @property
    def trades_skipped(self) -> int:
        return self._core.dropped if self._core else 0

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.settings.mode, "trades_published": self.trades_published,
                               "trades_skipped": self.trades_skipped, "done": int(self.done),
                               "exchange_time": self.exchange_time or 0}
        if self.live is not None:
            out.update(self.live.health_fields())
        if self.books is not None:
            out.update(self.books.health_fields())
        return out

    # ---- run ---------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        # (Redis away at start-up, a failover under way: retried as every other write, not a crash)
        if not (await self.redis_retry.call(stop, self._check_symbol_lists))[0]:
            return  # stopped while Redis was away
        # The heartbeat gets its own stop event: it ends when run ends (cancelling it while redis-py is mid-command
        # can be swallowed, leaving it looping).
        beat_stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(self.redis, SERVICE, beat_stop, self.status),
                                   name="market_feed-heartbeat")
        watch = asyncio.create_task(self._forward(stop, beat_stop), name="market_feed-stop-watch")
        books = None
        if self.settings.books or self.settings.derivatives:  # order books and futures data beside the trades
            from services.market_feed.books import BookTasks

            # a pair's books and futures data are published by the replica holding its trades' partition (the
            # trades' leases), or, for an exchange whose trades this replica does not feed, under leases of their own
            self.books = BookTasks(self.settings, self.redis, bus=self.bus, trade_leases=self.trade_leases,
                                   fed=set(self.trade_symbols()))
            books = asyncio.create_task(self.books.run(stop), name="market_feed-books")
        try:
            mode = self.settings.mode
            if mode == "replay" and self.source is not None:
                symbols, trades = self.source
                logger.info("replaying %d symbols of %s", len(symbols), self.exchange)
                # read once (a backtest runs one feed per exchange: the first balance round takes every partition)
                await self._run_source(stop, symbols, lambda: trades, None, None)
            elif mode == "replay":
                symbol = self.settings.resolved_symbol()
                path = self.settings.replay_file
                logger.info("replaying %s as %s %s (speed %s)", path, self.exchange, symbol,
                            self.settings.speed or "max")
                # in blocks of columns (``shared.trade_blocks``); ``_pass`` gives a paced replay trade by trade
                await self._run_source(stop, [symbol], lambda: zip(repeat(symbol), read_trade_blocks(path)), None,
                                       None)
            elif mode == "simulated":
                s = self.settings
                market = SimulatedMarket(s.sim_symbols, seed=s.sim_seed, start_ms=s.sim_start_ms,
                                         duration_s=s.sim_duration_s)
                logger.info("simulated market %s on %s (seed %d, %s s)", ", ".join(s.sim_symbols), self.exchange,
                            s.sim_seed, s.sim_duration_s or "unbounded")
                end = market.end_ms - 1 if market.end_ms is not None else None
                await self._run_source(stop, list(s.sim_symbols), market.trades, market, end)
            else:
                from services.market_feed.adapters.ccxt_feed import LiveFeed

                self.live = LiveFeed(self.settings, self.redis, self.bus, self.redis_retry)
                await self.live.run(stop)
        finally:
            if books is not None:
                books.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await books
            beat_stop.set()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(beat, timeout=5)

    def feed_group(self, exchange: str, symbols: list[str]) -> str:
        """The ownership group of this replica's trades of ``exchange`` (feeds replaying other files of the exchange
        are not replicas of a replay: its group names its first symbol)."""
        group = streams.feed_group(exchange)
        return group + "|" + symbols[0] if self.settings.mode == "replay" else group

    async def _check_symbol_lists(self) -> None:
        """A replica whose symbols differ from its group's live replicas' refuses to start (``check_symbol_list``)."""
        s = self.settings
        instance = consumer_name(SERVICE, s.consumer_name)
        for exchange, symbols in self.trade_symbols().items():
            if symbols:
                await check_symbol_list(self.redis, self.feed_group(exchange, symbols), instance, symbols,
                                        ttl_ms=s.lease_ttl_ms, now_ms=int(time.time() * 1000))

    @staticmethod
    async def _forward(stop: asyncio.Event, beat_stop: asyncio.Event) -> None:
        await stop.wait()
        beat_stop.set()

    async def _run_source(self, stop: asyncio.Event, symbols: list[str],
                          source: Callable[[], Iterator[tuple[str, Trade | TradeText | TextColumns]]],
                          market: SimulatedMarket | None, end_ts: int | None) -> None:
        """Publish ``source()`` for the pairs whose partitions this replica holds (feed group of the exchange; in
        replay, of the replayed pair). A pass starts over (the saved last ids skip what is published) when the
        partitions held change; the source ends when a pass reached its end."""
        s = self.settings
        if not (await self.redis_retry.call(stop, lambda: register_feeds(self.redis, self.exchange, symbols,
                                                                           s.durability)))[0]:
            return
        wanted = {partition_of(self.exchange, sym, s.partitions) for sym in symbols}
        group = self.feed_group(self.exchange, symbols)
        ownership = self.ownership = Ownership(self.redis, group, consumer_name(SERVICE, s.consumer_name),
                                               s.partitions, ttl_ms=s.lease_ttl_ms, wanted=wanted,
                                               replication=s.durability)
        leases_stop, balanced = asyncio.Event(), asyncio.Event()
        leases = asyncio.create_task(self._balance(ownership, leases_stop, balanced), name="market_feed-leases")
        first = True
        try:
            while not stop.is_set() and not balanced.is_set():  # a pass over a partial share would start over
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.05)
            while not stop.is_set() and not self.done:
                held = ownership.owned & wanted
                if not held:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.05)
                    continue
                serving = [sym for sym in symbols if partition_of(self.exchange, sym, s.partitions) in held]
                try:
                    await self._pass(stop, serving, source(), market, end_ts, resume=s.resume or not first)
                except FencedError as exc:
                    logger.warning("market_feed: %s; publishing again for the partitions still held", exc)
                first = False
        finally:
            leases_stop.set()
            await leases

    async def _balance(self, ownership: Ownership, stop: asyncio.Event, balanced: asyncio.Event) -> None:
        """Keep the leases (every third of their TTL) until ``stop``, then hand them back; ``balanced`` is set after
        the first round."""
        try:
            while not stop.is_set():
                with suppress_unavailable():  # Redis away, or a read-only replica during a failover: next round
                    await ownership.balance(int(time.time() * 1000))
                    balanced.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=ownership.ttl_ms / 3000)
        finally:
            with contextlib.suppress(Exception):
                await ownership.leave()

    async def _pass(self, stop: asyncio.Event, symbols: list[str], source: Iterator[tuple[str, Any]],
                    market: SimulatedMarket | None, end_ts: int | None, *, resume: bool) -> None:
        s = self.settings
        if s.speed > 0:  # paced trade by trade
            source = _one_by_one(source)
        redis = self.redis
        retry = self.redis_retry
        ownership = self.ownership
        held = ownership.owned
        last_ids: dict[str, int | None] = {}
        if resume:
            ok, found = await retry.call(stop, lambda: read_last_ids(redis, self.exchange, symbols, s.partitions))
            if not ok:
                return
            last_ids = found or {}
        if any(v is not None for v in last_ids.values()):
            logger.info("resuming after last published ids %s", last_ids)
        core = self._core = FeedCore(self.exchange, symbols, batch_size=s.batch_size, window_ms=s.batch_window_ms,
                                     watermark_every_ms=s.watermark_every_ms,
                                     ticker_every_ms=s.ticker_every_ms if market else None, last_ids=last_ids,
                                     dedup_window=s.dedup_window)
        out = self._outbox = Outbox(redis, ownership, self.exchange, symbols, maxlen=s.stream_maxlen,
                                    pipeline_entries=s.pipeline_entries, writer="source")
        serving = set(symbols)
        last_price: dict[str, Decimal] = {}
        loop = asyncio.get_running_loop()
        first_ts: int | None = None
        wall_start = 0.0
        flushes = 0

        def emit(events: list[Event]) -> None:
            for event in events:
                if isinstance(event, TickEvent):
                    if market is not None and event.symbol in last_price:
                        out.add_ticker(quote(market.spec(event.symbol), self.exchange, event.ts,
                                             last_price[event.symbol]))
                else:
                    out.add(event)

        async def flush() -> bool:
            """Write what is queued; False when stopped while Redis was unavailable (it stays unpublished, and a
            restart resumes after the last id Redis has), or when the partitions held changed (a new pass)."""
            ok = (await retry.call(stop, out.flush))[0]
            return ok and ownership.owned == held

        for symbol, trade in source:
            if stop.is_set():
                break
            if symbol not in serving:
                continue
            if type(trade) is TextColumns:  # a block of a recording's trades (replayed at full speed)
                emit(core.push_block(symbol, trade))
            else:
                # Pacing starts at the first trade not published yet (a resumed replay does not wait out the
                # exchange time of what an earlier run already published).
                if s.speed > 0 and core.is_new(symbol, trade):
                    if first_ts is None:
                        first_ts, wall_start = trade.ts, loop.time()
                    delay = pace_delay(trade.ts, first_ts, wall_start, loop.time(), s.speed)
                    if delay > 0.002:
                        emit(core.flush())
                        if not await flush():
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=delay)
                        if stop.is_set():
                            break
                emit(core.push(symbol, trade))
                if market is not None:  # (a simulated market's trades: Decimal prices for its tickers)
                    last_price[symbol] = trade[2]
            self.exchange_time = core.clock
            if out.full:
                if not await flush():
                    break
                flushes += 1
                if flushes % 20 == 0:
                    await self._wait_for_consumers(stop, out)
                else:
                    await asyncio.sleep(0)  # let the other services on this loop run
        else:
            emit(core.finish(end_ts if end_ts is not None else core.clock))
            if not await flush():
                return
            self.exchange_time = core.clock
            self.done = True
            logger.info("source ended: %d trades in %d entries (%d already published before, skipped)",
                        out.trades_published, out.entries_published, core.dropped)
            return
        if stop.is_set():
            emit(core.flush())
            await retry.call(stop, out.flush)
            logger.info("stopped after %d trades", out.trades_published)

    async def _wait_for_consumers(self, stop: asyncio.Event, out: Outbox) -> None:
        """Replay backpressure: while candle_builder's offset in a partition is more than ``max_lag_entries`` of
        this feed's entries behind, wait.

        Streams are trimmed to ``stream_maxlen``; a replay far faster than its consumer must not trim entries the
        consumer has not read yet.
        """
        limit = self.settings.max_lag_entries
        for partition in list(out.written):
            mark = out.lag_mark(partition, limit)
            while mark is not None and not stop.is_set():
                ok, offset = await self.redis_retry.call(stop, lambda: read_offset(
                    self.redis, partition, streams.GROUP_CANDLE_BUILDER, streams.part_trades(partition)))
                if not ok or (offset is not None and entry_id(offset) >= entry_id(mark)):
                    break
                await asyncio.sleep(0.05)


def _one_by_one(source: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """``source`` with its blocks of trades (``TextColumns``) given trade by trade."""
    for symbol, item in source:
        if type(item) is TextColumns:
            yield from zip(repeat(symbol), item)
        else:
            yield symbol, item
