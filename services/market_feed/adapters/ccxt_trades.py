"""Live trades of one (exchange, symbol) through ccxt.pro that lose nothing and repeat nothing.

Per (exchange, symbol) one ``TradeStream`` (read by its own task, or routed to by ``MultiTradeStream`` when one
``watch_trades_for_symbols`` subscription carries several symbols):

1. ``watch_trades`` with a per-symbol progress timeout (``stream_timeout``): before the first frame
   ``silence_timeout_s``; after it, a few expected intervals of this symbol (``stall_intervals`` × its mean gap
   between frames, at least ``stall_min_s``), so a busy pair whose socket stopped delivering — ccxt's reader died
   on a malformed frame ("Exception in callback"), or a frame it silently dropped — is reconnected within seconds,
   while a quiet pair gets a proportionally longer one; a timeout closes that symbol's websocket and reconnects;
2. NetworkError / RequestTimeout / ExchangeNotAvailable → capped, jittered exponential backoff and reconnect;
   RateLimitExceeded / DDoSProtection → the same with a 4× longer base;
3. after any reconnect, at start-up (from the last id already in Redis) and whenever consecutive ids jump, the missed
   trades are fetched by REST *before* the first live batch is published: up to the first trade of the new connection
   (trades released between the backfill and the resubscription are the ones naive feeds lose). Exchanges with
   consecutive integer ids (Binance family) page by ``fromId``; the others by ``since``. What cannot be recovered is
   published as a ``GapMarker``;
4. every trade passes ``core.IdDedup`` (last id per symbol, restored from Redis), so reconnects, backfills and restarts
   never publish an id twice;
5. a trade counts as published once Redis acknowledged it (``publisher.Outbox``); while Redis is unavailable the
   stream waits (``RedisRetry``) with its batch kept, and ccxt's cache (or, past it, the backfill) holds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import ccxt

from services.market_feed.adapters.ccxt_exchange import (BINANCE_FAMILY, CONSECUTIVE_IDS, TRANSIENT, backoff,
                                                         cancelled_by_ccxt, sleep_or_stop, to_trade)
from services.market_feed.core import FeedCore
from services.market_feed.publisher import Outbox, RedisRetry, read_last_ts
from services.market_feed.settings import Settings
from services.market_feed.stream_health import StreamHealth, stream_timeout
from shared import metrics
from shared.bus import Bus
from shared.ownership import FencedError, Ownership
from shared.schemas import GapMarker, Trade

logger = logging.getLogger(__name__)

PAGE_LIMIT = 1000


@dataclass
class LiveContext:
    """What every stream of a live feed shares: settings, the bus, the Redis retry policy and the stop event."""

    settings: Settings
    bus: Bus
    retry: RedisRetry
    stop: asyncio.Event


class TradeStream:
    """The trades of one (exchange, symbol): watch, reconnect, backfill, dedup, publish. ``exchange_id`` is the
    exchange name the trades are published under (``ExchangeFeed.name``); ccxt's own id is ``exchange.id``."""

    def __init__(self, exchange: Any, exchange_id: str, symbol: str, ctx: LiveContext, health: StreamHealth,
                 last_id: int | None, paging: str = "auto", *, ownership: Ownership) -> None:
        settings = ctx.settings
        self.exchange = exchange
        self.exchange_id = exchange_id
        self.symbol = symbol
        self.settings = settings
        self.ctx = ctx
        self.health = health
        self.binance = exchange.id in BINANCE_FAMILY
        self.consecutive = exchange.id in CONSECUTIVE_IDS  # a jump in ids means missed trades
        self.page_by_id = paging == "id" or (paging == "auto" and self.binance)
        self.params = {"name": "aggTrade"} if self.binance else {}
        self.core = FeedCore(exchange_id, [symbol], batch_size=settings.batch_size, window_ms=10**12,
                             watermark_every_ms=settings.watermark_every_ms, last_ids={symbol: last_id},
                             dedup_window=settings.dedup_window)
        self.outbox = Outbox(ctx.bus.redis, ownership, exchange_id, [symbol], maxlen=settings.stream_maxlen,
                             pipeline_entries=10**9, writer=f"trades {symbol}")
        self.redis = ctx.bus.redis
        self.last_ts: int | None = None
        self.need_backfill = last_id is not None
        self._start_id = last_id
        self._client: Any = None

    @property
    def last_id(self) -> int | None:
        """Last trade id taken for publishing (the published ones and those queued behind an unacknowledged write,
        which go out before anything else): where a backfill continues."""
        return self.core.symbols[self.symbol].dedup.last_id

    @property
    def published_id(self) -> int | None:
        """Last trade id Redis has acknowledged."""
        last = self.outbox.published.get(self.symbol, (None, None))[0]
        return last if isinstance(last, int) else self._start_id

    async def prepare(self) -> None:
        """Restore the last published time (the last id is already in the dedup) for the start-up backfill."""
        if self.need_backfill and self.last_ts is None:
            _, self.last_ts = await self.ctx.retry.call(
                self.ctx.stop, lambda: read_last_ts(self.redis, self.exchange_id, self.symbol, self.settings.partitions))

    async def flush(self) -> None:
        """Write what the outbox holds; while Redis is unavailable wait (backoff) with it kept, until stopped."""
        await self.ctx.retry.call(self.ctx.stop, self.outbox.flush)

    async def on_frame(self, raw: list[dict[str, Any]]) -> None:
        """Trades ccxt returned for this symbol: note a silent reconnect by ccxt, then backfill/dedup/publish."""
        self.health.message()
        client = _client_of(self)
        if client is not self._client:
            if self._client is not None:  # ccxt reconnected by itself after a server close
                self.health.reconnects += 1
                metrics.RECONNECTS.labels(self.exchange_id).inc()
                self.need_backfill = True
            self._client = client
        await self.ingest([to_trade(t) for t in raw])

    async def on_silence(self) -> None:
        """Silent past its timeout: count it, close its socket, and fetch by REST what the silence hid."""
        self.health.timeouts += 1
        metrics.FEEDS_SILENT.labels(self.exchange_id, "trades").inc()
        gap = self.health.mean_gap_s
        usual = f" (a frame every {gap:.3g}s before)" if gap is not None else ""
        logger.warning("%s %s: no trades for %.1fs%s; reconnecting", self.exchange_id, self.symbol,
                       stream_timeout(self.settings, self.health), usual)
        self.health.silent_streak += 1
        await self._reconnect()
        self.need_backfill = True
        with contextlib.suppress(*TRANSIENT):
            await self.backfill(None)  # a quiet or ended market

    def on_network_error(self) -> None:
        self.health.reconnects += 1
        metrics.RECONNECTS.labels(self.exchange_id).inc()
        self._client = None  # counted here; the new connection is not counted again
        self.need_backfill = True

    async def run(self, stop: asyncio.Event) -> None:
        await self.prepare()
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(self.exchange.watch_trades(self.symbol, params=dict(self.params)),
                                             timeout=stream_timeout(self.settings, self.health))
                await self.on_frame(raw)
                attempt = 0
            except asyncio.CancelledError:
                if not cancelled_by_ccxt():
                    raise
                self.on_network_error()  # ccxt closed the socket under the watch (for another stream on it)
            except TimeoutError:
                await self.on_silence()
            except (ccxt.BadSymbol, FencedError):  # (a partition taken over: its worker stops)
                raise
            except TRANSIENT as exc:
                attempt += 1
                self.on_network_error()
                delay = backoff(self.settings, attempt, exc)
                logger.warning("%s %s: %s: %s; reconnecting in %.2fs", self.exchange_id, self.symbol,
                               type(exc).__name__, exc, delay)
                await sleep_or_stop(stop, delay)
            except Exception as exc:  # parse errors, exchange errors: count, log, retry; never kill other streams
                attempt += 1
                self.health.errors += 1
                self.need_backfill = True
                delay = backoff(self.settings, attempt, exc)
                logger.exception("%s %s: unexpected error; retrying in %.2fs", self.exchange_id, self.symbol, delay)
                await _reconnect_quietly(self)
                await sleep_or_stop(stop, delay)

    async def ingest(self, trades: list[Trade]) -> None:
        """Publish live trades; first backfill whatever is missing before any of them (restart, reconnect, or a
        jump in consecutive ids: ccxt's cache drops the oldest trades silently when we fall behind)."""
        pending: list[Trade] = []
        seen = self.last_id
        for trade in trades:
            jumped = (self.consecutive and isinstance(trade.id, int) and seen is not None and trade.id > seen + 1)
            if self.need_backfill or jumped:
                if pending:
                    await self.publish(pending)
                    pending = []
                await self.backfill(trade)
                self.need_backfill = False
            pending.append(trade)
            if isinstance(trade.id, int):
                seen = trade.id if seen is None else max(seen, trade.id)
        if pending:
            await self.publish(pending)

    async def _reconnect(self) -> None:
        self.health.reconnects += 1
        metrics.RECONNECTS.labels(self.exchange_id).inc()
        await _reconnect_quietly(self)

    async def publish(self, trades: list[Trade], backfill: bool = False) -> None:
        out = self.outbox
        before = self.core.dropped
        for trade in trades:
            for event in self.core.push(self.symbol, trade):
                out.add(event)
        for event in self.core.flush():
            out.add(event)
        accepted = len(trades) - (self.core.dropped - before)
        self.health.duplicates += self.core.dropped - before
        self.health.trades += accepted
        if backfill:
            self.health.backfilled += accepted
            metrics.TRADES_BACKFILLED.labels(self.exchange_id, metrics.symbol_label(self.symbol)).inc(accepted)
        if trades:
            self.last_ts = max(self.last_ts or 0, trades[-1].ts)
        await self.flush()

    async def _gap(self, start: int, end: int, reason: str) -> None:
        logger.warning("%s %s: gap %d..%d (%s)", self.exchange_id, self.symbol, start, end, reason)
        self.health.gaps += 1
        metrics.GAPS.labels(self.exchange_id, metrics.symbol_label(self.symbol)).inc()
        self.outbox.add(GapMarker(self.exchange_id, self.symbol, start, end, reason))
        await self.flush()

    async def backfill(self, until: Trade | None) -> None:
        """Publish, in order, the trades after the last published one and before ``until`` (the first live trade
        of a new connection), or up to the newest the exchange has when ``until`` is None (after a silence)."""
        if self.last_id is None and self.last_ts is None:
            return
        if self.page_by_id and self.last_id is not None and (until is None or isinstance(until.id, int)):
            await self._backfill_by_id(until)
        elif self.last_ts is not None:
            await self._backfill_by_time(until)

    async def _fetch(self, since: int | None, params: dict[str, Any]) -> list[Trade]:
        attempt = 0
        while True:
            try:
                raw = await self.exchange.fetch_trades(self.symbol, since, PAGE_LIMIT, dict(params))
                return [to_trade(t) for t in raw]
            except TRANSIENT as exc:
                attempt += 1
                if attempt > 5:
                    raise
                await asyncio.sleep(backoff(self.settings, attempt, exc))

    async def _backfill_by_id(self, until: Trade | None) -> None:
        next_id = (self.last_id or 0) + 1
        target = int(until.id) if until is not None else None  # type: ignore[arg-type]
        pages = 0
        while target is None or next_id < target:
            if pages >= self.settings.backfill_max_pages:
                end = until.ts if until is not None else (self.last_ts or 0)
                await self._gap(self.last_ts or end, end, f"backfill stopped after {pages} pages")
                return
            raw_page = await self._fetch(None, {"fromId": next_id})
            pages += 1
            page = [t for t in raw_page if isinstance(t.id, int) and (target is None or t.id < target)]
            if not page:
                if until is not None:
                    await self._gap(self.last_ts or until.ts, until.ts,
                                    f"exchange returned no trades from id {next_id}")
                break
            if page[0].id > next_id:  # type: ignore[operator]
                await self._gap(self.last_ts or page[0].ts, page[0].ts,
                                f"ids {next_id}..{page[0].id - 1} no longer served")  # type: ignore[operator]
            await self.publish(page, backfill=True)
            next_id = page[-1].id + 1  # type: ignore[operator]
            if target is None and len(raw_page) < PAGE_LIMIT:
                break
        if pages:
            logger.info("%s %s: backfill done (%d pages) up to id %s", self.exchange_id, self.symbol, pages,
                        next_id - 1)

    async def _backfill_by_time(self, until: Trade | None) -> None:
        since = self.last_ts or (until.ts if until is not None else 0)
        pages = 0
        while True:
            if pages >= self.settings.backfill_max_pages:
                await self._gap(since, until.ts if until is not None else since, f"backfill stopped after {pages} pages")
                return
            raw_page = await self._fetch(since, {})
            pages += 1
            if until is None:
                page = raw_page
            elif isinstance(until.id, int):
                page = [t for t in raw_page if isinstance(t.id, int) and t.id < until.id]
            else:  # no usable ids: up to the millisecond before the first live trade
                page = [t for t in raw_page if t.ts < until.ts]
            if page:
                await self.publish(page, backfill=True)  # what was already published is dropped by the dedup
            if len(page) < len(raw_page) or len(raw_page) < PAGE_LIMIT:
                return  # reached the first live trade, or the newest trade the exchange has
            if raw_page[-1].ts <= since:
                await self._gap(since, until.ts if until is not None else since,
                                "more trades at one time than one page holds")
                return
            since = raw_page[-1].ts


class MultiTradeStream:
    """The trades of several symbols of one exchange through one ``watch_trades_for_symbols`` subscription.

    Each symbol keeps its own TradeStream state (dedup, backfill, health, silence timeout); this task only reads the
    shared subscription and routes trades. A symbol silent past its own timeout closes the shared socket (every
    symbol then backfills up to its first trade on the new connection) and is backfilled by REST at once.
    """

    def __init__(self, exchange: Any, exchange_id: str, streams_by_symbol: dict[str, TradeStream],
                 settings: Settings) -> None:
        self.exchange = exchange
        self.exchange_id = exchange_id
        self.streams = streams_by_symbol
        self.settings = settings
        self.params = {"name": "aggTrade"} if exchange.id in BINANCE_FAMILY else {}

    def _wait(self) -> float:
        now = time.monotonic()
        return max(0.05, min(st.health.last_message + stream_timeout(self.settings, st.health) - now
                             for st in self.streams.values()))

    async def run(self, stop: asyncio.Event) -> None:
        for st in self.streams.values():
            await st.prepare()
        symbols = list(self.streams)
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(
                    self.exchange.watch_trades_for_symbols(symbols, params=dict(self.params)), timeout=self._wait())
                by_symbol: dict[str, list[dict[str, Any]]] = {}
                for t in raw:
                    by_symbol.setdefault(t["symbol"], []).append(t)
                for symbol, trades in by_symbol.items():
                    if symbol in self.streams:
                        await self.streams[symbol].on_frame(trades)
                attempt = 0
            except asyncio.CancelledError:
                if not cancelled_by_ccxt():
                    raise
                for st in self.streams.values():
                    st.on_network_error()
            except TimeoutError:
                now = time.monotonic()
                for st in self.streams.values():
                    if now - st.health.last_message >= stream_timeout(self.settings, st.health):
                        await st.on_silence()
                        st.health.last_message = time.monotonic()  # the next check is one (doubled) timeout away
                for st in self.streams.values():
                    st.need_backfill = True
            except (ccxt.BadSymbol, FencedError):  # (a partition taken over: its worker stops)
                raise
            except TRANSIENT as exc:
                attempt += 1
                for st in self.streams.values():
                    st.on_network_error()
                delay = backoff(self.settings, attempt, exc)
                logger.warning("%s %s: %s: %s; reconnecting in %.2fs", self.exchange_id, ",".join(symbols),
                               type(exc).__name__, exc, delay)
                await sleep_or_stop(stop, delay)
            except Exception as exc:
                attempt += 1
                for st in self.streams.values():
                    st.health.errors += 1
                    st.need_backfill = True
                delay = backoff(self.settings, attempt, exc)
                logger.exception("%s: unexpected error; retrying in %.2fs", self.exchange_id, delay)
                await sleep_or_stop(stop, delay)


def _trade_clients(stream: TradeStream) -> list[tuple[str, Any]]:
    """The ccxt websocket clients (url, client) carrying this symbol's trades."""
    exchange = stream.exchange
    market = exchange.markets[stream.symbol]
    needle = str(market.get("lowercaseId") or market["id"])
    out = []
    for url, client in list((exchange.clients or {}).items()):
        subs = getattr(client, "subscriptions", {}) or {}
        # Binance keys its trade subscriptions "trade::BTC/USDT"; other exchanges use the market id
        if any((stream.symbol in str(key) or needle in str(key)) and "trade" in str(key).lower()
               and "ticker" not in str(key).lower() for key in subs):
            out.append((url, client))
    return out


def _client_of(stream: TradeStream) -> Any:
    clients = _trade_clients(stream)
    return clients[0][1] if clients else None


async def _reconnect_quietly(stream: TradeStream) -> None:
    """Close the websocket(s) carrying this symbol's trades, so the next watch reconnects and resubscribes."""
    for url, client in _trade_clients(stream):
        with contextlib.suppress(Exception):
            await client.close()
        stream.exchange.clients.pop(url, None)
    stream._client = None
