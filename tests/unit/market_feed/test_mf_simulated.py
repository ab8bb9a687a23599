"""The simulated market: deterministic for a seed, exact grids, and enough movement for price rules to fire."""

from __future__ import annotations

import pandas as pd

from shared.simulated import SimulatedMarket, spec_for


def _frame(seed: int, duration_s: float = 900) -> pd.DataFrame:
    m = SimulatedMarket(["BTC/USDT", "ETH/USDT"], seed=seed, start_ms=1_700_000_000_000, duration_s=duration_s)
    return pd.DataFrame([(s, t.id, t.ts, t.price, t.amount, t.is_buy) for s, t in m.trades()],
                        columns=["symbol", "id", "ts", "price", "amount", "is_buy"])


def test_same_seed_same_trades_other_seed_other_trades():
    a, b, c = _frame(7, 300), _frame(7, 300), _frame(8, 300)
    assert a.equals(b)
    assert not a.equals(c)


def test_grids_ids_and_time_order():
    df = _frame(1)
    assert df["ts"].is_monotonic_increasing
    assert df["ts"].min() >= 1_700_000_000_000 and df["ts"].max() < 1_700_000_000_000 + 900_000
    for symbol, g in df.groupby("symbol"):
        spec = spec_for(symbol)
        assert list(g["id"]) == list(range(1, len(g) + 1))
        assert all(p % spec.tick == 0 and p > 0 for p in g["price"])
        assert all(a % spec.lot == 0 and a > 0 for a in g["amount"])


def test_movement_bursts_and_imbalance():
    df = _frame(42, 1800)
    for _symbol, g in df.groupby("symbol"):
        minute = (g["ts"] - 1_700_000_000_000) // 60_000
        closes = g.groupby(minute)["price"].last().astype(float)
        counts = g.groupby(minute).size()
        # a price level ±0.5 % from the start is crossed within the first minutes
        first = float(g["price"].iloc[0])
        crossed = closes[(closes > first * 1.005) | (closes < first * 0.995)]
        assert len(crossed) and crossed.index[0] <= 5
        # activity varies: the busiest minute has far more trades than the quietest
        assert counts.max() >= 3 * counts.min()
        # buy/sell imbalance: some minute is at least 65 % one-sided
        share = g.groupby(minute)["is_buy"].mean()
        assert (share >= 0.65).any() or (share <= 0.35).any()
        # a sharp move: some 1-minute return beyond 0.8 %
        assert (closes.pct_change().abs() > 0.008).any()
