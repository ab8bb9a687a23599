"""ccxt's REST trade history for ``sentinel data fetch``: one page of trades at a time, errors translated.

Rate limits are ccxt's own (``enableRateLimit``: it spaces requests by the exchange's ``rateLimit``); network
errors and rate-limit answers are retried with a capped backoff, then reported as ``FetchError``. Binance pages by
``fromId`` (aggregate-trade ids; a page by time can stall where hundreds of trades share a millisecond), every other
exchange by time (``since``).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async

from sentinel.data.plan import FetchError, market_id
from services.market_feed.adapters.ccxt_exchange import BINANCE_FAMILY, apply_url_overrides, to_trade
from shared.errors import UnknownExchangeError, UnknownSymbolError
from shared.schemas import Trade

logger = logging.getLogger(__name__)

PAGE = 1000
RETRIES = 3
_TRANSIENT = (ccxt.NetworkError, ccxt.ExchangeNotAvailable, ccxt.RateLimitExceeded, ccxt.DDoSProtection,
              ccxt.RequestTimeout)


def known_exchanges() -> list[str]:
    return list(ccxt_async.exchanges)


class RestTrades:
    """Trade history of one exchange through ccxt (``async with RestTrades(id) as ex``)."""

    def __init__(self, exchange_id: str, rest_url: str | None = None, options: dict[str, Any] | None = None) -> None:
        if exchange_id not in ccxt_async.exchanges:
            close = difflib.get_close_matches(exchange_id, ccxt_async.exchanges, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `python -c \"import ccxt; " \
                "print(ccxt.exchanges)\"` lists them"
            raise UnknownExchangeError(f"unknown exchange {exchange_id!r} (not a ccxt exchange id){hint}")
        opts: dict[str, Any] = {}
        if exchange_id in BINANCE_FAMILY:
            # spot markets only (futures live on other hosts) and no currencies (an API key would be needed)
            opts.update({"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False})
        opts.update(options or {})
        self.id = exchange_id
        self.exchange = getattr(ccxt_async, exchange_id)({"enableRateLimit": True, "options": opts})
        apply_url_overrides(self.exchange, None, rest_url)
        self.page_by_id = exchange_id in BINANCE_FAMILY or exchange_id == "binanceusdm"
        self.page_size = PAGE
        #: Binance answers a page by time for one hour after ``since`` only: an empty page means "nothing in that hour"
        self.time_window_ms: int | None = 3_600_000 if self.page_by_id else None

    async def __aenter__(self) -> RestTrades:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.exchange.close()

    async def resolve(self, symbols: list[str]) -> list[str]:
        """Unified symbols for the user's spellings (``BTC/USDT`` or ``BTCUSDT``); UnknownSymbolError otherwise."""
        try:
            await self._call(self.exchange.load_markets)
        except ccxt.BaseError as exc:
            raise FetchError(f"{self.id}: cannot load its markets ({type(exc).__name__}: {exc})") from exc
        by_id = {market_id(s): s for s in self.exchange.symbols}
        out = []
        for symbol in symbols:
            if symbol in self.exchange.markets:
                out.append(symbol)
            elif market_id(symbol) in by_id and "/" not in symbol:
                out.append(by_id[market_id(symbol)])
            else:
                close = difflib.get_close_matches(symbol, list(self.exchange.symbols), n=3, cutoff=0.6)
                hint = f"; closest listed: {', '.join(close)}" if close else ""
                raise UnknownSymbolError(f"{self.id} does not list {symbol!r}{hint}")
        return out

    async def page(self, symbol: str, *, since: int | None = None, from_id: int | None = None) -> list[Trade]:
        """Up to ``PAGE`` trades, oldest first: from ``since`` (ms), or from trade id ``from_id`` (Binance)."""
        params = {"fromId": from_id} if from_id is not None else {}
        raw = await self._call(self.exchange.fetch_trades, symbol, since, PAGE, params)
        return [to_trade(t) for t in raw]

    async def _call(self, fn: Any, *args: Any) -> Any:
        attempt = 0
        while True:
            try:
                return await fn(*args)
            except _TRANSIENT as exc:
                attempt += 1
                if attempt > RETRIES:
                    what = "rate limited" if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)) \
                        else "unreachable"
                    raise FetchError(f"{self.id} {what} after {RETRIES} retries ({type(exc).__name__}: "
                                     f"{_short(exc)}); check the network connection and run again: it resumes "
                                     f"from what is on disk") from exc
                delay = min(2.0 ** (attempt - 1), 30.0) * (4 if isinstance(exc, ccxt.RateLimitExceeded) else 1)
                logger.info("%s: %s, retry %d in %.0fs", self.id, type(exc).__name__, attempt, delay)
                await asyncio.sleep(delay)
            except ccxt.BadSymbol as exc:
                raise UnknownSymbolError(f"{self.id}: {_short(exc)}") from exc
            except ccxt.BaseError as exc:
                raise FetchError(f"{self.id} refused the request ({type(exc).__name__}: {_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 240 else text[:240] + "…"
