"""Live mode: ccxt.pro trades and tickers that lose nothing and repeat nothing.

One ccxt.pro instance per exchange id, shared by all its streams. Per (exchange, symbol) one trades task:

1. ``watch_trades`` with a per-symbol silence timeout (a quiet symbol gets a longer one: ``max(base, 20 × its mean
   gap between frames)``); a timeout closes that symbol's websocket and reconnects;
2. NetworkError / RequestTimeout / ExchangeNotAvailable → capped, jittered exponential backoff and reconnect;
   RateLimitExceeded / DDoSProtection → the same with a 4× longer base;
3. after any reconnect, at start-up (from the last id already in Redis) and whenever consecutive ids jump, the missed
   trades are fetched by REST *before* the first live batch is published: up to the first trade of the new connection
   (trades released between the backfill and the resubscription are the ones naive feeds lose). Exchanges with
   consecutive integer ids (Binance family) page by ``fromId``; the others by ``since``. What cannot be recovered is
   published as a ``GapMarker``;
4. every trade passes ``core.IdDedup`` (last id per symbol, restored from Redis), so reconnects, backfills and restarts
   never publish an id twice.

On Binance the websocket ``@aggTrade`` stream and the REST ``aggTrades`` endpoint share an id space (``@trade`` ids do
not match ``aggTrades`` ids), so sentinel watches ``aggTrade`` there. A raw aggTrade frame looks like::

    {"e": "aggTrade", "E": 1723161255343, "s": "BTCUSDT", "a": 3735683259, "p": "61837.63", "q": "0.02",
     "f": 3735683259, "l": 3735683259, "T": 1723161255342, "m": true, "M": true}

and prices/amounts are taken from ``info['p']`` / ``info['q']`` (exact strings) rather than ccxt's floats.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt
import ccxt.pro as ccxtpro
from redis.asyncio import Redis

from services.market_feed.core import FeedCore
from services.market_feed.history import HistoryServer
from services.market_feed.publisher import Outbox, read_last_ids
from services.market_feed.settings import ExchangeFeed, Settings
from shared import streams
from shared.bus import Bus
from shared.errors import ConfigError, ExchangeError, UnknownExchangeError, UnknownSymbolError
from shared.schemas import GapMarker, Ticker, Trade, Watermark

logger = logging.getLogger(__name__)

BINANCE_FAMILY = ("binance", "binanceus")
#: Exchanges whose trade ids per symbol are consecutive integers: a jump in ids means trades were missed.
CONSECUTIVE_IDS = (*BINANCE_FAMILY, "kraken")
PAGE_LIMIT = 1000


# ---- exchange set-up -------------------------------------------------------------------------------------------------


def make_exchange(feed: ExchangeFeed, trades_limit: int = 10_000) -> Any:
    """A ccxt.pro instance for ``feed.id`` with URL overrides; UnknownExchangeError (with suggestions) if unknown."""
    cls = getattr(ccxtpro, feed.id, None) if feed.id in ccxtpro.exchanges else None
    if cls is None:
        close = difflib.get_close_matches(feed.id, ccxtpro.exchanges, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownExchangeError(f"market_feed.exchanges: unknown exchange id {feed.id!r}{hint}")
    options: dict[str, Any] = {"tradesLimit": trades_limit}
    if feed.id in BINANCE_FAMILY:
        # spot only (the futures exchangeInfo endpoints are other hosts), no currencies (needs an API key anyway)
        options.update({"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False})
    exchange = cls({"enableRateLimit": True, "options": options})
    apply_url_overrides(exchange, feed.ws_url, feed.rest_url)
    return exchange


def apply_url_overrides(exchange: Any, ws_url: str | None, rest_url: str | None) -> None:
    """Point an exchange's public websocket and REST APIs at other base URLs (mirror, proxy, local simulator).

    Binance: ``urls['api']['ws']['spot']`` (must contain ``/stream``: ccxt tells spot from futures by it) and
    ``urls['api']['public']`` (``…/api/v3``). Other exchanges: every string in ``urls['api']['ws']`` (or the string
    itself), and ``urls['api']['public']`` or ``urls['api']['rest']`` where present.
    """
    api = exchange.urls.get("api")
    if ws_url:
        if exchange.id in BINANCE_FAMILY and "/stream" not in ws_url:
            raise ConfigError(f"market_feed.exchanges[{exchange.id}].ws_url — a Binance spot websocket URL must "
                              f"contain '/stream' (ccxt decides spot vs futures from it), got {ws_url!r}")
        if isinstance(api, dict) and isinstance(api.get("ws"), dict):
            if exchange.id in BINANCE_FAMILY:
                api["ws"]["spot"] = ws_url
            else:
                for key, value in list(api["ws"].items()):
                    if isinstance(value, str):
                        api["ws"][key] = ws_url
        elif isinstance(api, dict):
            api["ws"] = ws_url
    if rest_url and isinstance(api, dict):
        keys = [k for k in ("public", "rest", "v3") if isinstance(api.get(k), str)] or ["public"]
        for key in keys:
            api[key] = rest_url


async def load_and_validate(exchange: Any, feed: ExchangeFeed) -> None:
    """Load markets and check every symbol; UnknownSymbolError naming it with the closest listed symbols."""
    try:
        await exchange.load_markets()
    except ccxt.BaseError as exc:
        raise ExchangeError(f"{feed.id}: cannot load markets: {exc}") from exc
    for symbol in feed.symbols:
        if symbol not in exchange.markets:
            close = difflib.get_close_matches(symbol, list(exchange.symbols), n=3, cutoff=0.6)
            hint = f"; closest listed: {', '.join(close)}" if close else ""
            raise UnknownSymbolError(f"market_feed.exchanges[{feed.id}].symbols: {symbol!r} is not listed by "
                                     f"{feed.id}{hint}")


# ---- conversions ---------------------------------------------------------------------------------------------------


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value if isinstance(value, str) else repr(value))
    except InvalidOperation:
        return None


def to_trade(raw: dict[str, Any]) -> Trade:
    """A ccxt trade dict → Trade (exact Binance strings from ``info`` when there)."""
    info = raw.get("info") or {}
    price = _dec(info.get("p")) if isinstance(info, dict) and "p" in info else None
    amount = _dec(info.get("q")) if isinstance(info, dict) and "q" in info else None
    tid: Any = raw.get("id")
    if isinstance(tid, str) and tid.isdigit():
        tid = int(tid)
    return Trade(tid, int(raw["timestamp"]), price or _dec(raw["price"]),  # type: ignore[arg-type]
                 amount or _dec(raw["amount"]), raw.get("side") == "buy")  # type: ignore[arg-type]


def to_ticker(exchange: str, symbol: str, raw: dict[str, Any]) -> Ticker:
    info = raw.get("info") if isinstance(raw.get("info"), dict) else {}

    def pick(key: str, info_key: str) -> Decimal | None:
        if info_key in info:
            return _dec(info[info_key])
        return _dec(raw.get(key))

    return Ticker(exchange=exchange, symbol=symbol, ts=int(raw.get("timestamp") or time.time() * 1000),
                  bid=pick("bid", "b"), ask=pick("ask", "a"), bid_size=pick("bidVolume", "B"),
                  ask_size=pick("askVolume", "A"), last=pick("last", "c"))


# ---- health ----------------------------------------------------------------------------------------------------------


@dataclass
class StreamHealth:
    """Counters of one (exchange, symbol, stream) for the heartbeat and /health."""

    messages: int = 0
    trades: int = 0
    reconnects: int = 0
    timeouts: int = 0
    errors: int = 0
    backfilled: int = 0
    duplicates: int = 0
    gaps: int = 0
    last_message: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    mean_gap_s: float | None = None  # EWMA of the time between frames
    silent_streak: int = 0  # silence timeouts in a row (each one doubles the next timeout)

    def message(self) -> None:
        now = time.monotonic()
        if self.messages:
            gap = now - self.last_message
            self.mean_gap_s = gap if self.mean_gap_s is None else 0.9 * self.mean_gap_s + 0.1 * gap
        self.messages += 1
        self.last_message = now
        self.silent_streak = 0

    def fields(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"age_s": round(now - self.last_message, 1),
                "msgs_per_s": round(self.messages / max(now - self.started, 1e-9), 2),
                "reconnects": self.reconnects, "timeouts": self.timeouts, "errors": self.errors,
                "backfilled": self.backfilled, "duplicates": self.duplicates, "gaps": self.gaps}


# ---- the feed ----------------------------------------------------------------------------------------------------------


class LiveFeed:
    """All exchanges and symbols of ``settings.exchanges``; ``await run(stop)``."""

    def __init__(self, settings: Settings, redis: Redis, bus: Bus) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = bus
        self.exchanges: dict[str, Any] = {}
        self.streams: list[TradeStream] = []
        self.health: dict[str, StreamHealth] = {}
        self.history: HistoryServer | None = None

    @property
    def trades_published(self) -> int:
        return sum(s.outbox.trades_published for s in self.streams)

    def health_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, h in self.health.items():
            for name, value in h.fields().items():
                out[f"{key}.{name}"] = value
        return out

    async def start(self) -> None:
        """Create the exchanges, load and validate markets (errors stop start-up), create the streams."""
        try:
            for feed in self.settings.exchanges:
                exchange = make_exchange(feed, self.settings.ccxt_trades_limit)
                self.exchanges[feed.id] = exchange
                await load_and_validate(exchange, feed)
        except BaseException:
            await self.close()
            raise
        for feed in self.settings.exchanges:
            exchange = self.exchanges[feed.id]
            last_ids = await read_last_ids(self.redis, feed.id, feed.symbols)
            await self.redis.sadd(streams.FEED_REGISTRY,
                                  *(streams.registry_member(feed.id, s) for s in feed.symbols))
            for symbol in feed.symbols:
                health = self.health.setdefault(f"{feed.id}|{symbol}|trades", StreamHealth())
                self.streams.append(TradeStream(exchange, feed.id, symbol, self.settings, self.bus, health,
                                                last_ids.get(symbol), feed.backfill_paging))
                if feed.tickers:
                    self.health.setdefault(f"{feed.id}|{symbol}|ticker", StreamHealth())

    async def run(self, stop: asyncio.Event) -> None:
        if not self.exchanges:
            await self.start()
        tasks = []
        for feed in self.settings.exchanges:
            exchange = self.exchanges[feed.id]
            mine = {s.symbol: s for s in self.streams if s.exchange_id == feed.id}
            multi = feed.trades_watch == "multi" or (
                feed.trades_watch == "auto" and len(mine) > 1 and bool(exchange.has.get("watchTradesForSymbols")))
            if multi:
                tasks.append(asyncio.create_task(MultiTradeStream(exchange, feed.id, mine, self.settings).run(stop),
                                                 name=f"trades-{feed.id}"))
            else:
                tasks.extend(asyncio.create_task(s.run(stop), name=f"trades-{feed.id}-{s.symbol}")
                             for s in mine.values())
        for feed in self.settings.exchanges:
            if feed.tickers:
                for symbol in feed.symbols:
                    tasks.append(asyncio.create_task(
                        self._tickers(stop, feed.id, symbol), name=f"ticker-{feed.id}-{symbol}"))
        tasks.append(asyncio.create_task(self._log_health(stop), name="feed-health-log"))
        self.history = HistoryServer(self.bus, self.exchanges,
                                     self.settings.consumer_settings(streams.GROUP_MARKET_FEED, "market_feed", count=10))
        tasks.append(asyncio.create_task(self.history.run(stop), name="feed-history"))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in self.streams:
                with contextlib.suppress(Exception):
                    await s.outbox.flush()
            await self.close()

    def last_ids(self) -> dict[tuple[str, str], int | None]:
        """Last published trade id per (exchange, symbol): a demo compares it with the simulator's last ids."""
        return {(s.exchange_id, s.symbol): s.last_id for s in self.streams}

    async def publish_final_watermarks(self) -> None:
        """Mark every stream as ended (``Watermark(final=True)`` at its last trade time): for a finite demo source,
        so the candle builder closes the last candles. Call after ``run`` returned."""
        for s in self.streams:
            s.outbox.add(Watermark(s.exchange_id, s.symbol, s.last_ts or 0, final=True))
            await s.outbox.flush()

    async def close(self) -> None:
        for exchange in self.exchanges.values():
            with contextlib.suppress(Exception):
                await exchange.close()

    async def _tickers(self, stop: asyncio.Event, exchange_id: str, symbol: str) -> None:
        exchange = self.exchanges[exchange_id]
        health = self.health[f"{exchange_id}|{symbol}|ticker"]
        outbox = Outbox(self.bus, exchange_id, maxlen=self.settings.stream_maxlen, pipeline_entries=1)
        params = {"name": "ticker"} if exchange_id in BINANCE_FAMILY else {}
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(exchange.watch_ticker(symbol, params=dict(params)),
                                             timeout=_timeout(self.settings, health))
                health.message()
                outbox.add_ticker(to_ticker(exchange_id, symbol, raw))
                await outbox.flush()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a ticker error never stops trades or other tickers
                attempt += 1
                health.errors += 1
                if isinstance(exc, TimeoutError):
                    health.timeouts += 1
                    health.silent_streak += 1
                logger.warning("%s %s ticker: %s: %s", exchange_id, symbol, type(exc).__name__, exc)
                await _sleep(stop, _backoff(self.settings, attempt, exc))

    async def _log_health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep(stop, 60.0)
            for key, h in self.health.items():
                logger.info("health %s %s", key, h.fields())


def _timeout(settings: Settings, health: StreamHealth) -> float:
    """Per-symbol silence timeout: quiet symbols get proportionally longer ones, and each timeout in a row doubles
    the next (a symbol that went quiet is checked less and less often: no reconnect storm)."""
    base = settings.silence_timeout_s
    timeout = base if health.mean_gap_s is None else min(max(base, 20 * health.mean_gap_s), base * 20)
    return min(timeout * 2 ** min(health.silent_streak, 10), base * 60)


def _backoff(settings: Settings, attempt: int, exc: BaseException) -> float:
    base = settings.backoff_base_s
    if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        base *= 4
    return random.uniform(0.5, 1.0) * min(settings.backoff_cap_s, base * 2 ** min(attempt - 1, 20))


async def _sleep(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)


class TradeStream:
    """The trades of one (exchange, symbol): watch, reconnect, backfill, dedup, publish."""

    def __init__(self, exchange: Any, exchange_id: str, symbol: str, settings: Settings, bus: Bus,
                 health: StreamHealth, last_id: int | None, paging: str = "auto") -> None:
        self.exchange = exchange
        self.exchange_id = exchange_id
        self.symbol = symbol
        self.settings = settings
        self.health = health
        self.binance = exchange_id in BINANCE_FAMILY
        self.consecutive = exchange_id in CONSECUTIVE_IDS  # a jump in ids means missed trades
        self.page_by_id = paging == "id" or (paging == "auto" and self.binance)
        self.params = {"name": "aggTrade"} if self.binance else {}
        self.core = FeedCore(exchange_id, [symbol], batch_size=settings.batch_size, window_ms=10**12,
                             watermark_every_ms=settings.watermark_every_ms, last_ids={symbol: last_id},
                             dedup_window=settings.dedup_window)
        self.outbox = Outbox(bus, exchange_id, maxlen=settings.stream_maxlen, pipeline_entries=10**9)
        self.redis = bus.redis
        self.last_ts: int | None = None
        self.need_backfill = last_id is not None
        self._client: Any = None

    @property
    def last_id(self) -> int | None:
        return self.core.symbols[self.symbol].dedup.last_id

    async def prepare(self) -> None:
        """Restore the last published time (the last id is already in the dedup) for the start-up backfill."""
        if self.need_backfill and self.last_ts is None:
            raw = await self.redis.hget(streams.feed_state(self.exchange_id, self.symbol), "last_ts")
            self.last_ts = int(raw) if raw else None

    async def on_frame(self, raw: list[dict[str, Any]]) -> None:
        """Trades ccxt returned for this symbol: note a silent reconnect by ccxt, then backfill/dedup/publish."""
        self.health.message()
        client = _client_of(self)
        if client is not self._client:
            if self._client is not None:  # ccxt reconnected by itself after a server close
                self.health.reconnects += 1
                self.need_backfill = True
            self._client = client
        await self.ingest([to_trade(t) for t in raw])

    async def on_silence(self) -> None:
        """Silent past its timeout: count it, close its socket, and fetch by REST what the silence hid."""
        self.health.timeouts += 1
        logger.warning("%s %s: no trades for %.1fs; reconnecting", self.exchange_id, self.symbol,
                       _timeout(self.settings, self.health))
        self.health.silent_streak += 1
        await self._reconnect()
        self.need_backfill = True
        with contextlib.suppress(ccxt.NetworkError, ccxt.ExchangeNotAvailable):
            await self.backfill(None)  # a quiet or ended market

    def on_network_error(self) -> None:
        self.health.reconnects += 1
        self._client = None  # counted here; the new connection is not counted again
        self.need_backfill = True

    async def run(self, stop: asyncio.Event) -> None:
        await self.prepare()
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(self.exchange.watch_trades(self.symbol, params=dict(self.params)),
                                             timeout=_timeout(self.settings, self.health))
                await self.on_frame(raw)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                await self.on_silence()
            except ccxt.BadSymbol:
                raise
            except (ccxt.NetworkError, ccxt.ExchangeNotAvailable) as exc:
                attempt += 1
                self.on_network_error()
                delay = _backoff(self.settings, attempt, exc)
                logger.warning("%s %s: %s: %s; reconnecting in %.2fs", self.exchange_id, self.symbol,
                               type(exc).__name__, exc, delay)
                await _sleep(stop, delay)
            except Exception as exc:  # parse errors, exchange errors: count, log, retry; never kill other streams
                attempt += 1
                self.health.errors += 1
                self.need_backfill = True
                delay = _backoff(self.settings, attempt, exc)
                logger.exception("%s %s: unexpected error; retrying in %.2fs", self.exchange_id, self.symbol, delay)
                await _reconnect_quietly(self)
                await _sleep(stop, delay)

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
        if trades:
            self.last_ts = max(self.last_ts or 0, trades[-1].ts)
        await out.flush()

    async def _gap(self, start: int, end: int, reason: str) -> None:
        logger.warning("%s %s: gap %d..%d (%s)", self.exchange_id, self.symbol, start, end, reason)
        self.health.gaps += 1
        self.outbox.add(GapMarker(self.exchange_id, self.symbol, start, end, reason))
        await self.outbox.flush()

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
            except (ccxt.NetworkError, ccxt.ExchangeNotAvailable) as exc:
                attempt += 1
                if attempt > 5:
                    raise
                await asyncio.sleep(_backoff(self.settings, attempt, exc))

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
        self.params = {"name": "aggTrade"} if exchange_id in BINANCE_FAMILY else {}

    def _wait(self) -> float:
        now = time.monotonic()
        return max(0.05, min(st.health.last_message + _timeout(self.settings, st.health) - now
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
                raise
            except TimeoutError:
                now = time.monotonic()
                for st in self.streams.values():
                    if now - st.health.last_message >= _timeout(self.settings, st.health):
                        await st.on_silence()
                        st.health.last_message = time.monotonic()  # the next check is one (doubled) timeout away
                for st in self.streams.values():
                    st.need_backfill = True
            except ccxt.BadSymbol:
                raise
            except (ccxt.NetworkError, ccxt.ExchangeNotAvailable) as exc:
                attempt += 1
                for st in self.streams.values():
                    st.on_network_error()
                delay = _backoff(self.settings, attempt, exc)
                logger.warning("%s %s: %s: %s; reconnecting in %.2fs", self.exchange_id, ",".join(symbols),
                               type(exc).__name__, exc, delay)
                await _sleep(stop, delay)
            except Exception as exc:
                attempt += 1
                for st in self.streams.values():
                    st.health.errors += 1
                    st.need_backfill = True
                delay = _backoff(self.settings, attempt, exc)
                logger.exception("%s: unexpected error; retrying in %.2fs", self.exchange_id, delay)
                await _sleep(stop, delay)


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
