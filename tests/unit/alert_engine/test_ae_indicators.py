"""The indicators behind the rules (TA-Lib streams, exact Decimal sums) on a real recording, on the paths the engine
takes besides a closed bar: an in-progress bar on top (TA-Lib's ``peek``), a revised last bar (a rebuild), an
indicator made late (warmed up from the kept candles). Each is held to the independent pandas reference (``pdref``)
of the series as it then is. And the exact comparison of a Decimal with a float that conditions make."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.alert_engine.core import CandleWindow
from services.alert_engine.core.conditions import order
from shared import rules as r
from shared.errors import ConfigError
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
KEY = ("binance", "BTC/USDT", "1s")
N = 160  # bars of the recording used (each in-progress step re-reads pandas over the bars so far)


@pytest.fixture(scope="module")
def candles():
    return pdref.candles_from_csv(shared_data(BTC), *KEY, 1000)[:N]


def _reference(frame: pd.DataFrame) -> dict:
    """pandas, from the textbook definitions: spec -> values per bar (NaN while warming up)."""
    x = frame["close"]
    up, mid, lo = pdref.bbands(x, 20, 2.0)
    line, sig, hist = pdref.macd(x, 12, 26, 9)
    return {
        r.SMA(period=20): pdref.sma(x, 20), r.EMA(period=9): pdref.ema(x, 9),
        r.EMA(period=21, source="hl2"): pdref.ema((frame["high"] + frame["low"]) / 2, 21),
        r.RSI(period=14): pdref.rsi(x, 14), r.MACD(): line, r.MACD(output="signal"): sig,
        r.MACD(output="histogram"): hist, r.BBands(output="upper"): up, r.BBands(): mid, r.BBands(output="lower"): lo,
        r.ATR(period=14): pdref.atr(frame, 14), r.VolumeSMA(period=20): pdref.sma(frame["volume"], 20),
    }


def _same(ours: object, ref: float) -> bool:
    if ours is None or (isinstance(ref, float) and np.isnan(ref)):
        return ours is None and bool(np.isnan(ref))
    return abs(float(ours) - ref) <= 1e-9 * max(abs(ref), 1.0)  # type: ignore[arg-type]


def test_an_in_progress_bar_reads_as_pandas_on_the_series_with_it_and_leaves_no_trace(candles):
    specs = list(_reference(pdref.frame(candles[:2])))
    window = CandleWindow(KEY, keep=1000)
    for spec in specs:
        window.indicator(spec)
    checked = 0
    for i, c in enumerate(candles):
        if i >= 40:  # the in-progress bar i on the closed bars 0..i-1
            live = c.model_copy(update={"closed": False})
            assert window.push_provisional(live, None)
            ref = _reference(pdref.frame(candles[:i + 1]))
            for spec in specs:
                assert _same(window.value(spec), ref[spec].iloc[-1]), (spec, i, "offset 0")
                assert _same(window.value(spec, 1), ref[spec].iloc[-2]), (spec, i, "offset 1")
            window.pop_provisional()
            checked += 1
        window.push(c, None)
        ref = _reference(pdref.frame(candles[:i + 1]))
        for spec in specs:  # the closed bar after the in-progress one came and went: as if it never had
            assert _same(window.value(spec), ref[spec].iloc[-1]), (spec, i, "closed")
    assert checked > 100 and all(window.value(spec) is not None for spec in specs)


def test_a_revised_last_bar_and_a_late_indicator_read_as_pandas(candles):
    specs = list(_reference(pdref.frame(candles[:2])))
    window = CandleWindow(KEY, keep=1000)
    for spec in specs[:4]:  # the others are made late, from the kept candles
        window.indicator(spec)
    for c in candles[:-1]:
        window.push(c, None)
    last = candles[-1]
    window.push(last, None)
    revised = last.model_copy(update={"revision": 1, "close": last.close + 7, "high": max(last.high, last.close + 7)})
    assert window.push(revised, None)
    ref = _reference(pdref.frame([*candles[:-1], revised]))
    for spec in specs:
        for offset in (0, 1, 30):
            assert _same(window.value(spec, offset), ref[spec].iloc[-1 - offset]), (spec, offset)
    assert not window.push(last, None)  # an older revision of the bar is not taken


def test_cvd_and_vwap_in_progress_are_the_exact_sums_with_the_bar(candles):
    specs = [r.CVD(bars=30), r.CVD(anchor="1h"), r.VWAP(anchor="1h")]
    window = CandleWindow(KEY, keep=1000)
    for c in candles[:-1]:
        window.push(c, None)
    window.push_provisional(candles[-1].model_copy(update={"closed": False}), None)
    deltas = [c.buy_volume - c.sell_volume for c in candles]
    hour = candles[-1].ts // 3_600_000
    session = [c for c in candles if c.ts // 3_600_000 == hour]
    assert window.value(specs[0]) == sum(deltas[-30:], Decimal(0))
    assert window.value(specs[1]) == sum((c.buy_volume - c.sell_volume for c in session), Decimal(0))
    assert window.value(specs[2]) == (sum((c.quote_volume for c in session), Decimal(0))
                                      / sum((c.volume for c in session), Decimal(0)))
    window.pop_provisional()
    assert window.value(specs[0]) == sum(deltas[-31:-1], Decimal(0))


@given(st.decimals(min_value=-10**6, max_value=10**6, places=8, allow_nan=False),
       st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.booleans())
def test_a_decimal_and_a_float_compare_exactly(d, f, tie):
    x = float(d) if tie else f  # ties: the float nearest to the decimal, often equal to it only as floats
    exact = Decimal(x)
    want = 1 if d > exact else -1 if d < exact else 0
    assert order(d, x) == want and order(x, d) == -want


def test_rsi_needs_a_period_of_at_least_two():
    with pytest.raises(ConfigError, match=r"period"):
        r.parse_rules("rules:\n  - {name: a, symbols: [BTC/USDT], condition: {left: {rsi: 1}, op: above, right: 5}}",
                      "t.yaml")
