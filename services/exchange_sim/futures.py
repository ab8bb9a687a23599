"""Pure state of the local exchange's USD-M perpetuals: mark/index price, funding, open interest, liquidations.

One perpetual per spot symbol (``BTC/USDT`` → ccxt's ``BTC/USDT:USDT``, market id ``BTCUSDT``), driven by the spot
trades the simulator releases, seeded and deterministic (no recording of these exists in ../shared/data):

- index price = the last spot trade price;
- premium: a seeded mean-reverting walk (a few bps); mark price = index × (1 + premium), on the tick grid;
- funding rate = clamp(premium + clamp(0.01 % - premium, ±0.05 %), ±0.75 %) (Binance's formula on the current
  premium instead of its 8-hour average), next funding time at the next 00:00 / 08:00 / 16:00 UTC;
- open interest: starts at ``oi_start`` contracts and moves with each trade by ±its amount (seeded);
- liquidations: each trade has probability ``liquidation_rate`` of being followed by a forced order on the same side
  (a liquidation is a taker order), 1-5× its amount, filled at the trade price, limit 0.5 % beyond.

Payloads are Binance's: ``markPriceUpdate`` (``<sym>@markPrice@1s``), ``forceOrder`` (``<sym>@forceOrder``),
``GET /fapi/v1/premiumIndex``, ``GET /fapi/v1/openInterest``, ``GET /fapi/v1/exchangeInfo``. No asyncio, no clock.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from shared.schemas import Trade

FUNDING_INTERVAL_MS = 8 * 3_600_000
INTEREST = Decimal("0.0001")
_CLAMP_INNER = Decimal("0.0005")
_CLAMP_OUTER = Decimal("0.0075")


def _clamp(x: Decimal, bound: Decimal) -> Decimal:
    return max(-bound, min(bound, x))


def funding_rate(premium: Decimal) -> Decimal:
    """Binance's funding formula on one premium value: ``P + clamp(I - P, ±0.05 %)``, clamped to ±0.75 %, to 8
    decimals as Binance writes it."""
    rate = _clamp(premium + _clamp(INTEREST - premium, _CLAMP_INNER), _CLAMP_OUTER)
    return rate.quantize(Decimal("0.00000001"), ROUND_HALF_EVEN)


def next_funding_ms(ts: int) -> int:
    return ts - ts % FUNDING_INTERVAL_MS + FUNDING_INTERVAL_MS


class Perpetual:
    """One USD-M perpetual at the exchange."""

    def __init__(self, mid: str, tick: Decimal, lot: Decimal, seed: int, oi_start: Decimal = Decimal(80_000),
                 liquidation_rate: float = 0.002) -> None:
        self.mid, self.tick, self.lot = mid, tick, lot
        self.rng = random.Random(f"{seed}:{mid}:perp")
        self.liquidation_rate = liquidation_rate
        self.index: Decimal | None = None
        self.premium = Decimal(0)
        self.open_interest = oi_start
        self.ts = 0
        self.liquidations = 0

    @property
    def mark(self) -> Decimal | None:
        if self.index is None:
            return None
        return (self.index * (1 + self.premium) / self.tick).to_integral_value(ROUND_HALF_EVEN) * self.tick

    def on_trade(self, trade: Trade) -> dict[str, Any] | None:
        """Move the state with one spot trade; returns a ``forceOrder`` payload when a liquidation follows it."""
        self.index, self.ts = trade.price, trade.ts
        step = Decimal(self.rng.randint(-2, 2)) / 100_000  # premium walk, ±0.2 bps a trade
        self.premium = _clamp(self.premium * Decimal("0.98") + step, Decimal("0.003"))
        self.open_interest = max(self.lot, self.open_interest + trade.amount * self.rng.choice((-1, 1)))
        if self.rng.random() >= self.liquidation_rate:
            return None
        self.liquidations += 1
        qty = trade.amount * self.rng.randint(1, 5)
        side = "BUY" if trade.is_buy else "SELL"
        limit = trade.price * (Decimal("1.005") if trade.is_buy else Decimal("0.995"))
        limit = (limit / self.tick).to_integral_value(ROUND_HALF_EVEN) * self.tick
        return {"e": "forceOrder", "E": trade.ts + 1,
                "o": {"s": self.mid, "S": side, "o": "LIMIT", "f": "IOC", "q": str(qty), "p": str(limit),
                      "ap": str(trade.price), "X": "FILLED", "l": str(qty), "z": str(qty), "T": trade.ts}}

    def mark_price_event(self, event_ms: int) -> dict[str, Any] | None:
        """``markPriceUpdate``: ``{"e", "E", "s", "p": mark, "i": index, "P": est. settle, "r": funding rate,
        "T": next funding time}``."""
        mark = self.mark
        if mark is None:
            return None
        return {"e": "markPriceUpdate", "E": event_ms, "s": self.mid, "p": str(mark), "i": str(self.index),
                "P": str(self.index), "r": str(funding_rate(self.premium)), "T": next_funding_ms(event_ms)}

    def premium_index(self, now_ms: int) -> dict[str, Any]:
        """``GET /fapi/v1/premiumIndex?symbol=``."""
        mark = self.mark
        return {"symbol": self.mid, "markPrice": str(mark) if mark is not None else "0",
                "indexPrice": str(self.index) if self.index is not None else "0",
                "estimatedSettlePrice": str(self.index) if self.index is not None else "0",
                "lastFundingRate": str(funding_rate(self.premium)), "interestRate": str(INTEREST),
                "nextFundingTime": next_funding_ms(now_ms), "time": now_ms}

    def open_interest_row(self, now_ms: int) -> dict[str, Any]:
        """``GET /fapi/v1/openInterest?symbol=``."""
        return {"openInterest": str(self.open_interest), "symbol": self.mid, "time": now_ms}


def futures_exchange_info(perps: dict[str, Perpetual], symbols: dict[str, str], server_ms: int) -> dict[str, Any]:
    """``GET /fapi/v1/exchangeInfo`` listing one PERPETUAL per spot symbol (``symbols``: market id → ``BASE/QUOTE``)."""
    rows = []
    for mid, perp in perps.items():
        base, quote = symbols[mid].split("/")
        rows.append({
            "symbol": mid, "pair": mid, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000", "baseAsset": base, "quoteAsset": quote, "marginAsset": quote,
            "pricePrecision": max(0, -perp.tick.as_tuple().exponent),  # type: ignore[operator]
            "quantityPrecision": max(0, -perp.lot.as_tuple().exponent),  # type: ignore[operator]
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
            "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": str(perp.tick), "maxPrice": "1000000",
                 "tickSize": str(perp.tick)},
                {"filterType": "LOT_SIZE", "stepSize": str(perp.lot), "maxQty": "1000", "minQty": str(perp.lot)},
                {"filterType": "MARKET_LOT_SIZE", "stepSize": str(perp.lot), "maxQty": "120",
                 "minQty": str(perp.lot)},
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
            ],
            "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
        })
    return {"timezone": "UTC", "serverTime": server_ms, "futuresType": "U_MARGINED", "rateLimits": [],
            "exchangeFilters": [], "assets": [], "symbols": rows}
