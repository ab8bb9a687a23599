"""End to end on real recordings: ``sentinel backtest`` runs market_feed → candle_builder → alert_engine on a real
redis-server; every closed candle of every timeframe must equal pandas' resample of the same trades, exactly, and the
alerts must equal an independent scan of those candles."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sentinel.cli import app
from tests.conftest import shared_data

SCALE = 10**8  # every price and amount in these recordings has at most 8 decimals: exact int64 arithmetic
TIMEFRAMES = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h"}

RECORDINGS = {
    "binance-generic": ("binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv", "binance", "BTC/USDT"),
    "binance-layout": ("binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv", "binance", "BTC/USDT"),
    "kraken": ("kraken_btcusd/XBTUSD-trades-20190701T00-01.csv", "kraken", "BTC/USD"),
    "xrpeth": ("binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv", "binance", "XRP/ETH"),
}


def scaled(text: str) -> int:
    value = Decimal(text) * SCALE
    if value != value.to_integral_value():
        raise ValueError(f"{text} has more than 8 decimals")
    return int(value)


def read_reference_trades(path: Path) -> pd.DataFrame:
    """Read a recording independently of sentinel's readers: ts (ms), price and amount scaled to ints, is_buy."""
    first = path.read_text().split("\n", 1)[0]
    if first.startswith("timestamp"):
        raw = pd.read_csv(path, dtype=str)
        ts = raw["timestamp"].astype("int64")
        is_buy = raw["side"] == "buy"
        price, amount = raw["price"], raw["amount"]
    else:
        raw = pd.read_csv(path, header=None, dtype=str)
        ts = raw[4].astype("int64")
        ts = ts.where(ts < 10**14, ts // 1000)  # µs → ms
        is_buy = raw[5].str.lower() != "true"  # buyer is maker → the taker sold
        price, amount = raw[1], raw[2]
    df = pd.DataFrame({"ts": ts, "price": price.map(scaled), "amount": amount.map(scaled), "is_buy": is_buy})
    df["buy"] = df["amount"].where(df["is_buy"], 0)
    df["sell"] = df["amount"].where(~df["is_buy"], 0)
    df.index = pd.to_datetime(df["ts"], unit="ms", utc=True)
    return df


def reference_candles(df: pd.DataFrame, rule: str) -> pd.DataFrame:
    r = df.resample(rule, origin="epoch", label="left", closed="left")
    out = pd.DataFrame({"open": r["price"].first(), "high": r["price"].max(), "low": r["price"].min(),
                        "close": r["price"].last(), "volume": r["amount"].sum(), "buy_volume": r["buy"].sum(),
                        "sell_volume": r["sell"].sum(), "trades": r["price"].count()})
    # An interval without trades is a flat candle at the previous close.
    out["close"] = out["close"].ffill()
    for col in ("open", "high", "low"):
        out[col] = out[col].fillna(out["close"])
    out.index = out.index.as_unit("ms").asi8  # bucket start, ms UTC
    return out.astype("int64")


def built_candles(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str).set_index("timestamp")
    df.index = df.index.astype("int64")
    for col in ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume"):
        df[col] = df[col].map(scaled)
    df["trades"] = df["trades"].astype("int64")
    return df.astype("int64")


RULES = """\
rules:
  - name: above
    symbols: ["*"]
    timeframe: 5m
    condition: {{left: close, op: above, right: {level}}}
    frequency: once_per_bar_close
  - name: below
    symbols: ["*"]
    timeframe: 1m
    condition: {{left: close, op: below, right: {level}}}
    frequency: once_per_bar_close
  - name: crosses-up
    symbols: ["*"]
    timeframe: 1m
    condition: {{left: close, op: crosses_up, right: {level}}}
    frequency: once_per_bar_close
  - name: crosses-down
    symbols: ["*"]
    timeframe: 1m
    condition: {{left: close, op: crosses_down, right: {level}}}
    frequency: once_per_bar_close
"""


TF_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


def reference_alerts(candles: dict[str, pd.DataFrame], level: int,
                     span: tuple[int, int] | None = None) -> set[tuple[str, str, int]]:
    """Independent scan: which (rule, timeframe, candle ts) fire, computed on the reference candles. With ``span``
    (first and last trade time), a bar the trades do not cover from its start to its end fires nothing (its close
    is where the file was cut, issue 22)."""
    fired = set()
    for ts, close in candles["5m"]["close"].items():
        if close > level:
            fired.add(("above", "5m", ts))
    one = candles["1m"]["close"]
    previous = one.shift(1)
    for ts, close in one.items():
        if close < level:
            fired.add(("below", "1m", ts))
        prev = previous[ts]
        if pd.notna(prev) and prev <= level < close:
            fired.add(("crosses-up", "1m", ts))
        if pd.notna(prev) and prev >= level > close:
            fired.add(("crosses-down", "1m", ts))
    if span is not None:
        fired = {(r, tf, ts) for r, tf, ts in fired if span[0] <= ts and ts + TF_MS[tf] <= span[1] + 1}
    return fired


@pytest.mark.parametrize("name", list(RECORDINGS))
def test_backtest_candles_equal_pandas_and_alerts_equal_an_independent_scan(name, tmp_path):
    relative, exchange, symbol = RECORDINGS[name]
    path = shared_data(relative)
    trades = read_reference_trades(path)
    expected = {tf: reference_candles(trades, rule) for tf, rule in TIMEFRAMES.items()}
    # A level the market crosses in both directions: the median 1m close.
    level = int(expected["1m"]["close"].median())
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(level=Decimal(level) / SCALE))
    out = tmp_path / "out"

    result = CliRunner().invoke(app, ["backtest", str(path), "--rules", str(rules), "--out", str(out),
                                      "--exchange", exchange, "--symbol", symbol,
                                      "--timeframes", ",".join(TIMEFRAMES)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    for tf in TIMEFRAMES:
        got = built_candles(out / f"candles_{tf}.csv")
        want = expected[tf]
        assert list(got.index) == list(want.index), f"{tf}: bucket starts differ"
        pd.testing.assert_frame_equal(got[list(want.columns)], want, check_names=False, obj=f"{name} {tf} candles")

    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    got_alerts = {(a["rule"], a["timeframe"], a["timestamp"]) for a in alerts}
    span = (int(trades["ts"].min()), int(trades["ts"].max()))
    if day := re.search(r"-(\d{4}-\d{2}-\d{2})\.csv$", path.name):  # a Binance archive's name: the whole day
        start = int(pd.Timestamp(day[1], tz="UTC").value // 10**6)
        span = (start, start + 86_400_000 - 1)
    assert got_alerts == reference_alerts(expected, level, span)
    assert len(alerts) == len(got_alerts), "an alert was written twice"
    closes = {(tf, ts): c for tf, df in expected.items() for ts, c in df["close"].items()}
    for a in alerts:
        assert a["symbol"] == symbol
        assert scaled(a["price"]) == closes[(a["timeframe"], a["timestamp"])]
