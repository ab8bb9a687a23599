"""Live mode: every configured exchange through ccxt.pro, each on its own, none stopping the others.

One ccxt.pro instance per exchange id. An exchange that cannot be reached when the feed starts (markets cannot
load: DNS failure, connection refused, timeout, 5xx) is retried with capped, jittered exponential backoff; its state
and the cause are logged and kept in ``connections`` (the heartbeat's ``binance.state``, ``binance.error``, …, which
``/health`` shows), while the other exchanges run. Configuration mistakes stop the feed with one line naming them:
an unknown exchange id (before anything starts) or a symbol the exchange does not list (once its markets load).

Trades: ``ccxt_trades`` (``TradeStream`` / ``MultiTradeStream``); tickers: one ``watch_ticker`` task per symbol
(``params={'name': 'ticker'}`` on Binance so bid/ask are included); a ticker error never touches trades.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.market_feed.adapters.ccxt_exchange import (BINANCE_FAMILY, apply_url_overrides, backoff,
                                                         cancelled_by_ccxt, check_exchange_ids, describe_network_error, load_markets,
                                                         make_exchange, sleep_or_stop, to_ticker, to_trade)
from services.market_feed.adapters.ccxt_trades import LiveContext, MultiTradeStream, TradeStream
from services.market_feed.history import HistoryServer
from services.market_feed.publisher import Outbox, RedisRetry, read_last_ids, register_feeds
from services.market_feed.settings import ExchangeFeed, Settings
from services.market_feed.stream_health import StreamHealth, stream_timeout
from shared import streams
from shared import metrics
from shared.bus import Bus
from shared.errors import ExchangeError, UnknownSymbolError
from shared.ownership import FencedError, Ownership
from shared.partitioned import PartitionWorkers
from shared.partitions import partition_of
from shared.runtime import consumer_name
from shared.schemas import Watermark

__all__ = ["LiveFeed", "apply_url_overrides", "describe_network_error", "make_exchange", "to_trade"]

logger = logging.getLogger(__name__)


@dataclass
class ExchangeConnection:
    """How far one exchange got: ``state`` connecting → up, or retrying (with the last ``error``)."""

    state: str = "connecting"
    error: str = ""
    attempts: int = 0
    retry_at: float | None = None  # monotonic time of the next attempt while retrying

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "attempts": self.attempts, "error": self.error}
        if self.retry_at is not None:
            out["retry_in_s"] = round(max(0.0, self.retry_at - time.monotonic()), 1)
        return out


class LiveFeed:
    """All exchanges and symbols of ``settings.exchanges``; ``await run(stop)``."""

    def __init__(self, settings: Settings, redis: Redis, bus: Bus, retry: RedisRetry | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = bus
        self.retry = retry or RedisRetry("market_feed", base_s=settings.backoff_base_s, cap_s=settings.backoff_cap_s)
        self.exchanges: dict[str, Any] = {}
        self.connections: dict[str, ExchangeConnection] = {f.name: ExchangeConnection() for f in settings.exchanges}
        self._streams: dict[tuple[str, str], TradeStream] = {}  # the latest stream of each pair served
        self.ownerships: dict[str, Ownership] = {}  # exchange name -> this replica's leases in its feed group
        self.health: dict[str, StreamHealth] = {}
        self.history: HistoryServer | None = None

    @property
    def streams(self) -> list[TradeStream]:
        return list(self._streams.values())

    @property
    def trades_published(self) -> int:
        return sum(s.outbox.trades_published for s in self.streams)

    def health_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for exchange_id, conn in self.connections.items():
            for name, value in conn.fields().items():
                out[f"{exchange_id}.{name}"] = value
        for key, h in self.health.items():
            for name, value in h.fields().items():
                out[f"{key}.{name}"] = value
        return out

    def create_exchanges(self) -> None:
        """The ccxt instances (no network yet); UnknownExchangeError naming an unknown id and the close matches."""
        check_exchange_ids(self.settings.exchanges)
        for feed in self.settings.exchanges:
            if feed.name not in self.exchanges:
                self.exchanges[feed.name] = make_exchange(feed, self.settings.ccxt_trades_limit)

    async def connect(self, feed: ExchangeFeed, stop: asyncio.Event) -> bool:
        """Load ``feed``'s markets until they load (retrying while the exchange is unreachable) and register its
        pairs. UnknownSymbolError for a symbol it does not list; False if ``stop`` came first."""
        exchange = self.exchanges[feed.name]
        conn = self.connections[feed.name]
        while not stop.is_set():
            conn.attempts += 1
            try:
                await load_markets(exchange, feed)
                break
            except UnknownSymbolError:
                conn.state, conn.error, conn.retry_at = "failed", "unknown symbol", None
                raise
            except ExchangeError as exc:
                delay = backoff(self.settings, conn.attempts, exc.__cause__)
                conn.state, conn.error, conn.retry_at = "retrying", str(exc), time.monotonic() + delay
                logger.warning("%s; retrying in %.1fs (attempt %d)", exc, delay, conn.attempts)
                await sleep_or_stop(stop, delay)
        else:
            return False
        if not (await self.retry.call(stop, lambda: register_feeds(self.redis, feed.name, feed.symbols,
                                                                         self.settings.durability)))[0]:
            return False
        for symbol in feed.symbols:
            self.health.setdefault(f"{feed.name}|{symbol}|trades", StreamHealth())
            if feed.tickers:
                self.health.setdefault(f"{feed.name}|{symbol}|ticker", StreamHealth())
        conn.state, conn.error, conn.retry_at = "up", "", None
        if conn.attempts > 1:
            logger.warning("%s: markets loaded after %d attempts; streaming %s", feed.name, conn.attempts,
                           ", ".join(feed.symbols))
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Run every exchange until ``stop``; raises a configuration mistake found on the way (UnknownSymbolError)
        after stopping the rest."""
        self.create_exchanges()
        inner = asyncio.Event()  # set on ``stop`` or on a fatal error
        feeds = [asyncio.create_task(self._run_exchange(feed, inner), name=f"exchange-{feed.name}")
                 for feed in self.settings.exchanges]
        tasks = [asyncio.create_task(self._log_health(inner), name="feed-health-log")]
        self.history = HistoryServer(self.bus, self.exchanges,
                                     self.settings.consumer_settings(streams.GROUP_MARKET_FEED, "market_feed", count=10),
                                     [f.name for f in self.settings.exchanges])
        tasks.append(asyncio.create_task(self.history.run(inner), name="feed-history"))
        stopper = asyncio.create_task(stop.wait(), name="feed-stop")
        try:
            waiting: set[asyncio.Task] = {stopper, *feeds}
            while stopper in waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]  # a configuration mistake: stop the feed
        finally:
            inner.set()  # (redis-py can swallow a cancel that lands inside a command: the loops also see this)
            everything = [stopper, *feeds, *tasks]
            for task in everything:
                task.cancel()
            await asyncio.gather(*everything, return_exceptions=True)
            for s in self.streams:
                with contextlib.suppress(Exception):
                    await s.outbox.flush()
            await self.close()

    async def _run_exchange(self, feed: ExchangeFeed, stop: asyncio.Event) -> None:
        """Serve the pairs of ``feed`` whose partitions this replica holds in the exchange's feed group: one worker
        per partition (``_serve_partition``); a partition lost stops its worker, one gained starts it."""
        if not await self.connect(feed, stop):
            return
        s = self.settings
        wanted = {partition_of(feed.name, sym, s.partitions) for sym in feed.symbols}
        ownership = Ownership(self.redis, streams.feed_group(feed.name), consumer_name("market_feed", s.consumer_name),
                              s.partitions, ttl_ms=s.lease_ttl_ms, wanted=wanted, replication=s.durability)
        self.ownerships[feed.name] = ownership
        workers = PartitionWorkers(ownership, lambda p, pstop: self._serve_partition(feed, ownership, p, pstop),
                                   name=f"market_feed {feed.name}", outage=self.bus.outage)
        await workers.run(stop)

    async def _serve_partition(self, feed: ExchangeFeed, ownership: Ownership, partition: int,
                               stop: asyncio.Event) -> None:
        """The trades (and tickers) of the pairs of ``feed`` in ``partition``, resumed from the partition's state."""
        s = self.settings
        exchange = self.exchanges[feed.name]
        symbols = [sym for sym in feed.symbols if partition_of(feed.name, sym, s.partitions) == partition]
        ok, last_ids = await self.retry.call(stop, lambda: read_last_ids(self.redis, feed.name, symbols, s.partitions))
        if not ok:
            return
        ctx = LiveContext(s, self.bus, self.retry, stop)
        mine = {}
        for symbol in symbols:
            mine[symbol] = self._streams[(feed.name, symbol)] = TradeStream(
                exchange, feed.name, symbol, ctx, self.health[f"{feed.name}|{symbol}|trades"], (last_ids or {}).get(symbol),
                feed.backfill_paging, ownership=ownership)
        multi = feed.trades_watch == "multi" or (
            feed.trades_watch == "auto" and len(feed.symbols) > 1 and bool(exchange.has.get("watchTradesForSymbols")))
        if multi:
            jobs = [MultiTradeStream(exchange, feed.name, mine, s).run(stop)]
        else:
            jobs = [st.run(stop) for st in mine.values()]
        if feed.tickers:
            jobs += [self._tickers(stop, feed.name, symbol, ownership) for symbol in symbols]
        tasks = [asyncio.create_task(job, name=f"feed-{feed.name}-p{partition}-{i}") for i, job in enumerate(jobs)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for st in mine.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(st.outbox.flush(), timeout=2)

    def last_ids(self) -> dict[tuple[str, str], int | None]:
        """Last trade id Redis acknowledged per (exchange, symbol): a demo compares it with the simulator's."""
        return {(s.exchange_id, s.symbol): s.published_id for s in self.streams}

    async def publish_final_watermarks(self) -> None:
        """Mark every stream as ended (``Watermark(final=True)`` at its last trade time): for a finite demo source,
        so the candle builder closes the last candles. Call after ``run`` returned (the partitions are taken back
        for it, unless another replica holds them)."""
        for s in self.streams:
            ownership, partition = s.outbox.ownership, s.outbox.partition[s.symbol]
            if not ownership.holds(partition) and not await ownership.acquire(partition):
                continue
            s.outbox.add(Watermark(s.exchange_id, s.symbol, s.last_ts or 0, final=True))
            with contextlib.suppress(FencedError):
                await s.outbox.flush()
        for ownership in self.ownerships.values():
            await ownership.leave()

    async def close(self) -> None:
        for exchange in self.exchanges.values():
            with contextlib.suppress(Exception):
                await exchange.close()

    async def _tickers(self, stop: asyncio.Event, exchange_id: str, symbol: str, ownership: Ownership) -> None:
        exchange = self.exchanges[exchange_id]
        health = self.health[f"{exchange_id}|{symbol}|ticker"]
        outbox = Outbox(self.redis, ownership, exchange_id, [symbol], maxlen=self.settings.stream_maxlen,
                        pipeline_entries=1, writer=f"tickers {symbol}")
        params = {"name": "ticker"} if exchange.id in BINANCE_FAMILY else {}
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(exchange.watch_ticker(symbol, params=dict(params)),
                                             timeout=stream_timeout(self.settings, health))
                health.message()
                outbox.add_ticker(to_ticker(exchange_id, symbol, raw))
                await self.retry.call(stop, outbox.flush)
                attempt = 0
            except asyncio.CancelledError:
                if not cancelled_by_ccxt():
                    raise
            except FencedError:  # the partition was taken over: its worker stops
                raise
            except Exception as exc:  # a ticker error never stops trades or other tickers
                attempt += 1
                health.errors += 1
                if isinstance(exc, TimeoutError):
                    health.timeouts += 1
                    metrics.FEEDS_SILENT.labels(exchange_id, "ticker").inc()
                    health.silent_streak += 1
                logger.warning("%s %s ticker: %s: %s", exchange_id, symbol, type(exc).__name__, exc)
                await sleep_or_stop(stop, backoff(self.settings, attempt, exc))

    async def _log_health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_or_stop(stop, 60.0)
            for key, h in self.health.items():
                logger.info("health %s %s", key, h.fields())
