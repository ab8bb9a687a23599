"""The issue's correctness test: on a real recording, a rules file covering every condition type under every trigger
frequency fires exactly the alerts an independent vectorised pandas evaluation of the same rules on the same candles
gives — sets of (rule, symbol, timeframe, ts, state), through a real redis-server and the real AlertEngineApp.

Candles: 1s and 1m from the Binance BTCUSDT capture of 2024-08-08 (pdref.candles_from_csv, exact Decimal sums). No
second real recording overlaps it in time, so the cross-symbol rules read the same trades replayed under a second
symbol name (``BTCB/USDT``); they read a different field of it (volume) than of the first (price), so they still
check that the right series is read, as of the right bar. Tickers: the 2021-01-08 BTCUSDT quotes with 1s candles of
the trades of the same 46 seconds.
"""

from __future__ import annotations

from decimal import Decimal

import pandas as pd

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared.schemas import Candle
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref
from tests.support.alerts import read_alerts
from tests.support.engine_candles import publish_candles

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
Q21 = "binance_spot_btcusdt_20210108"
EX, A, B = "binance", "BTC/USDT", "BTCB/USDT"


async def _publish(redis, candles: list[Candle]) -> None:
    await publish_candles(redis, candles)


async def _alerts(redis) -> set[tuple]:
    out = set()
    for a in await read_alerts(redis):
        out.add((a.rule, a.symbol, a.timeframe, a.ts, a.state))
    return out


def _q(x: float) -> str:
    return str(Decimal(repr(round(float(x), 2))))


def _rules(df: pd.DataFrame) -> tuple[str, dict]:
    x = df["close"]
    lv = _q(x.median())
    lo, hi = _q(x.quantile(0.3)), _q(x.quantile(0.7))
    move = _q((x - x.shift(5)).abs().quantile(0.9))
    delta_lv = str(Decimal(repr(float(df["delta_dec"].astype(float).quantile(0.95)))))
    atr_lv = _q(pdref.atr(df, 14).quantile(0.6))
    cvd_lv = str(pd.Series([float(v) for v in _anchored(df, "delta_dec")]).quantile(0.6))
    p = {"lv": lv, "lo": lo, "hi": hi, "move": move, "delta": delta_lv, "atr": atr_lv, "cvd": cvd_lv}
    rules = f"""
rules:
  - {{name: gt, symbols: [{A}], timeframe: 1s, condition: {{op: above, right: {lv}}}}}
  - {{name: lt_cd, symbols: [{A}], timeframe: 1s, frequency: every_time, cooldown: 30s,
     condition: {{op: below, right: {lv}}}}}
  - {{name: cross, symbols: [{A}], timeframe: 1s, frequency: once_per_bar, condition: {{op: crossing, right: {lv}}}}}
  - {{name: x_sma, symbols: [{A}], timeframe: 1s, condition: {{op: crosses_up, right: {{sma: 20}}}}}}
  - {{name: ema_x, symbols: [{A}], timeframe: 1s, frequency: every_time,
     condition: {{left: {{ema: 9}}, op: crosses_down, right: {{ema: 21}}}}}}
  - {{name: enter_bb, symbols: [{A}], timeframe: 1s, condition: {{op: entering_channel,
     lower: {{bbands: {{period: 20, output: lower}}}}, upper: {{bbands: {{period: 20, output: upper}}}}}}}}
  - {{name: exit_ch, symbols: [{A}], timeframe: 1s, condition: {{op: exiting_channel, lower: {lo}, upper: {hi}}}}}
  - {{name: inside_for, symbols: [{A}], timeframe: 1s, frequency: every_time, for: 5s, notify_on_resolve: true,
     condition: {{op: inside_channel, lower: {lo}, upper: {hi}}}}}
  - {{name: outside_once, symbols: [{A}], timeframe: 1s, frequency: once, condition: {{op: outside_channel,
     lower: {{bbands: {{period: 20, k: 2, output: lower}}}}, upper: {{bbands: {{period: 20, k: 2, output: upper}}}}}}}}
  - {{name: mv_up, symbols: [{A}], timeframe: 1s, condition: {{op: moving_up, amount: {move}, bars: 5}}}}
  - {{name: mv_dn_pct, symbols: [{A}], timeframe: 1s, condition: {{op: moving_down_pct, percent: 0.02, bars: 10}}}}
  - {{name: mv_up_win, symbols: [{A}], timeframe: 1s, condition: {{op: moving_up, amount: {move}, window: 10s}}}}
  - {{name: mv_dn_win_pct, symbols: [{A}], timeframe: 1s, frequency: every_time, cooldown: 20s,
     condition: {{op: moving_down_pct, percent: 0.02, window: 30s}}}}
  - {{name: spike, symbols: [{A}], timeframe: 1s, frequency: every_time, cooldown: 10s,
     condition: {{op: volume_spike, factor: 3, period: 20}}}}
  - {{name: rsi_for, symbols: [{A}], timeframe: 1s, frequency: once_per_bar_close, for: 3s, notify_on_resolve: true,
     condition: {{left: {{rsi: 14}}, op: above, right: 65}}}}
  - {{name: macd_x, symbols: [{A}], timeframe: 1s,
     condition: {{left: {{macd: line}}, op: crosses_up, right: {{macd: signal}}}}}}
  - {{name: macd_hist_once, symbols: [{A}], timeframe: 1s, frequency: once,
     condition: {{left: {{macd: histogram}}, op: below, right: -1}}}}
  - {{name: bb_mid, symbols: [{A}], timeframe: 1s, condition: {{op: crosses_down, right: {{bbands: {{period: 20, output: middle}}}}}}}}
  - {{name: atr_hi, symbols: [{A}], timeframe: 1s, frequency: every_time, cooldown: 15s,
     condition: {{left: {{atr: 14}}, op: greater_than, right: {atr_lv}}}}}
  - {{name: vwap_x, symbols: [{A}], timeframe: 1s, condition: {{op: crossing, right: {{vwap: 1h}}}}}}
  - {{name: vol_sma, symbols: [{A}], timeframe: 1s, condition: {{left: volume, op: above, right: {{volume_sma: 20}}}}}}
  - {{name: delta_hi, symbols: [{A}], timeframe: 1s, condition: {{left: delta, op: above, right: {delta_lv}}}}}
  - {{name: cvd_roll, symbols: [{A}], timeframe: 1s, condition: {{left: {{cvd: 30}}, op: crosses_down, right: 0}}}}
  - {{name: cvd_anch, symbols: [{A}], timeframe: 1s, frequency: every_time, for: 2s, notify_on_resolve: true,
     condition: {{left: {{cvd: {{anchor: 1h}}}}, op: above, right: {cvd_lv}}}}}
  - {{name: mtf_all, symbols: [{A}], timeframe: 1s, frequency: every_time,
     condition: {{all: [{{op: crosses_up, right: {{ema: 9}}}}, {{op: above, right: {{sma: 3}}, timeframe: 1m}}]}}}}
  - {{name: mtf_any, symbols: [{A}], timeframe: 1m, condition: {{any: [{{op: below, right: {lv}}},
     {{op: moving_up, amount: {move}, bars: 3, timeframe: 1s}}]}}}}
  - {{name: sym_all, symbols: [{A}], timeframe: 1s, condition: {{all: [{{op: above, right: {lv}}},
     {{left: volume, op: above, right: {{volume_sma: 20}}, symbol: {B}}}]}}}}
  - {{name: sym_any, symbols: [{A}], timeframe: 1s, frequency: every_time, cooldown: 5s,
     condition: {{any: [{{op: crosses_down, right: {lv}}}, {{op: volume_spike, factor: 4, symbol: {B}}}]}}}}
"""
    return rules, p


def _anchored(df: pd.DataFrame, col: str, anchor_ms: int = 3_600_000) -> list[Decimal]:
    out, total, session = [], Decimal(0), None
    for t, v in zip(df["ts"], df[col], strict=True):
        s = t // anchor_ms
        total = v if s != session else total + v
        session = s
        out.append(total)
    return out


def _expected(df: pd.DataFrame, dm: pd.DataFrame, p: dict) -> set[tuple]:
    x, ts, close = df["close"], df["ts"], df["ts"] + 1000
    lv, lo, hi, move = float(p["lv"]), float(p["lo"]), float(p["hi"]), float(p["move"])
    up, mid, low = pdref.bbands(x, 20, 2.0)
    line, sig, hist = pdref.macd(x, 12, 26, 9)
    vwap = pd.Series([q / v for q, v in zip(_anchored(df, "quote_dec"), _anchored(df, "volume_dec"), strict=True)])
    vwap_f = vwap.astype(float)  # exact Decimal VWAP compared with exact closes: no float in the comparison
    close_dec = pd.Series([Decimal(repr(c)) for c in x])
    vwap_cross = (((close_dec.shift(1) <= vwap.shift(1)) & (close_dec > vwap))
                  | ((close_dec.shift(1) >= vwap.shift(1)) & (close_dec < vwap)))
    vwap_cross.iloc[0] = False
    delta = df["delta_dec"]
    cvd_roll = pd.Series([sum(delta.iloc[i - 29:i + 1], Decimal(0)) if i >= 29 else None for i in range(len(df))])
    cvd_roll_x = (cvd_roll.shift(1) >= 0) & (cvd_roll < 0) & cvd_roll.notna() & cvd_roll.shift(1).notna()
    cvd_anch = pd.Series(_anchored(df, "delta_dec"))
    vol_b = df["volume"]  # the second symbol replays the same trades
    # a condition naming another timeframe reads that series whole (its close, its SMA), as of the 1s bar's close
    above1m = pdref.as_of(close, dm["ts"] + 60_000, (dm["close"] > pdref.sma(dm["close"], 3)).astype(float))
    mv1s = pdref.moving("moving_up", x, amount=move, bars=3)
    rules = {
        "gt": (x > lv, dict(frequency="once_per_bar_close")),
        "lt_cd": (x < lv, dict(frequency="every_time", cooldown_ms=30_000)),
        "cross": (pdref.crossing(x, lv), dict(frequency="once_per_bar")),
        "x_sma": (pdref.cross_up(x, pdref.sma(x, 20)), {}),
        "ema_x": (pdref.cross_down(pdref.ema(x, 9), pdref.ema(x, 21)), {}),
        "enter_bb": (pdref.channel("entering_channel", x, low, up), {}),
        "exit_ch": (pdref.channel("exiting_channel", x, lo, hi), {}),
        "inside_for": (pdref.channel("inside_channel", x, lo, hi), dict(for_ms=5000, notify_on_resolve=True)),
        "outside_once": (pdref.channel("outside_channel", x, low, up), dict(frequency="once")),
        "mv_up": (pdref.moving("moving_up", x, amount=move, bars=5), {}),
        "mv_dn_pct": (pdref.moving("moving_down_pct", x, percent=0.02, bars=10), {}),
        "mv_up_win": (pdref.moving("moving_up", x, amount=move, ts=ts, window_ms=10_000), {}),
        "mv_dn_win_pct": (pdref.moving("moving_down_pct", x, percent=0.02, ts=ts, window_ms=30_000),
                          dict(cooldown_ms=20_000)),
        "spike": (pdref.volume_spike(df["volume"], 3, 20), dict(cooldown_ms=10_000)),
        "rsi_for": (pdref.rsi(x, 14) > 65, dict(for_ms=3000, notify_on_resolve=True)),
        "macd_x": (pdref.cross_up(line, sig), {}),
        "macd_hist_once": (hist < -1, dict(frequency="once")),
        "bb_mid": (pdref.cross_down(x, mid), {}),
        "atr_hi": (pdref.atr(df, 14) > float(p["atr"]), dict(cooldown_ms=15_000)),
        "vwap_x": (vwap_cross & vwap_f.notna(), {}),
        "vol_sma": (df["volume"] > pdref.sma(df["volume"], 20), {}),
        "delta_hi": (delta > Decimal(p["delta"]), {}),
        "cvd_roll": (cvd_roll_x, {}),
        "cvd_anch": (cvd_anch > Decimal(p["cvd"]), dict(for_ms=2000, notify_on_resolve=True)),
        "mtf_all": (pdref.cross_up(x, pdref.ema(x, 9)) & (above1m == 1), {}),
        "sym_all": ((x > lv) & (vol_b > pdref.sma(vol_b, 20)), {}),
        "sym_any": (pdref.cross_down(x, lv) | pdref.volume_spike(vol_b, 4, 20), dict(cooldown_ms=5000)),
    }
    out: set[tuple] = set()
    for name, (cond, kw) in rules.items():
        kw = {"frequency": "once_per_bar_close", **kw}
        got = pdref.fires(cond.astype(object).where(cond.notna(), False).astype(bool), ts, close, **kw)
        assert got, f"{name} never fires on this recording: the check would prove nothing"
        out |= {(name, A, "1s", t, state) for t, state in got}
    # the 1m rule: its own level, or the 1s move of the last 1s bar closed by the 1m close
    xm, closem = dm["close"], dm["ts"] + 60_000
    mv_asof = pdref.as_of(closem, close, mv1s.astype(float)).fillna(0).astype(bool)
    condm = (xm < float(p["lv"])) | mv_asof
    gotm = pdref.fires(condm, dm["ts"], closem, frequency="once_per_bar_close")
    assert gotm
    out |= {("mtf_any", A, "1m", t, state) for t, state in gotm}
    return out


async def test_every_condition_and_frequency_on_a_real_recording_equals_pandas(redis, tmp_path):
    path = shared_data(BTC)
    c1 = pdref.candles_from_csv(path, EX, A, "1s", 1000)
    cm = pdref.candles_from_csv(path, EX, A, "1m", 60_000)
    df, dm = pdref.frame(c1), pdref.frame(cm)
    text, params = _rules(df)
    (tmp_path / "rules.yaml").write_text(text)
    b1 = [c.model_copy(update={"symbol": B}) for c in c1]
    await _publish(redis, c1 + cm + b1)
    settings = Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused",
                        block_ms=20, clock="exchange")
    app = AlertEngineApp(settings, redis)
    await app.drain()
    got = await _alerts(redis)
    want = _expected(df, dm, params)
    missing, extra = sorted(want - got), sorted(got - want)
    by_rule: dict[str, list] = {}
    for item in missing:
        by_rule.setdefault(item[0], []).append(("missing", item[3], item[4]))
    for item in extra:
        by_rule.setdefault(item[0], []).append(("extra", item[3], item[4]))
    assert got == want, {k: v[:4] for k, v in by_rule.items()}
