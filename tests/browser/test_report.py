"""``sentinel report`` on a real backtest of a real recording: its figures against pandas, its page in Chromium.

The backtest runs as a user runs it (``sentinel backtest`` on the 11-minute Binance BTCUSDT recording), then
``sentinel report``. Independently of sentinel's code, pandas builds the 1s bars from the raw trades and computes
each alert's return after N bars and its maximum favourable and adverse moves; the report's figures must equal them.
The page is opened from the file in headless Chromium with every network request refused: each chart is drawn, and
each alert's marker is on the canvas at its bar's time and close.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from sentinel.report import write_report
from tests.conftest import REPO, shared_data
from tests.unit.alert_engine import pdref

SENTINEL = [sys.executable, "-m", "sentinel.cli"]
RECORDING = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
SCREENSHOTS = Path(os.environ.get("SENTINEL_SCREENSHOTS", "bench/results"))
N = 10
RULES = """
rules:
  - name: cross_ema30_1s
    symbols: [BTC/USDT]
    timeframe: 1s
    condition: {left: close, op: crossing, right: {ema: 30}}
    cooldown: 1m
  - name: drop_1s
    symbols: ["*/USDT"]
    timeframe: 1s
    condition: {op: moving_down_pct, percent: 0.04, bars: 5}
    cooldown: 30s
    labels: {direction: short}
  - name: above_band_1m
    symbols: [BTC/USDT]
    timeframe: 1m
    condition: {left: close, op: greater_than, right: {bbands: {period: 5, output: upper}}}
  - name: ema_cross_1m
    symbols: ["*/USDT"]
    timeframe: 1m
    condition: {left: {ema: 9}, op: crosses_up, right: {ema: 21}}
  - name: kraken_only
    exchange: kraken
    symbols: [BTC/USD]
    timeframe: 1m
    condition: {left: close, op: greater_than, right: 1}
"""


@pytest.fixture(scope="module")
def backtest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("report")
    rules = folder / "rules.yaml"
    rules.write_text(RULES)
    out = folder / "out"
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run([*SENTINEL, "backtest", str(shared_data(RECORDING)), "--rules", str(rules), "--out", str(out),
                          "--timeframes", "1s,1m,5m"], cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([*SENTINEL, "report", str(out), "--rules", str(rules), "--forward-bars", str(N)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    return out, rules, report.stdout


def _pandas_bars(tf_ms: int = 1000) -> pd.DataFrame:
    """Bars of the raw trades by pandas (exact Decimal prices), indexed by bar start (ms); an interval without trades
    is a flat bar at the previous close (the candle builder's documented ``flat_candles``)."""
    df = pd.read_csv(shared_data(RECORDING), dtype={"price": str})
    df["price"] = df["price"].map(Decimal)
    bars = df.groupby(df["timestamp"] // tf_ms * tf_ms)["price"].agg(["first", "max", "min", "last"])
    bars = bars.rename(columns={"first": "open", "max": "high", "min": "low", "last": "close"})
    bars = bars.reindex(range(bars.index[0], bars.index[-1] + 1, tf_ms))
    bars["close"] = bars["close"].ffill()
    return bars.apply(lambda col: col.fillna(bars["close"]))


def _pandas_outcomes(alerts: list[dict], bars: pd.DataFrame, short: bool) -> list[tuple]:
    out = []
    for i, a in enumerate(alerts):
        entry = bars.loc[a["ts"], "close"]
        target = a["ts"] + N * 1000
        forward = None if target > bars.index.max() else bars.loc[bars.index <= target, "close"].iloc[-1] / entry - 1
        end = alerts[i + 1]["ts"] if i + 1 < len(alerts) else bars.index.max()
        window = bars[(bars.index > a["ts"]) & (bars.index <= end)]
        up, down = window["high"].max() / entry - 1, window["low"].min() / entry - 1
        out.append((entry, forward, -down if short else up, -up if short else down))
    return out


def test_figures_equal_an_independent_pandas_computation(backtest):
    out, rules, terminal = backtest
    report = write_report(out, rules, forward_bars=N)
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    bars = _pandas_bars()
    by_rule = {rep.rule: rep for rep in report.rules}
    for rule, short in (("cross_ema30_1s", False), ("drop_1s", True)):
        mine = sorted((a for a in alerts if a["rule"] == rule), key=lambda a: a["ts"])
        assert len(mine) >= 3, f"{rule} should fire on this recording"
        rep = by_rule[rule]
        expected = _pandas_outcomes(mine, bars, short)
        assert [(o.entry, o.forward, o.favourable, o.adverse) for o in rep.outcomes] == expected
        fwd = [float(e[1]) for e in expected if e[1] is not None]
        assert rep.forward.n == len(fwd)
        assert float(rep.forward.mean) == pytest.approx(statistics.fmean(fwd), rel=1e-12)
        assert float(rep.forward.median) == pytest.approx(pd.Series(fwd).median(), rel=1e-12)
        assert float(rep.forward.positive) == pytest.approx(sum(f > 0 for f in fwd) / len(fwd))
        assert rep.gaps_ms == [b["ts"] - a["ts"] for a, b in zip(mine, mine[1:])]
        assert rep.by_symbol == {"binance BTC/USDT": len(mine)}
        # the terminal summary prints the same mean
        assert f"{statistics.fmean(fwd) * 100:+.3f}%" in next(ln for ln in terminal.splitlines() if rule in ln)
    # the silent rules, each with its cause; 1m bar count by pandas
    n_1m = pd.read_csv(shared_data(RECORDING))["timestamp"].floordiv(60_000).nunique()
    assert report.why["ema_cross_1m"].startswith("warm-up") and f"the data has {n_1m}" in report.why["ema_cross_1m"]
    assert "matched no symbol of the data (it has: binance BTC/USDT)" in report.why["kraken_only"]
    assert report.why["above_band_1m"].startswith("its condition never held")
    assert "ema_cross_1m fired nothing: warm-up" in terminal


def test_indicator_lines_equal_pandas_ema_and_bands(backtest):
    out, rules, _ = backtest
    html = (out / "report.html").read_text()
    data = json.loads(html.split('<script type="application/json" id="report-data">', 1)[1].split("</script>", 1)[0])
    series = {(s["symbol"], s["tf"]): s for s in data["series"]}
    closes = _pandas_bars(1000)["close"].astype(float)
    ema = pdref.ema(closes, 30).dropna()
    line = {t * 1000: v for t, v in next(ln for ln in series[("BTC/USDT", "1s")]["lines"]
                                         if ln["label"] == "ema(30)")["points"]}
    assert list(line) == list(ema.index)
    assert list(line.values()) == pytest.approx(list(ema.values), rel=1e-12)
    upper, middle, lower = pdref.bbands(_pandas_bars(60_000)["close"].astype(float), 5, 2.0)
    lines = {ln["label"]: dict(ln["points"]) for ln in series[("BTC/USDT", "1m")]["lines"]}
    for label, ref in (("bbands(5,2) upper", upper), ("bbands(5,2) lower", lower)):
        ref = ref.dropna()
        assert [t * 1000 for t in lines[label]] == list(ref.index)
        assert list(lines[label].values()) == pytest.approx(list(ref.values), rel=1e-9)


async def test_page_draws_every_chart_and_each_alert_marker_at_its_bar(backtest, browser):
    out, _, _ = backtest
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    await page.route("http*://**", lambda route: route.abort())  # self-contained: nothing may come from a network
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto((out / "report.html").as_uri())
    await page.wait_for_function("window.sentinelReport && window.sentinelReport.charts.length === 3")
    assert errors == [] and all(url.startswith("file://") for url in requested), (errors, requested)
    drawn = await page.evaluate("""() => window.sentinelReport.charts.map(({chart}) => {
        const c = chart.takeScreenshot(); const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; for (let i = 0; i < px.length; i += 4) if (px[i] < 200 || px[i+1] < 200 || px[i+2] < 200) ink++;
        return ink; })""")
    assert all(ink > 5000 for ink in drawn), drawn
    # markers: where the chart says each alert's bar and close are, the canvas has the marker's colour
    markers = await page.evaluate("""() => { const {chart, candles, markers, series} = window.sentinelReport.charts[0];
        const shot = chart.takeScreenshot().getContext('2d');
        return markers.markers().map(m => { const x = Math.round(chart.timeScale().timeToCoordinate(m.time));
            const y = Math.round(candles.priceToCoordinate(m.price));
            return {time: m.time, price: m.price, colour: m.color, rgb: Array.from(shot.getImageData(x, y, 1, 1).data)};
        }); }""")
    fired_1s = sorted((a["ts"] // 1000, float(a["price"])) for a in alerts if a["timeframe"] == "1s")
    assert sorted((m["time"], m["price"]) for m in markers) == fired_1s
    for m in markers:
        want = [int(m["colour"][i:i + 2], 16) for i in (1, 3, 5)]
        assert all(abs(a - b) <= 40 for a, b in zip(m["rgb"][:3], want)), m
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
    text = await page.inner_text("table")
    assert "cross_ema30_1s" in text and "warm-up" in text
    await page.close()
