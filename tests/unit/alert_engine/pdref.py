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
