"""Pure conversions of ccxt's derivatives structures into sentinel's messages, exact where the exchange allows.

ccxt parses numbers into floats; where its ``info`` holds the exchange's own strings (Binance USD-M), those are used.
Otherwise a float goes through ``Decimal(repr(x))``, exact for up to 15 significant digits. Raw samples (Binance)::

    markPriceUpdate  {"e": "markPriceUpdate", "E": 1723161268000, "s": "BTCUSDT", "p": "61828.62", "i": "61826.00",
                      "P": "61826.00", "r": "0.00010000", "T": 1723161600000}
    premiumIndex     {"symbol": "BTCUSDT", "markPrice": "61829.00", "indexPrice": "61828.58",
                      "lastFundingRate": "0.00010000", "nextFundingTime": 1723161600000, "time": 1723161266464}
    openInterest     {"openInterest": "79999.694", "symbol": "BTCUSDT", "time": 1723161267511}
    forceOrder.o     {"s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.084", "p": "61522.83",
                      "ap": "61831.99", "X": "FILLED", "l": "0.084", "z": "0.084", "T": 1723161302127}
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.derivs_messages import FundingRate, Liquidation, OpenInterest


def _num(value: Any) -> Decimal | None:
    """A ccxt number (float, int or numeric string) as a Decimal; None for None."""
    if value is None:
        return None
    return Decimal(value if isinstance(value, str) else repr(value))


def _exact(info: dict[str, Any], key: str, fallback: Any) -> Decimal | None:
    """``info[key]`` (the exchange's string) if present, else ccxt's parsed number; None when neither is."""
    raw = info.get(key)
    return Decimal(raw) if isinstance(raw, str) and raw else _num(fallback)


def _info(raw: dict[str, Any]) -> dict[str, Any]:
    info = raw.get("info")
    return info if isinstance(info, dict) else {}


def funding_from_mark(exchange: str, symbol: str, raw: dict[str, Any]) -> FundingRate | None:
    """A ``watch_mark_price`` ticker → FundingRate (None when it carries no mark price)."""
    info = _info(raw)
    mark = _exact(info, "p", raw.get("markPrice"))
    if mark is None:
        return None
    nxt = info.get("T")
    return FundingRate(exchange=exchange, symbol=symbol, ts=int(raw.get("timestamp") or info.get("E") or 0),
                       mark_price=mark, index_price=_exact(info, "i", raw.get("indexPrice")),
                       funding_rate=_exact(info, "r", None), next_funding_ts=int(nxt) if nxt is not None else None)


def funding_from_rate(exchange: str, symbol: str, raw: dict[str, Any]) -> FundingRate | None:
    """A ``fetch_funding_rate`` structure → FundingRate (None when it carries no mark price)."""
    info = _info(raw)
    mark = _exact(info, "markPrice", raw.get("markPrice"))
    if mark is None:
        return None
    nxt = raw.get("fundingTimestamp") or info.get("nextFundingTime")
    return FundingRate(exchange=exchange, symbol=symbol, ts=int(raw.get("timestamp") or info.get("time") or 0),
                       mark_price=mark, index_price=_exact(info, "indexPrice", raw.get("indexPrice")),
                       funding_rate=_exact(info, "lastFundingRate", raw.get("fundingRate")),
                       next_funding_ts=int(nxt) if nxt is not None else None)


def open_interest_from(exchange: str, symbol: str, raw: dict[str, Any]) -> OpenInterest | None:
    """A ``fetch_open_interest`` structure → OpenInterest (None when it carries no amount)."""
    info = _info(raw)
    amount = _exact(info, "openInterest", raw.get("openInterestAmount"))
    if amount is None:
        return None
    return OpenInterest(exchange=exchange, symbol=symbol, ts=int(raw.get("timestamp") or info.get("time") or 0),
                        amount=amount, value=_num(raw.get("openInterestValue")))


def liquidation_from(exchange: str, symbol: str, raw: dict[str, Any]) -> Liquidation | None:
    """A ``watch_liquidations`` item → Liquidation (None without price, amount or side)."""
    info = _info(raw)
    price = _exact(info, "ap", raw.get("price"))
    amount = _exact(info, "z", raw.get("contracts"))
    side = str(info.get("S") or raw.get("side") or "").lower()
    if price is None or amount is None or side not in ("buy", "sell"):
        return None
    return Liquidation(exchange=exchange, symbol=symbol, ts=int(raw.get("timestamp") or info.get("T") or 0),
                       side=side, price=price, amount=amount, order_price=_exact(info, "p", None))
