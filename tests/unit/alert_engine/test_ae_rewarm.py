"""Backfilled history reaching a running engine: candles older than a series' last bar are merged into its kept
history (ts order, highest revision wins), its indicators rebuilt from scratch, nothing evaluated for the historical
bars and no state of bars already evaluated changed. Compared with an independent pandas evaluation (``pdref``) of
the same real recording."""

from __future__ import annotations

import copy
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from services.alert_engine.core import AlertEngine
from shared import rules as r
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
KEY = ("binance", "BTC/USDT", "1s")
SPLIT = 320  # the engine met the series at bar 320; bars 0..319 are backfilled later


@pytest.fixture(scope="module")
def candles():
    return pdref.candles_from_csv(shared_data(BTC), *KEY, 1000)


@pytest.fixture(scope="module")
def df(candles):
    return pdref.frame(candles)


def _close(ours: list, ref: pd.Series) -> None:
    a = pd.Series([np.nan if v is None else float(v) for v in ours])
    b = ref.reset_index(drop=True)
    assert a.isna().equals(b.isna()), "warm-up lengths differ"
    a, b = a.dropna().to_numpy(), b.dropna().to_numpy()
    assert len(a) > 50
    assert np.all(np.abs(a - b) <= 1e-9 * np.maximum(np.abs(b), 1e-300)), np.max(np.abs(a - b) / np.abs(b))


def _fires(fires) -> set[tuple[str, int]]:
    return {(f.alert.rule, f.alert.ts) for f in fires}


RULES = """
rules:
  - {name: sma300, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: crossing, right: {sma: 300}}}
  - {name: ema_x, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {left: {ema: 9}, op: crosses_up, right: {ema: 21}}}
  - {name: rsi, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {left: {rsi: 14}, op: above, right: 60}}
  - {name: bb, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: exiting_channel, lower: {bbands: {period: 50, output: lower}},
                 upper: {bbands: {period: 50, output: upper}}}}
"""


def _expected(df: pd.DataFrame) -> dict[str, pd.Series]:
    x = df["close"]
    up, _, lo = pdref.bbands(x, 50, 2.0)
    return {
        "sma300": pdref.crossing(x, pdref.sma(x, 300)),
        "ema_x": pdref.cross_up(pdref.ema(x, 9), pdref.ema(x, 21)),
        "rsi": pdref.rsi(x, 14) > 60,
        "bb": pdref.channel("exiting_channel", x, lo, up),
    }


@pytest.mark.parametrize("how", ["one_batch", "one_by_one", "shuffled_with_revisions"])
def test_older_candles_merge_and_rebuild_indicators_equal_to_pandas(candles, df, how):
    engine = AlertEngine(r.parse_rules(RULES, "t.yaml"), keep=2000)
    early: set[tuple[str, int]] = set()
    for c in candles[SPLIT:SPLIT + 60]:
        early |= _fires(engine.on_candle(c))
    series = engine.windows[KEY]
    assert series.value(r.SMA(period=300)) is None  # 60 bars: SMA(300) cannot be known yet
    status_before = copy.deepcopy(engine.status)

    backfill = list(candles[:SPLIT])
    if how == "one_batch":
        assert engine.on_batch(backfill) == []
    elif how == "one_by_one":
        assert [f for c in backfill for f in engine.on_candle(c)] == []
    else:  # newest first, each bucket twice: a stale revision 0 with a wrong close, and revision 1 (the right one)
        wrong = [c.model_copy(update={"close": c.close + 1000}) for c in backfill]
        right = [c.model_copy(update={"revision": 1}) for c in backfill]
        mixed = [x for pair in zip(reversed(right), reversed(wrong), strict=True) for x in pair]
        assert engine.on_batch(mixed[: len(mixed) // 2]) == [] and engine.on_batch(mixed[len(mixed) // 2:]) == []
    assert engine.stale
    merged = engine.rewarm()
    assert merged == [KEY] and not engine.stale
    assert engine.status == status_before, "merging history changed the state of bars already evaluated"

    # the kept history is the whole recording up to the engine's last bar, in ts order, one candle per bucket
    assert [c.ts for c in series.candles] == [c.ts for c in candles[:SPLIT + 60]]
    assert [c.close for c in series.candles] == [c.close for c in candles[:SPLIT + 60]]
    sub = df.iloc[:SPLIT + 60]
    x = sub["close"]
    line, sig, _ = pdref.macd(x, 12, 26, 9)
    cases = {r.SMA(period=300): pdref.sma(x, 300), r.EMA(period=9): pdref.ema(x, 9),
             r.EMA(period=21): pdref.ema(x, 21), r.RSI(period=14): pdref.rsi(x, 14),
             r.BBands(period=50, output="upper"): pdref.bbands(x, 50, 2.0)[0]}
    n = len(series.candles)
    for spec, ref in cases.items():  # indicators the rules created before the merge, rebuilt over all of it
        assert spec in series.indicators
        _close([series.value(spec, n - 1 - i) for i in range(n)], ref)
    # one created after the merge (a rule loaded later) warms up from the same kept history
    _close([series.value(r.MACD(output="signal"), n - 1 - i) for i in range(n)], sig)
    _close([series.value(r.MACD(), n - 1 - i) for i in range(n)], line)
    assert series.value(r.CVD(bars=30)) == sum((c.buy_volume - c.sell_volume for c in candles[SPLIT + 30:SPLIT + 60]),
                                               Decimal(0))

    # the bars after the backfill alert exactly as pandas over the full history says: no warm-up gap
    late: set[tuple[str, int]] = set()
    for c in candles[SPLIT + 60:]:
        late |= _fires(engine.on_candle(c))
    start = candles[SPLIT + 60].ts
    want = set()
    for name, cond in _expected(df).items():
        want |= {(name, int(t)) for t in df["ts"][cond.fillna(False).astype(bool)] if t >= start}
    assert late == want
    assert {name for name, _ in late} == {"sma300", "ema_x", "rsi", "bb"}
    assert all(t >= candles[SPLIT].ts for _, t in early)  # nothing ever fired for a backfilled bar


def test_a_full_series_keeps_its_newest_bars_and_a_revision_of_a_kept_bar_is_merged(candles, df):
    engine = AlertEngine(r.parse_rules(RULES, "t.yaml"), keep=400)
    for c in candles[100:500]:
        engine.on_candle(c)
    series = engine.windows[KEY]
    before = [c.ts for c in series.candles]
    engine.on_batch(candles[:100])  # older than everything kept in a full series: nothing to merge
    assert engine.rewarm() == [] and [c.ts for c in series.candles] == before
    revised = candles[300].model_copy(update={"close": candles[300].close + 7, "revision": 1})
    engine.on_candle(revised)
    assert engine.rewarm() == [KEY]
    assert series.candles[300 - 100] == revised
    x = df["close"].iloc[100:500].copy()
    x.iloc[200] = float(revised.close)
    n = len(series.candles)
    _close([series.value(r.SMA(period=300), n - 1 - i) for i in range(n)], pdref.sma(x, 300))


def test_a_rule_added_by_reload_is_warmed_from_the_kept_history(candles, df):
    """Reloading rules keeps series data: a new rule's indicators start from the kept candles at once."""
    engine = AlertEngine(r.parse_rules(RULES.split("  - {name: ema_x")[0], "t.yaml"), keep=2000)
    for c in candles[:400]:
        engine.on_candle(c)
    engine.set_rules(r.parse_rules(RULES, "t.yaml"))
    got: set[tuple[str, int]] = set()
    for c in candles[400:]:
        got |= _fires(engine.on_candle(c))
    want = set()
    for name, cond in _expected(df).items():
        want |= {(name, int(t)) for t in df["ts"][cond.fillna(False).astype(bool)] if t >= candles[400].ts}
    assert got == want and {name for name, _ in got} == {"sma300", "ema_x", "rsi", "bb"}
