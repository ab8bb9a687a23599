"""A seeded, deterministic simulated market: realistic-looking trades for a few symbols, offline.

Each symbol's price is an integer number of ticks driven by a regime-switching process:

- regimes (calm / active / burst) change the trade rate and the size of moves — bursts of activity;
- a drift (trend up, trend down, flat) that switches every few minutes — trends;
- rare jumps of 0.8–2 % that play out over a few seconds — sharp moves;
- the taker side leans with the drift (and strongly during a jump) — buy/sell imbalance.

Prices are exact ``Decimal`` on the symbol's tick grid, amounts on its lot grid, timestamps in ms from ``start_ms``.
The same seed gives the same trades, byte for byte (``random.Random`` only, no clock, no global state).
Per-symbol trade ids run 1, 2, 3, ... (unique and increasing, like an exchange's).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from shared.schemas import Ticker, Trade


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    price: Decimal  # starting price
    tick: Decimal  # price grid
    lot: Decimal  # amount grid
    typical_amount: float  # median trade size (base units)
    trades_per_s: float  # mean rate in the calm regime


#: Defaults for common symbols; anything else gets a generic spec derived from SymbolSpec("…", 100, ...).
KNOWN = {
    "BTC/USDT": SymbolSpec("BTC/USDT", Decimal("60000.00"), Decimal("0.01"), Decimal("0.00001"), 0.01, 8.0),
    "ETH/USDT": SymbolSpec("ETH/USDT", Decimal("3000.00"), Decimal("0.01"), Decimal("0.0001"), 0.2, 5.0),
    "SOL/USDT": SymbolSpec("SOL/USDT", Decimal("150.00"), Decimal("0.01"), Decimal("0.001"), 3.0, 4.0),
    "BTC/USD": SymbolSpec("BTC/USD", Decimal("60000.0"), Decimal("0.1"), Decimal("0.00000001"), 0.01, 5.0),
    "ETH/USD": SymbolSpec("ETH/USD", Decimal("3000.00"), Decimal("0.01"), Decimal("0.00000001"), 0.2, 4.0),
    "XRP/USDT": SymbolSpec("XRP/USDT", Decimal("0.5000"), Decimal("0.0001"), Decimal("1"), 500.0, 3.0),
}


def spec_for(symbol: str) -> SymbolSpec:
    return KNOWN.get(symbol) or SymbolSpec(symbol, Decimal("100.00"), Decimal("0.01"), Decimal("0.001"), 1.0, 3.0)


_REGIMES = {  # name: (rate multiplier, volatility multiplier, mean duration s)
    "calm": (0.6, 0.6, 90.0),
    "active": (1.5, 1.2, 60.0),
    "burst": (6.0, 2.5, 15.0),
}
_REGIME_NEXT = {"calm": ("active", "burst"), "active": ("calm", "burst"), "burst": ("active", "calm")}
_BASE_VOL_PER_S = 0.00025  # relative price stdev per sqrt(second) at vol multiplier 1 (~0.19 %/min)


class _SymbolWalk:
    """The trade process of one symbol; ``next()`` returns its next trade."""

    def __init__(self, spec: SymbolSpec, rng: random.Random, start_ms: int) -> None:
        self.spec = spec
        self.rng = rng
        self.ts_f = float(start_ms)
        self.ticks = int(spec.price / spec.tick)
        self.tick_f = float(spec.tick)
        self.lot_f = float(spec.lot)
        self.next_id = 1
        self.regime = "calm"
        self.regime_until = self.ts_f + rng.expovariate(1 / _REGIMES["calm"][2]) * 1000
        self.drift = 0.0  # relative drift per second
        self.drift_until = self.ts_f
        self.jump_left = 0.0  # relative move still to play out
        self.jump_until = self.ts_f
        self.last_ts = start_ms

    def _update_regimes(self) -> None:
        rng = self.rng
        if self.ts_f >= self.regime_until:
            self.regime = rng.choice(_REGIME_NEXT[self.regime])
            self.regime_until = self.ts_f + rng.expovariate(1 / _REGIMES[self.regime][2]) * 1000
        if self.ts_f >= self.drift_until:
            # a trend of ±0.3–1.5 % over 1–5 minutes, or flat
            kind = rng.random()
            minutes = rng.uniform(1.0, 5.0)
            if kind < 0.35:
                self.drift = rng.uniform(0.003, 0.015) / (minutes * 60)
            elif kind < 0.7:
                self.drift = -rng.uniform(0.003, 0.015) / (minutes * 60)
            else:
                self.drift = 0.0
            self.drift_until = self.ts_f + minutes * 60_000
        if self.jump_left == 0.0 and rng.random() < 0.0004:  # per trade: a sharp move every few minutes
            self.jump_left = rng.choice((-1, 1)) * rng.uniform(0.008, 0.02)
            self.jump_until = self.ts_f + rng.uniform(2_000, 10_000)

    def next(self) -> Trade:
        rng = self.rng
        self._update_regimes()
        rate_mult, vol_mult, _ = _REGIMES[self.regime]
        in_jump = self.jump_left != 0.0
        rate = self.spec.trades_per_s * rate_mult * (4.0 if in_jump else 1.0)
        dt_s = rng.expovariate(rate)
        # several trades often share a millisecond (one taker order sweeping makers)
        if rng.random() < 0.25:
            dt_s = 0.0
        self.ts_f += dt_s * 1000
        ts = max(self.last_ts, int(self.ts_f))
        self.last_ts = ts

        move = self.drift * dt_s + rng.gauss(0.0, _BASE_VOL_PER_S * vol_mult * math.sqrt(max(dt_s, 0.001)))
        if in_jump:
            share = self.jump_left * min(1.0, 0.15 + rng.random() * 0.2)
            if abs(self.jump_left - share) < 0.0005 or self.ts_f >= self.jump_until:
                share = self.jump_left
            move += share
            self.jump_left = 0.0 if share == self.jump_left else self.jump_left - share
        price_f = self.ticks * self.tick_f * (1.0 + move)
        self.ticks = max(1, round(price_f / self.tick_f))

        # taker side leans with the direction of the move and of the trend
        lean = 0.5 + max(-0.35, min(0.35, move * 400 + self.drift * 60 * 100))
        if in_jump:
            lean = 0.9 if move > 0 else 0.1
        is_buy = rng.random() < lean

        size = self.spec.typical_amount * math.exp(rng.gauss(0.0, 1.1)) * (1.8 if in_jump else 1.0)
        lots = max(1, round(size / self.lot_f))
        trade = Trade(self.next_id, ts, self.ticks * self.spec.tick, lots * self.spec.lot, is_buy)
        self.next_id += 1
        return trade


class SimulatedMarket:
    """Deterministic trades for several symbols, merged in exchange-time order.

    ``trades()`` yields ``(symbol, Trade)``; with ``duration_s`` it stops at ``start_ms + duration_s*1000``.
    ``spec(symbol)`` gives its tick and lot grid; ``quote(...)`` builds a top of book around a price.
    """

    def __init__(self, symbols: list[str] | tuple[str, ...], *, seed: int = 42, start_ms: int = 1_704_067_200_000,
                 duration_s: float | None = None, specs: dict[str, SymbolSpec] | None = None) -> None:
        if not symbols:
            raise ValueError("SimulatedMarket needs at least one symbol")
        self.symbols = list(symbols)
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = None if duration_s is None else start_ms + int(duration_s * 1000)
        specs = specs or {}
        # one independent generator per symbol, derived from the seed, so adding a symbol does not change the others
        self._walks = {s: _SymbolWalk(specs.get(s) or spec_for(s), random.Random(f"{seed}:{s}"), start_ms)
                       for s in self.symbols}

    def _stream(self, symbol: str) -> Iterator[tuple[int, int, str, Trade]]:
        walk = self._walks[symbol]
        order = self.symbols.index(symbol)
        while True:
            trade = walk.next()
            if self.end_ms is not None and trade.ts >= self.end_ms:
                return
            yield trade.ts, order, symbol, trade

    def trades(self) -> Iterator[tuple[str, Trade]]:
        for _, _, symbol, trade in heapq.merge(*(self._stream(s) for s in self.symbols)):
            yield symbol, trade

    def spec(self, symbol: str) -> SymbolSpec:
        return self._walks[symbol].spec


def quote(spec: SymbolSpec, exchange: str, ts: int, last: Decimal, half_spread_ticks: int = 1) -> Ticker:
    """Top of book around the last traded price, as the simulated book would show it at ``ts``."""
    size = max(1, round(spec.typical_amount * 5 / float(spec.lot))) * spec.lot
    return Ticker(exchange=exchange, symbol=spec.symbol, ts=ts, bid=last - half_spread_ticks * spec.tick,
                  ask=last + half_spread_ticks * spec.tick, bid_size=size, ask_size=size, last=last)
