"""The engine's indicators and conditions on candles of a real recording equal an independent pandas evaluation."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from services.alert_engine.core import AlertEngine, CandleWindow
from shared import rules as r
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"


@pytest.fixture(scope="module")
def candles():
    return pdref.candles_from_csv(shared_data(BTC), "binance", "BTC/USDT", "1s", 1000)


@pytest.fixture(scope="module")
def df(candles):
    return pdref.frame(candles)


def _engine_series(candles, specs):
    s = CandleWindow(("binance", "BTC/USDT", "1s"), keep=5000)
    for spec in specs:
        s.indicator(spec)
    values = {spec: [] for spec in specs}
    for c in candles:
        s.push(c, None)
        for spec in specs:
            values[spec].append(s.value(spec))
    return {spec: pd.Series([np.nan if v is None else float(v) for v in vs]) for spec, vs in values.items()}


def _close_enough(ours: pd.Series, ref: pd.Series) -> None:
    assert ours.isna().equals(ref.isna()), "warm-up lengths differ"
    a, b = ours.dropna().to_numpy(), ref.dropna().to_numpy()
    assert len(a) > 100
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
    both_zero = (a == 0) & (b == 0)
    assert np.all(both_zero | (rel <= 1e-9) | (np.abs(a - b) <= 1e-9 * np.abs(b).max())), rel.max()


def test_indicators_match_pandas(candles, df):
    x = df["close"]
    up, mid, lo = pdref.bbands(x, 20, 2.0)
    line, sig, hist = pdref.macd(x, 12, 26, 9)
    cases = {
        r.SMA(period=20): pdref.sma(x, 20),
        r.EMA(period=9): pdref.ema(x, 9),
        r.EMA(period=21, source="hl2"): pdref.ema((df["high"] + df["low"]) / 2, 21),
        r.RSI(period=14): pdref.rsi(x, 14),
        r.MACD(): line, r.MACD(output="signal"): sig, r.MACD(output="histogram"): hist,
        r.BBands(output="upper"): up, r.BBands(): mid, r.BBands(output="lower"): lo,
        r.ATR(period=14): pdref.atr(df, 14),
        r.VolumeSMA(period=20): pdref.sma(df["volume"], 20),
    }
    ours = _engine_series(candles, list(cases))
    for spec, ref in cases.items():
        _close_enough(ours[spec], ref)


def test_cvd_and_vwap_are_exact(candles, df):
    specs = [r.CVD(bars=30), r.CVD(anchor="1h"), r.VWAP(anchor="1h")]
    s = CandleWindow(("binance", "BTC/USDT", "1s"), keep=5000)
    got = {spec: [] for spec in specs}
    for c in candles:
        s.push(c, None)
        for spec in specs:
            got[spec].append(s.value(spec))
    # Independent: exact Decimal cumulative sums per hour session / over a 30-bar window (pure Python over the frame).
    session = df["ts"] // 3_600_000
    deltas, quotes, vols = list(df["delta_dec"]), list(df["quote_dec"]), list(df["volume_dec"])
    for i in range(len(df)):
        same = [j for j in range(i + 1) if session[j] == session[i]]
        assert got[specs[1]][i] == sum((deltas[j] for j in same), Decimal(0))
        assert got[specs[2]][i] == sum((quotes[j] for j in same), Decimal(0)) / sum((vols[j] for j in same), Decimal(0))
        assert got[specs[0]][i] == (sum(deltas[i - 29:i + 1], Decimal(0)) if i >= 29 else None)


RULES = """
rules:
  - {name: above, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time, condition: {op: above, right: LEVEL}}
  - {name: below, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time, condition: {op: below, right: LEVEL}}
  - {name: x_up, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time, condition: {op: crosses_up, right: LEVEL}}
  - {name: x_down, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: crosses_down, right: LEVEL}}
  - {name: x_any, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time, condition: {op: crossing, right: LEVEL}}
  - {name: ema_x, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {left: {ema: 9}, op: crosses_up, right: {ema: 21}}}
  - {name: rsi_hi, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {left: {rsi: 14}, op: greater_than, right: 70}}
  - {name: enter_bb, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: entering_channel, lower: {bbands: {output: lower}}, upper: {bbands: {output: upper}}}}
  - {name: exit_bb, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: exiting_channel, lower: {bbands: {output: lower}}, upper: {bbands: {output: upper}}}}
  - {name: outside_bb, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: outside_channel, lower: {bbands: {output: lower}}, upper: {bbands: {output: upper}}}}
  - {name: up_amt, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: moving_up, amount: 15, bars: 5}}
  - {name: down_pct, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: moving_down_pct, percent: 0.03, bars: 10}}
  - {name: spike, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: volume_spike, factor: 4, period: 20}}
  - {name: both, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {all: [{op: above, right: LEVEL}, {left: {macd: histogram}, op: greater_than, right: 0}]}}
  - {name: either, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {any: [{op: crosses_up, right: LEVEL}, {op: crosses_down, right: LEVEL}]}}
  - {name: once, symbols: [BTC/USDT], timeframe: 1s, frequency: once, condition: {op: above, right: LEVEL}}
  - {name: held, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time, for: 5s,
     condition: {op: above, right: LEVEL}}
"""


def test_alerts_equal_vectorised_pandas(candles, df):
    level = Decimal(str(df["close"].median()))
    ruleset = r.parse_rules(RULES.replace("LEVEL", str(level)), "test.yaml")
    engine = AlertEngine(ruleset, keep=5000)
    fired: dict[str, set[int]] = {rule.name: set() for rule in ruleset.rules}
    once_seen: set[str] = set()
    for c in candles:
        for f in engine.on_candle(c):
            if f.cooldown_ms == -1:  # the app's gate lets `once` through a single time
                if f.alert.rule in once_seen:
                    continue
                once_seen.add(f.alert.rule)
            fired[f.alert.rule].add(f.alert.ts)

    x, lv = df["close"], float(level)
    up, _, lo = pdref.bbands(x, 20, 2.0)
    inside = (lo <= x) & (x <= up)
    valid = up.notna()
    _, _, hist = pdref.macd(x, 12, 26, 9)
    above = x > lv
    run_start = (above != above.shift(1)).cumsum()
    held_since = df["ts"].groupby(run_start).transform("first")
    expected = {
        "above": above, "below": x < lv, "x_up": pdref.cross_up(x, lv), "x_down": pdref.cross_down(x, lv),
        "x_any": pdref.cross_up(x, lv) | pdref.cross_down(x, lv),
        "ema_x": pdref.cross_up(pdref.ema(x, 9), pdref.ema(x, 21)),
        "rsi_hi": pdref.rsi(x, 14) > 70,
        "enter_bb": valid & valid.shift(1, fill_value=False) & inside & ~inside.shift(1, fill_value=True),
        "exit_bb": valid & valid.shift(1, fill_value=False) & ~inside & inside.shift(1, fill_value=False),
        "outside_bb": valid & ~inside,
        "up_amt": (x - x.shift(5)) >= 15,
        "down_pct": (x.shift(10) - x) / x.shift(10) * 100 >= 0.03,
        "spike": df["volume"] > 4 * df["volume"].rolling(20).mean().shift(1),
        "both": above & (hist > 0),
        "either": pdref.cross_up(x, lv) | pdref.cross_down(x, lv),
        "once": above & (above.cumsum() == 1),
        "held": above & (df["ts"] - held_since >= 5000),
    }
    for name, mask in expected.items():
        want = set(df["ts"][mask.fillna(False).astype(bool)])
        assert fired[name] == want, (name, sorted(fired[name] ^ want)[:5])
    assert all(fired[n] for n in expected if n != "once") and len(fired["once"]) == 1
