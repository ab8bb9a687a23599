"""Rules that read another series give the same alerts however the streams are read: XREADGROUP COUNT 1, 7 or 500.

A drain reads up to COUNT entries of every stream per round, so a fast series (1s) lags a slow one (1m, 5m) by a whole
read: a 1m or 5m rule reading the 1s series must wait until that series has reached its bar's close (the engine defers
the evaluation), and a 1s rule reading the 1m series must not see the 1m bar before it closes. Expected alerts: the
independent pandas evaluation of the correctness test (tests/integration/test_alert_engine_correctness.py), on the
same real recording, plus rules of the slow-reads-fast direction evaluated with pandas here.
"""

from __future__ import annotations

import pandas as pd
import pytest

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from tests.conftest import shared_data
from tests.integration import test_alert_engine_correctness as corr
from tests.unit.alert_engine import pdref

A, B, EX = corr.A, corr.B, corr.EX
CROSS = ("mtf_all", "mtf_any", "sym_all", "sym_any")


def _slow_reads_fast(p: dict) -> str:
    return f"""
  - {{name: m_s_sma, symbols: [{A}], timeframe: 1m, frequency: every_time,
     condition: {{op: above, right: {{sma: 20}}, timeframe: 1s}}}}
  - {{name: m_b_vol, symbols: [{A}], timeframe: 1m,
     condition: {{left: volume, op: above, right: {{volume_sma: 5}}, symbol: {B}, timeframe: 1s}}}}
  - {{name: m_s_all, symbols: [{A}], timeframe: 1m, condition: {{all: [{{op: above, right: {p["lv"]}}},
     {{op: moving_up, amount: 0.01, bars: 30, timeframe: 1s}}]}}}}
  - {{name: m5_s, symbols: [{A}], timeframe: 5m, condition: {{op: above, right: {{sma: 10}}, timeframe: 1s}}}}
"""


def _expected_slow(df: pd.DataFrame, dm: pd.DataFrame, d5: pd.DataFrame, p: dict) -> set[tuple]:
    x1, close1 = df["close"], df["ts"] + 1000
    vol_b = df["volume"]  # B replays A's trades

    def on(frame: pd.DataFrame, tf_ms: int, values: pd.Series) -> pd.Series:
        """A 1s-series value as of each bar close of ``frame`` (the last 1s bar closed by then)."""
        return pdref.as_of(frame["ts"] + tf_ms, close1, values.astype(float)).fillna(0).astype(bool)

    rules = {
        ("m_s_sma", "1m"): (dm, 60_000, on(dm, 60_000, x1 > pdref.sma(x1, 20)), dict(frequency="every_time")),
        ("m_b_vol", "1m"): (dm, 60_000, on(dm, 60_000, vol_b > pdref.sma(vol_b, 5)), {}),
        ("m_s_all", "1m"): (dm, 60_000, (dm["close"] > float(p["lv"]))
                            & on(dm, 60_000, pdref.moving("moving_up", x1, amount=0.01, bars=30)), {}),
        ("m5_s", "5m"): (d5, 300_000, on(d5, 300_000, x1 > pdref.sma(x1, 10)), {}),
    }
    out: set[tuple] = set()
    for (name, tf), (frame, tf_ms, cond, kw) in rules.items():
        kw = {"frequency": "once_per_bar_close", **kw}
        got = pdref.fires(cond, frame["ts"], frame["ts"] + tf_ms, **kw)
        assert got, f"{name} never fires on this recording: the check would prove nothing"
        assert len(got) < len(frame), f"{name} fires on every bar: the check would prove little"
        out |= {(name, A, tf, t, state) for t, state in got}
    return out


@pytest.fixture(scope="module")
def recording():
    path = shared_data(corr.BTC)
    c1 = pdref.candles_from_csv(path, EX, A, "1s", 1000)
    cm = pdref.candles_from_csv(path, EX, A, "1m", 60_000)
    c5 = pdref.candles_from_csv(path, EX, A, "5m", 300_000)
    df, dm, d5 = pdref.frame(c1), pdref.frame(cm), pdref.frame(c5)
    text, params = corr._rules(df)
    cross = [line for line in text.split("\n  - ") if line.split(",")[0].removeprefix("{name: ") in CROSS]
    rules = "rules:\n  - " + "\n  - ".join(cross).rstrip() + "\n" + _slow_reads_fast(params)
    want = {a for a in corr._expected(df, dm, params) if a[0] in CROSS} | _expected_slow(df, dm, d5, params)
    b1 = [c.model_copy(update={"symbol": B}) for c in c1]
    return c1 + cm + c5 + b1, rules, want


@pytest.mark.parametrize("count", [1, 7, 500])
async def test_cross_series_rules_give_the_same_alerts_whatever_the_read_count(redis, tmp_path, recording, count):
    candles, rules, want = recording
    assert {a[0] for a in want} == {*CROSS, "m_s_sma", "m_b_vol", "m_s_all", "m5_s"}
    await corr._publish(redis, candles)
    (tmp_path / "rules.yaml").write_text(rules)
    settings = Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused",
                        block_ms=20, clock="exchange", batch=count)
    app = AlertEngineApp(settings, redis)
    await app.drain()
    got = await corr._alerts(redis)
    missing, extra = sorted(want - got), sorted(got - want)
    assert got == want, {"missing": missing[:6], "extra": extra[:6]}
