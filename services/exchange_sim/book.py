"""Pure state of the local exchange: the trades released so far per symbol, and Binance-shaped views of them.

Each simulated trade is also its own aggregate trade (``a == f == l == t``), so the ``@trade`` / ``@aggTrade`` streams
and the ``/api/v3/trades`` / ``/api/v3/aggTrades`` endpoints share one id space here (on real Binance they do not:
see NOTES.md). No asyncio, no clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.schemas import Trade


class BinanceApiError(Exception):
    """An error answered the way Binance does: HTTP status plus ``{"code": ..., "msg": ...}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


def market_id(symbol: str) -> str:
    """``BTC/USDT`` → ``BTCUSDT``."""
    return symbol.replace("/", "").upper()


@dataclass
class SymbolBook:
    symbol: str
    tick: Decimal
    lot: Decimal
    retention: int  # trades kept for REST (an exchange that cannot page back further)
    trades: deque[Trade] = field(default_factory=deque)
    _ids: deque[int] = field(default_factory=deque)
    _ts: deque[int] = field(default_factory=deque)

    def add(self, trade: Trade) -> None:
        self.trades.append(trade)
        self._ids.append(int(trade.id))  # type: ignore[arg-type]
        self._ts.append(trade.ts)
        if len(self.trades) > self.retention:
            self.trades.popleft()
            self._ids.popleft()
            self._ts.popleft()

    @property
    def last(self) -> Trade | None:
        return self.trades[-1] if self.trades else None

    def _slice(self, start: int, limit: int) -> list[Trade]:
        end = min(len(self.trades), start + limit)
        return [self.trades[i] for i in range(start, end)]

    def agg_trades(self, *, from_id: int | None, start_time: int | None, end_time: int | None,
                   limit: int) -> list[Trade]:
        """GET /api/v3/aggTrades semantics (Binance): fromId xor a ≤1h time window; ascending; limit ≤ 1000."""
        if from_id is not None and (start_time is not None or end_time is not None):
            raise BinanceApiError(400, -1128, "Combination of optional parameters invalid.")
        if start_time is not None and end_time is not None and end_time - start_time > 3_600_000:
            raise BinanceApiError(400, -1127, "More than 1 hours between startTime and endTime.")
        if from_id is not None:
            i = bisect.bisect_left(self._ids, from_id)
            return self._slice(i, limit)
        if start_time is not None or end_time is not None:
            lo = bisect.bisect_left(self._ts, start_time) if start_time is not None else 0
            hi = bisect.bisect_right(self._ts, end_time) if end_time is not None else len(self._ts)
            return self._slice(lo, min(limit, hi - lo))
        return self.recent(limit)

    def recent(self, limit: int) -> list[Trade]:
        return self._slice(max(0, len(self.trades) - limit), limit)

    def klines(self, interval_ms: int, start_time: int | None, end_time: int | None, limit: int) -> list[list[Any]]:
        """GET /api/v3/klines rows from the retained trades (buckets aligned to the epoch, like Binance)."""
        out: dict[int, list[Any]] = {}
        for t in self.trades:
            if (start_time is not None and t.ts < start_time) or (end_time is not None and t.ts > end_time):
                continue
            b = t.ts - t.ts % interval_ms
            k = out.get(b)
            if k is None:
                k = out[b] = [b, t.price, t.price, t.price, t.price, Decimal(0), b + interval_ms - 1, Decimal(0), 0,
                              Decimal(0), Decimal(0), "0"]
            k[2] = max(k[2], t.price)
            k[3] = min(k[3], t.price)
            k[4] = t.price
            k[5] += t.amount
            k[7] += t.amount * t.price
            k[8] += 1
            if t.is_buy:
                k[9] += t.amount
                k[10] += t.amount * t.price
        rows = [out[b] for b in sorted(out)][:limit]
        return [[r[0], str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), r[6], str(r[7]), r[8], str(r[9]),
                 str(r[10]), "0"] for r in rows]


# ---- Binance payloads ----------------------------------------------------------------------------------------------


def trade_event(mid: str, t: Trade, event_ms: int) -> dict[str, Any]:
    """``@trade`` event: ``{"e":"trade","E":…,"s":"BTCUSDT","t":12345,"p":"0.001","q":"100","T":…,"m":true,"M":true}``."""
    return {"e": "trade", "E": event_ms, "s": mid, "t": t.id, "p": str(t.price), "q": str(t.amount), "T": t.ts,
            "m": not t.is_buy, "M": True}


def agg_trade_event(mid: str, t: Trade, event_ms: int) -> dict[str, Any]:
    return {"e": "aggTrade", "E": event_ms, "s": mid, "a": t.id, "p": str(t.price), "q": str(t.amount), "f": t.id,
            "l": t.id, "T": t.ts, "m": not t.is_buy, "M": True}


def agg_trade_row(t: Trade) -> dict[str, Any]:
    return {"a": t.id, "p": str(t.price), "q": str(t.amount), "f": t.id, "l": t.id, "T": t.ts, "m": not t.is_buy,
            "M": True}


def trade_row(t: Trade) -> dict[str, Any]:
    return {"id": t.id, "price": str(t.price), "qty": str(t.amount), "quoteQty": str(t.price * t.amount),
            "time": t.ts, "isBuyerMaker": not t.is_buy, "isBestMatch": True}


def ticker_event(mid: str, book: SymbolBook, event_ms: int, day_open: Decimal, volume: Decimal) -> dict[str, Any]:
    """``@ticker`` (24hrTicker) with best bid/ask one tick around the last price."""
    last = book.last
    price = last.price if last else day_open
    size = book.lot * 1000
    return {"e": "24hrTicker", "E": event_ms, "s": mid, "p": str(price - day_open),
            "P": "0", "w": str(price), "x": str(day_open), "c": str(price), "Q": str(last.amount if last else 0),
            "b": str(price - book.tick), "B": str(size), "a": str(price + book.tick), "A": str(size),
            "o": str(day_open), "h": str(price), "l": str(price), "v": str(volume), "q": "0",
            "O": event_ms - 86_400_000, "C": event_ms, "F": 0, "L": last.id if last else 0,
            "n": len(book.trades)}


def book_ticker_event(mid: str, book: SymbolBook, update_id: int) -> dict[str, Any]:
    last = book.last
    if last is None:
        return {}
    size = book.lot * 1000
    return {"u": update_id, "s": mid, "b": str(last.price - book.tick), "B": str(size),
            "a": str(last.price + book.tick), "A": str(size)}


def exchange_info(books: dict[str, SymbolBook], server_ms: int) -> dict[str, Any]:
    symbols = []
    for symbol, book in books.items():
        base, quote = symbol.split("/")
        symbols.append({
            "symbol": market_id(symbol), "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
            "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8, "orderTypes": ["LIMIT", "MARKET"], "icebergAllowed": True,
            "ocoAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": str(book.tick), "maxPrice": "1000000.00",
                 "tickSize": str(book.tick)},
                {"filterType": "LOT_SIZE", "minQty": str(book.lot), "maxQty": "9000.0", "stepSize": str(book.lot)},
            ],
            "permissions": ["SPOT"], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": ["NONE"],
        })
    return {"timezone": "UTC", "serverTime": server_ms, "rateLimits": [], "exchangeFilters": [], "symbols": symbols}
