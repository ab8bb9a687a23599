"""Rules on in-progress candles in ``sentinel backtest`` (issue 22): every in-progress candle candle_builder writes is
evaluated, in exchange-time order with the closed ones, so the alerts do not depend on how much alert_engine or
candle_builder reads at once (the speed of the run), and they equal pandas' in-progress candle as of each throttle
point (the first trade of each ``live_throttle_ms`` window of exchange time, as test_candle_builder_live_throttle.py
defines them) with the rule applied, plus the rule's alerts at the close of each bar the recording covers whole.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sentinel.cli import app
from tests.conftest import shared_data
from tests.support.candles import RECORDINGS, read_trades

THROTTLE_MS = 250  # candle_builder's default live_throttle_ms, which the backtest keeps
TF_MS = 60_000
RULES = """
rules:
  - name: green_intrabar
    symbols: [BTC/USDT]
    timeframe: 1m
    frequency: every_time
    condition: {left: close, op: above, right: open}
  - name: every_candle
    symbols: [BTC/USDT]
    timeframe: 1m
    frequency: every_time
    condition: {left: close, op: above, right: 0}
"""
# (alert_engine's XREAD count, candle_builder's): entries of both streams read a few at a time, or thousands at once
READS = ((7, 50), (5000, 20_000))


def expected(path: Path, green: bool = True) -> list[tuple[int, int, Decimal]]:
    """(bar start, evaluation time, price) of every alert, by pandas: each throttle point's in-progress 1m candle
    (open: the bucket's first trade; close: the point's trade) where close > open (every one: ``green`` False), at
    the newest trade's time; and each bar the recording covers from start to end (whose close > open), at its
    close."""
    trades = read_trades(path)
    df = pd.DataFrame({"ts": [t.ts for t in trades], "price": [t.price for t in trades]})
    window = df["ts"] // THROTTLE_MS
    point = window > window.shift(1).cummax().fillna(-1)
    bucket = df["ts"] // TF_MS * TF_MS
    g = df.groupby(bucket)
    live = pd.DataFrame({"ts": bucket, "open": g["price"].transform("first"), "close": df["price"],
                         "as_of": g["ts"].cummax()})[point]
    out = [(int(r.ts), int(r.as_of), r.close) for r in live.itertuples() if r.close > r.open or not green]
    first, last = int(df["ts"].min()), int(df["ts"].max())
    bars = pd.DataFrame({"open": g["price"].first(), "close": g["price"].last()})
    out += [(int(ts), int(ts) + TF_MS, r.close) for ts, r in zip(bars.index, bars.itertuples(), strict=True)
            if first <= ts and ts + TF_MS <= last + 1 and (r.close > r.open or not green)]
    return sorted(out)


def run(tmp: Path, rules: Path, engine_count: int, builder_count: int) -> dict[str, list[tuple[int, int, Decimal]]]:
    config = tmp / f"config-{engine_count}.yaml"
    config.write_text(f"alert_engine:\n  batch: {engine_count}\ncandle_builder:\n  read_count: {builder_count}\n")
    out = tmp / f"out-{engine_count}"
    _, _, relative = RECORDINGS["btcusdt"]
    result = CliRunner().invoke(app, ["backtest", str(shared_data(relative)), "--rules", str(rules), "--out", str(out),
                                      "--timeframes", "1m", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert all(a["state"] == "firing" for a in alerts)
    return {rule: sorted((a["ts"], a["fired_at"], Decimal(a["price"])) for a in alerts if a["rule"] == rule)
            for rule in ("green_intrabar", "every_candle")}


@pytest.mark.timeout(300)
def test_intrabar_alerts_of_a_backtest_equal_pandas_whatever_the_read_sizes(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    runs = [run(tmp_path, rules, *counts) for counts in READS]
    path = shared_data(RECORDINGS["btcusdt"][2])
    want = {"green_intrabar": expected(path), "every_candle": expected(path, green=False)}
    intrabar = [a for a in want["green_intrabar"] if a[1] != a[0] + TF_MS]
    assert len(intrabar) > 500, "the recording makes many green in-progress candles"
    # every in-progress candle the builder wrote (one per throttle point: 1,945 here) was evaluated
    assert len([a for a in want["every_candle"] if a[1] != a[0] + TF_MS]) > 1900
    assert runs[0] == runs[1]
    for rule, alerts in want.items():
        got = runs[0][rule]
        assert got == alerts, (rule, len(got), len(alerts), sorted(set(got) ^ set(alerts))[:5])
