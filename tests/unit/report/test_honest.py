"""The honest-output helpers (issue 22, point 4) on the recordings of ../shared/data, checked against the alert
engine itself (when does a rule first fire?) and the recordings' documented spans."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sentinel.report.honest import (
    coverage,
    drop_partial_bar_alerts,
    explain_silence,
    first_evaluation_bars,
    order_alerts,
    partial_bars,
)
from services.alert_engine.core import AlertEngine
from shared import rules as r
from shared.schemas import Alert
from tests.conftest import REPO, shared_data
from tests.unit.alert_engine import pdref

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"  # 23:54:15 → 00:05:04 (SOURCES.md)
BTC_2021 = "binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv"  # 00:00:00 → 00:00:46
KRAKEN = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"
SAMPLE = REPO / "services/alert_engine/sample_rules.yaml"


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _alert(rule: str, ts: int, tf: str = "1m", fired_at: int | None = None) -> Alert:
    return Alert(id=f"{rule}{ts}", rule=rule, exchange="binance", symbol="BTC/USDT", timeframe=tf, ts=ts,
                 fired_at=fired_at if fired_at is not None else ts + 60_000, price=Decimal(1))


def test_alerts_are_put_in_time_order_across_rules():
    grouped = [_alert("a", _ms("2024-08-08 23:58")), _alert("a", _ms("2024-08-09 00:02")),
               _alert("b", _ms("2024-08-08 23:55")), _alert("b", _ms("2024-08-09 00:01"))]
    ordered = order_alerts(grouped)
    assert [(a.rule, a.ts) for a in ordered] == [("b", _ms("2024-08-08 23:55")), ("a", _ms("2024-08-08 23:58")),
                                                 ("b", _ms("2024-08-09 00:01")), ("a", _ms("2024-08-09 00:02"))]


def test_partial_first_and_last_bars_of_a_cut_recording():
    trades = list(pdref.pd.read_csv(shared_data(BTC))["timestamp"])
    covered = coverage(shared_data(BTC), trades[0], trades[-1])
    starts_1m = sorted({t // 60_000 * 60_000 for t in trades})
    starts_5m = sorted({t // 300_000 * 300_000 for t in trades})
    assert partial_bars(starts_1m, "1m", covered) == {_ms("2024-08-08 23:54"), _ms("2024-08-09 00:05")}
    assert partial_bars(starts_5m, "5m", covered) == {_ms("2024-08-08 23:50"), _ms("2024-08-09 00:05")}
    # a Binance daily archive covers its whole UTC day, however quiet its first and last seconds
    day = coverage(Path("BTCUSDT-trades-2024-08-08.csv"), _ms("2024-08-08 00:00:03"), _ms("2024-08-08 23:59:58"))
    assert day == (_ms("2024-08-08 00:00"), _ms("2024-08-09 00:00"))
    assert partial_bars([_ms("2024-08-08 00:00"), _ms("2024-08-08 23:59")], "1m", day) == set()


def test_a_bar_close_alert_on_a_bar_the_data_does_not_cover_is_dropped():
    """The issue's case: data ending at 00:00:46 closed the 00:00 5m bar and fired an alert stamped 00:05:00."""
    trades = list(pdref.pd.read_csv(shared_data(BTC_2021))["timestamp"])
    covered = coverage(shared_data(BTC_2021), trades[0], trades[-1])
    bar = _ms("2021-01-08 00:00")
    partial = {("binance", "BTC/USDT", "5m"): partial_bars([bar], "5m", covered),
               ("binance", "BTC/USDT", "1s"): partial_bars([bar + 10_000], "1s", covered)}
    five = _alert("five", bar, "5m", fired_at=bar + 300_000)
    second = _alert("second", bar + 10_000, "1s", fired_at=bar + 11_000)
    kept, dropped = drop_partial_bar_alerts([five, second], partial)
    assert kept == [second] and dropped == [five]


@pytest.mark.parametrize("condition, engine_check", [
    ({"left": {"sma": 20}, "op": "greater_than", "right": 0}, None),
    ({"left": {"ema": 21}, "op": "greater_than", "right": 0}, None),
    ({"left": {"rsi": 14}, "op": "greater_than", "right": -1}, None),
    ({"left": {"macd": {"output": "signal"}}, "op": "greater_than", "right": -1000000}, None),
    ({"left": {"bbands": {"period": 10, "output": "upper"}}, "op": "greater_than", "right": 0}, None),
    ({"op": "volume_spike", "factor": "0.000001", "period": 20}, None),
    ({"op": "moving_up", "amount": "0.00000001", "bars": 3, "left": {"volume_sma": 5}}, "any change"),
])
def test_first_evaluation_bars_is_where_the_engine_first_fires(condition, engine_check):
    """The engine itself, fed the recording's 1s candles, fires an always-true condition first at that bar."""
    if engine_check:  # a move needs a change: read both directions and take the first to fire
        down = {**condition, "op": "moving_down"}
        condition = {"any": [condition, down]}
    rule = {"name": "x", "symbols": ["BTC/USDT"], "timeframe": "1s", "condition": condition,
            "frequency": "every_time"}
    ruleset = r.RuleSet.model_validate({"rules": [rule]})
    engine = AlertEngine(ruleset, keep=5000)
    candles = pdref.candles_from_csv(shared_data(BTC), "binance", "BTC/USDT", "1s", 1000)
    first = next(i for i, c in enumerate(candles, start=1) if engine.on_candle(c))
    assert first_evaluation_bars(ruleset.rules[0].condition, 1000) == first


def test_why_a_rule_fired_nothing():
    btc = {("binance", "BTC/USDT", "1m"): pdref.candles_from_csv(shared_data(BTC), "binance", "BTC/USDT", "1m",
                                                                   60_000)}
    sample = r.load_rules_file(SAMPLE)
    why = explain_silence(sample, btc, [])
    bars = len(btc[("binance", "BTC/USDT", "1m")])
    assert bars == 12  # 23:54 .. 00:05
    assert why["ema_9_21_cross_up"].startswith("warm-up") and f"the data has {bars}" in why["ema_9_21_cross_up"]
    assert "needs 22 closed 1m bars" in why["ema_9_21_cross_up"]  # EMA(21)'s first value, then a bar to cross from
    assert why["volume_spike"].startswith("warm-up") and "needs 21" in why["volume_spike"]
    assert "timeframe 5m was not built (built: 1m)" in why["btc_outside_range"]
    kraken = {("kraken", "BTC/USD", "1m"): pdref.candles_from_csv(shared_data(KRAKEN), "kraken", "BTC/USD", "1m",
                                                                  60_000)}
    why_kraken = explain_silence(sample, kraken, [])
    assert all("matched no symbol of the data (it has: kraken BTC/USD)" in why_kraken[rule.name]
               for rule in sample.rules)
    extra = r.parse_rules("""
rules:
  - {name: switched_off, symbols: [BTC/USDT], condition: {left: close, op: greater_than, right: 1}, enabled: false}
  - {name: old, symbols: [BTC/USDT], condition: {left: close, op: greater_than, right: 1},
     expires_at: "2024-01-01T00:00:00Z"}
  - {name: never, symbols: [BTC/USDT], condition: {left: close, op: greater_than, right: 1000000}}
""")
    why_extra = explain_silence(extra, btc, [])
    assert why_extra["switched_off"] == "disabled (enabled: false)"
    assert why_extra["old"].startswith("expired at 2024-01-01 00:00:00 UTC, before the data begins")
    assert why_extra["never"] == f"its condition never held on the {bars} 1m bars it could be evaluated on"
    fired = [_alert("never", _ms("2024-08-08 23:58"))]
    assert "never" not in explain_silence(extra, btc, fired)
