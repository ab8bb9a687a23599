"""The local exchange's REST side: Binance spot's public API (``/api/v3``) served from its books (``BinanceRest``),
and the reply and query helpers every REST handler of the simulator uses.

``BinanceRest`` handles ``ping``, ``time``, ``exchangeInfo``, ``trades``, ``aggTrades`` and ``klines``::

    GET /api/v3/aggTrades?symbol=BTCUSDT&startTime=1723161255000&endTime=1723164855000&limit=500
    → [{"a": 3735683259, "p": "61837.63", "q": "0.02", "f": 3735683259, "l": 3735683259, "T": 1723161255342,
        "m": true, "M": true}, ...]
    GET /api/v3/trades?symbol=NOPE → 400 {"code": -1121, "msg": "Invalid symbol."}

``json_reply`` and ``error_reply`` write compact JSON and Binance's error bodies; ``int_param`` and ``limit_param``
read query parameters, refusing bad ones as Binance does (``BinanceApiError``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from services.exchange_sim.book import BinanceApiError, SymbolBook, agg_trade_row, exchange_info, market_id, trade_row
from shared.timeframes import timeframe_ms


def json_reply(data: Any, status: int = 200) -> web.Response:
    """``data`` as compact JSON."""
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")


def error_reply(exc: BinanceApiError) -> web.Response:
    """Binance's error body for ``exc``, with its HTTP status."""
    return json_reply({"code": exc.code, "msg": exc.msg}, status=exc.status)


def int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    """The integer query parameter ``name`` (``default`` when absent); BinanceApiError -1100 when not an integer."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BinanceApiError(400, -1100, f"Illegal characters found in parameter '{name}'.") from None


def limit_param(request: web.Request, default: int, cap: int) -> int:
    """The ``limit`` query parameter (``default`` when absent or 0); BinanceApiError unless within 1..``cap``."""
    limit = int_param(request, "limit", default) or default
    if limit > cap or limit < 1:
        raise BinanceApiError(400, -1100, f"limit must be between 1 and {cap}")
    return limit


class BinanceRest:
    """The ``/api/v3`` handlers over ``books`` (symbol → ``SymbolBook``, the exchange's own)."""

    def __init__(self, books: dict[str, SymbolBook]) -> None:
        self.books = books
        self._by_mid = {market_id(s): s for s in books}

    def book(self, request: web.Request) -> SymbolBook:
        """The book of the request's ``symbol`` (Binance's market id, e.g. ``BTCUSDT``); BinanceApiError -1121."""
        mid = request.query.get("symbol", "")
        symbol = self._by_mid.get(mid.upper())
        if symbol is None:
            raise BinanceApiError(400, -1121, "Invalid symbol.")
        return self.books[symbol]

    async def ping(self, request: web.Request) -> web.Response:
        return json_reply({})

    async def server_time(self, request: web.Request) -> web.Response:
        return json_reply({"serverTime": int(time.time() * 1000)})

    async def exchange_info(self, request: web.Request) -> web.Response:
        return json_reply(exchange_info(self.books, int(time.time() * 1000)))

    async def trades(self, request: web.Request) -> web.Response:
        try:
            book = self.book(request)
            return json_reply([trade_row(t) for t in book.recent(limit_param(request, 500, 1000))])
        except BinanceApiError as exc:
            return error_reply(exc)

    async def agg_trades(self, request: web.Request) -> web.Response:
        try:
            book = self.book(request)
            rows = book.agg_trades(from_id=int_param(request, "fromId"), start_time=int_param(request, "startTime"),
                                   end_time=int_param(request, "endTime"), limit=limit_param(request, 500, 1000))
            return json_reply([agg_trade_row(t) for t in rows])
        except BinanceApiError as exc:
            return error_reply(exc)

    async def klines(self, request: web.Request) -> web.Response:
        try:
            book = self.book(request)
            try:
                interval = timeframe_ms(request.query.get("interval", ""))
            except Exception:
                raise BinanceApiError(400, -1120, "Invalid interval.") from None
            rows = book.klines(interval, int_param(request, "startTime"), int_param(request, "endTime"),
                               limit_param(request, 500, 1000))
            return json_reply(rows)
        except BinanceApiError as exc:
            return error_reply(exc)
