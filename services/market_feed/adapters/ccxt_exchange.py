"""ccxt at the boundary of live mode: creating and pointing exchanges, loading markets (with the cause of a failure
told plainly), and converting ccxt's trades and tickers to sentinel's types.

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
import random
import socket
import ssl
import time
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt
import ccxt.pro as ccxtpro

from services.market_feed.settings import ExchangeFeed, Settings
from shared.errors import ConfigError, ExchangeError, UnknownExchangeError, UnknownSymbolError
from shared.history import HistoryRow, kline_row, ohlcv_row
from shared.schemas import Ticker, Trade

BINANCE_FAMILY = ("binance", "binanceus")
#: Exchanges whose trade ids per symbol are consecutive integers: a jump in ids means trades were missed.
CONSECUTIVE_IDS = (*BINANCE_FAMILY, "kraken")
#: ccxt errors worth retrying: the exchange or the network is away for now (DNS, refused, timeout, 5xx, rate limit).
TRANSIENT = (ccxt.NetworkError, ccxt.ExchangeNotAvailable)


# ---- exchange set-up -------------------------------------------------------------------------------------------------


def check_exchange_ids(feeds: list[ExchangeFeed]) -> None:
    """Every configured exchange id is one ccxt.pro knows; UnknownExchangeError naming it and close matches."""
    for feed in feeds:
        if feed.id not in ccxtpro.exchanges:
            close = difflib.get_close_matches(feed.id, ccxtpro.exchanges, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownExchangeError(f"market_feed.exchanges: unknown exchange id {feed.id!r}{hint}")


def make_exchange(feed: ExchangeFeed, trades_limit: int = 10_000) -> Any:
    """A ccxt.pro instance for ``feed.id`` with URL overrides; UnknownExchangeError (with suggestions) if unknown."""
    check_exchange_ids([feed])
    cls = getattr(ccxtpro, feed.id)
    options: dict[str, Any] = {"tradesLimit": trades_limit}
    if feed.id in BINANCE_FAMILY:
        # spot only (the futures exchangeInfo endpoints are other hosts), no currencies (needs an API key anyway)
        options.update({"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False})
    exchange = cls({"enableRateLimit": True, "timeout": int(feed.timeout_s * 1000), "options": options})
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


async def load_markets(exchange: Any, feed: ExchangeFeed) -> None:
    """Load the exchange's markets and check every configured symbol.

    Raises ExchangeError naming the cause (``describe_network_error``) when the exchange cannot be reached — worth
    retrying — and UnknownSymbolError naming the symbol and the closest listed ones (a configuration mistake)."""
    try:
        await exchange.load_markets()
    except TRANSIENT as exc:
        raise ExchangeError(f"{feed.name}: cannot load markets: {describe_network_error(exc)}") from exc
    except ccxt.BaseError as exc:
        raise ExchangeError(f"{feed.name}: cannot load markets: {type(exc).__name__}: {_short(exc)}") from exc
    unknown = [s for s in feed.symbols if s not in exchange.markets]
    if unknown:
        problems = []
        for symbol in unknown:
            close = difflib.get_close_matches(symbol, list(exchange.symbols), n=3, cutoff=0.6)
            hint = f"; closest listed: {', '.join(close)}" if close else ""
            problems.append(f"market_feed.exchanges[{feed.name}].symbols: {symbol!r} is not listed by {feed.id}{hint}")
        raise UnknownSymbolError(problems)


async def fetch_ohlcv_page(exchange: Any, symbol: str, timeframe: str, since: int, limit: int) -> list[HistoryRow]:
    """One page of OHLCV history from ``since``: Binance's raw klines (exact strings, taker-buy volume, trade count,
    quote volume), else ccxt's ``fetch_ohlcv``. ccxt's errors come out as ExchangeError naming the cause."""
    try:
        if exchange.id in BINANCE_FAMILY:
            raw = await exchange.publicGetKlines({"symbol": exchange.market_id(symbol), "interval": timeframe,
                                                  "startTime": since, "limit": limit})
            return [kline_row(r) for r in raw]
        return [ohlcv_row(r) for r in await exchange.fetch_ohlcv(symbol, timeframe, since, limit)]
    except TRANSIENT as exc:
        raise ExchangeError(f"{exchange.id}: history of {symbol} {timeframe}: {describe_network_error(exc)}") from exc
    except ccxt.BaseError as exc:
        raise ExchangeError(f"{exchange.id}: history of {symbol} {timeframe}: {type(exc).__name__}: "
                            f"{_short(exc)}") from exc


def describe_network_error(exc: BaseException) -> str:
    """What went wrong reaching an exchange, in words: DNS failure, connection refused, timeout, TLS, HTTP status…

    ccxt's own message only names the request (``binance GET https://…``); the cause is in the chained exceptions
    (aiohttp's connector error, then the OSError)."""
    request = _short(exc)
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"DNS lookup failed ({e.strerror or e}) — {request}"
        if isinstance(e, ConnectionRefusedError):
            return f"connection refused — {request}"
        if isinstance(e, ssl.SSLError):
            return f"TLS error ({e.reason or e}) — {request}"
        if isinstance(e, (TimeoutError, ccxt.RequestTimeout)):
            return f"timed out — {request}"
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return f"{e.strerror} — {request}"
    return f"{type(exc).__name__}: {request}"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def backoff(settings: Settings, attempt: int, exc: BaseException | None = None) -> float:
    """Capped exponential backoff with jitter (4× longer base when the exchange asked us to slow down)."""
    base = settings.backoff_base_s
    if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        base *= 4
    return random.uniform(0.5, 1.0) * min(settings.backoff_cap_s, base * 2 ** min(attempt - 1, 20))


def cancelled_by_ccxt() -> bool:
    """Whether a CancelledError that reached this task came from ccxt rather than from cancelling the task: ccxt
    cancels the pending futures of a websocket it closes (one closed for another stream on the same socket, e.g.
    Kraken's trades and ticker). That is a closed connection to reconnect, not a reason to stop."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)


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
