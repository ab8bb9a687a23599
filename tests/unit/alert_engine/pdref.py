"""Independent pandas reference for the alert engine tests: candles from a real recording, and vectorised indicators
and conditions written from their textbook definitions (not from the engine's code)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from shared.schemas import Candle


def candles_from_csv(path: Path, exchange: str, symbol: str, timeframe: str, tf_ms: int) -> list[Candle]:
    """Closed candles of a generic ``timestamp,price,amount,side,id`` recording, with exact Decimal sums."""
    df = pd.read_csv(path, dtype={"price": str, "amount": str, "side": str})
    df["price"] = df["price"].map(Decimal)
    df["amount"] = df["amount"].map(Decimal)
    df["bucket"] = df["timestamp"] // tf_ms * tf_ms
    df["buy"] = df["amount"].where(df["side"] == "buy", Decimal(0))
    df["quote"] = df["price"] * df["amount"]
    out = []
    for bucket, g in df.groupby("bucket", sort=True):
        volume = sum(g["amount"], Decimal(0))
        buy = sum(g["buy"], Decimal(0))
        out.append(Candle(exchange=exchange, symbol=symbol, timeframe=timeframe, ts=int(bucket),
                          open=g["price"].iloc[0], high=max(g["price"]), low=min(g["price"]), close=g["price"].iloc[-1],
                          volume=volume, buy_volume=buy, sell_volume=volume - buy,
                          quote_volume=sum(g["quote"], Decimal(0)), trades=len(g)))
    return out


def frame(candles: list[Candle]) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": [c.ts for c in candles],
        **{f: [float(getattr(c, f)) for c in candles] for f in ("open", "high", "low", "close", "volume")},
        "delta_dec": [c.buy_volume - c.sell_volume for c in candles],
        "quote_dec": [c.quote_volume for c in candles],
        "volume_dec": [c.volume for c in candles],
    })


def sma(x: pd.Series, n: int) -> pd.Series:
    return x.rolling(n).mean()


def seeded_ewm(x: pd.Series, n: int, alpha: float) -> pd.Series:
    """Recursive average seeded with the SMA of the first n valid values (TA-Lib / talipp convention)."""
    valid = x.dropna()
    out = pd.Series(np.nan, index=x.index)
    if len(valid) < n:
        return out
    seeded = valid.iloc[n - 1:].copy()
    seeded.iloc[0] = valid.iloc[:n].mean()
    out.loc[seeded.index] = seeded.ewm(alpha=alpha, adjust=False).mean()
    return out


def ema(x: pd.Series, n: int) -> pd.Series:
    return seeded_ewm(x, n, 2 / (n + 1))


def macd(x: pd.Series, fast: int, slow: int, signal: int) -> tuple[pd.Series, pd.Series, pd.Series]:
    line = ema(x, fast) - ema(x, slow)
    sig = ema(line, signal)
    return line, sig, line - sig


def bbands(x: pd.Series, n: int, k: float) -> tuple[pd.Series, pd.Series, pd.Series]:
    mid = x.rolling(n).mean()
    std = x.rolling(n).std(ddof=0)
    return mid + k * std, mid, mid - k * std


def atr(df: pd.DataFrame, n: int) -> pd.Series:
    prev = df["close"].shift(1)
    tr = pd.concat([df["high"] - df["low"], (df["high"] - prev).abs(), (df["low"] - prev).abs()], axis=1).max(axis=1)
    tr.iloc[0] = df["high"].iloc[0] - df["low"].iloc[0]
    return seeded_ewm(tr, n, 1 / n)


def rsi(x: pd.Series, n: int) -> pd.Series:
    """Wilder's RSI, seeded as talipp seeds it: the mean of the first n-1 changes, then Wilder smoothing."""
    change = x.diff()
    out = pd.Series(np.nan, index=x.index)
    if len(x) < n + 1:
        return out
    gains, losses = change.clip(lower=0), (-change).clip(lower=0)

    def wilder(s: pd.Series) -> pd.Series:
        seeded = s.iloc[n - 1:].copy()
        seeded.iloc[0] = s.iloc[1:n].sum() / (n - 1)
        return seeded.ewm(alpha=1 / n, adjust=False).mean()

    g, lo = wilder(gains), wilder(losses)
    rs = g / lo
    res = (100 - 100 / (1 + rs)).where(lo != 0, 100.0)
    out.loc[res.index[1:]] = res.iloc[1:]
    return out


def cross_up(a: pd.Series, b: pd.Series | float) -> pd.Series:
    b = b if isinstance(b, pd.Series) else pd.Series(b, index=a.index)
    return (a.shift(1) <= b.shift(1)) & (a > b)


def cross_down(a: pd.Series, b: pd.Series | float) -> pd.Series:
    b = b if isinstance(b, pd.Series) else pd.Series(b, index=a.index)
    return (a.shift(1) >= b.shift(1)) & (a < b)


# ---- conditions and trigger frequencies, from their textbook meaning ------------------------------------------------


def crossing(a: pd.Series, b: pd.Series | float) -> pd.Series:
    return cross_up(a, b) | cross_down(a, b)


def inside(x: pd.Series, lo: pd.Series | float, hi: pd.Series | float) -> pd.Series:
    """True/False where all three are known, NaN (as None) where one is missing."""
    lo = lo if isinstance(lo, pd.Series) else pd.Series(lo, index=x.index)
    hi = hi if isinstance(hi, pd.Series) else pd.Series(hi, index=x.index)
    known = x.notna() & lo.notna() & hi.notna()
    return ((lo <= x) & (x <= hi)).where(known)


def channel(op: str, x: pd.Series, lo, hi) -> pd.Series:
    now = inside(x, lo, hi)
    before = now.shift(1)
    known = now.notna()
    if op == "inside_channel":
        return (now == True) & known  # noqa: E712 (object dtype with NaN)
    if op == "outside_channel":
        return (now == False) & known  # noqa: E712
    both = known & before.notna()
    if op == "entering_channel":
        return both & (before == False) & (now == True)  # noqa: E712
    return both & (before == True) & (now == False)  # noqa: E712


def reference_at(ts: pd.Series, window_ms: int) -> pd.Series:
    """Index of the last bar that started at or before ``ts - window`` (NaN if none): a time window look-back."""
    left = pd.DataFrame({"t": ts - window_ms, "i": range(len(ts))})
    right = pd.DataFrame({"t": ts, "ref": range(len(ts))})
    merged = pd.merge_asof(left, right, on="t", direction="backward")
    return merged["ref"]


def moving(op: str, x: pd.Series, *, amount: float | None = None, percent: float | None = None,
           bars: int | None = None, ts: pd.Series | None = None, window_ms: int | None = None) -> pd.Series:
    """``x - x[back] >= amount`` (up) / ``x[back] - x >= amount`` (down), or the same change in percent of
    ``x[back]``, where ``back`` is N bars, or the last bar started at least ``window`` before."""
    if window_ms is None:
        ref = x.shift(bars)
    else:
        idx = reference_at(ts, window_ms)
        ref = pd.Series([x.iloc[int(i)] if pd.notna(i) else np.nan for i in idx], index=x.index)
    change = x - ref if op.startswith("moving_up") else ref - x
    if op.endswith("_pct"):
        return (change / ref * 100 >= percent) & ref.notna()
    return (change >= amount) & ref.notna()


def volume_spike(volume: pd.Series, factor: float, period: int) -> pd.Series:
    return volume > factor * volume.shift(1).rolling(period).mean()


def as_of(close_ts: pd.Series, other_close_ts: pd.Series, other_values: pd.Series) -> pd.Series:
    """For each close time, the value of another series' last bar closed at or before it (no look-ahead)."""
    left = pd.DataFrame({"t": close_ts.to_numpy(), "i": range(len(close_ts))})
    right = pd.DataFrame({"t": other_close_ts.to_numpy(), "v": other_values.to_numpy()})
    merged = pd.merge_asof(left, right, on="t", direction="backward")
    return pd.Series(merged["v"].to_numpy(), index=close_ts.index)


def fires(cond: pd.Series, ts: pd.Series, close_ts: pd.Series, *, frequency: str, cooldown_ms: int = 0,
          for_ms: int = 0, notify_on_resolve: bool = False) -> set[tuple[int, str]]:
    """The alerts (bar ts, state) a rule sends on closed bars, from the rule's meaning:

    firing while the condition has held since a bar whose close is at least ``for`` ago; each firing bar alerts
    (``once``: only the first ever; a ``cooldown`` skips bars closing before the last alert's close + cooldown);
    the first false bar after a firing run sends ``resolved`` when asked — if that run sent a firing alert (a run
    whose every firing bar the cooldown skipped has nothing to resolve)."""
    out: set[tuple[int, str]] = set()
    since = None
    firing = sent = False
    last_fire = None
    fired_ever = False
    for ok, t, close in zip(cond.fillna(False).astype(bool), ts, close_ts, strict=True):
        if not ok:
            if firing and notify_on_resolve and sent:
                out.add((int(t), "resolved"))
            since, firing, sent = None, False, False
            continue
        since = close if since is None else since
        if close - since < for_ms:
            continue
        firing = True
        if frequency == "once":
            if not fired_ever:
                out.add((int(t), "firing"))
                fired_ever = sent = True
            continue
        if cooldown_ms and last_fire is not None and close < last_fire + cooldown_ms:
            continue
        out.add((int(t), "firing"))
        last_fire, sent = close, True
    return out
