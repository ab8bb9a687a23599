"""``sentinel backtest`` on a whole market (issue 22): several files, a folder, a file with a symbol column, two
exchanges in one run, on real recordings and a real redis-server (embedded).

Oracles, independent of sentinel's code: pandas' resample of each recording (Decimal columns, exact), a backtest of
each file alone (the same alerts must come out of the one run), the report page parsed back, and the recordings'
own first and last trade times (partial bars).
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sentinel.backtest.inputs import InputError, resolve
from sentinel.cli import app
from shared.errors import SentinelError
from tests.conftest import REPO, shared_data
from tests.support.candles import pandas_candles

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
XRP = "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"
KRAKEN = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"
SHORT = "binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv"
PAIRS = {("binance", "BTC/USDT"): BTC, ("binance", "XRP/ETH"): XRP, ("kraken", "BTC/USD"): KRAKEN}
SAMPLE_RULES = REPO / "services" / "alert_engine" / "sample_rules.yaml"
TF_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000}
# 3m is asked for by a rule only (not in --timeframes): it must be built all the same.
RULES = """
rules:
  - name: up_1m
    symbols: ["*"]
    timeframe: 1m
    condition: {left: close, op: crosses_up, right: {sma: 3}}
  - name: down_3m
    symbols: ["*"]
    timeframe: 3m
    condition: {left: close, op: crosses_down, right: {sma: 2}}
"""


def backtest(*args: str | Path) -> str:
    result = CliRunner().invoke(app, ["backtest", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def read_candles(path: Path) -> dict[int, tuple]:
    with path.open(newline="") as fh:
        return {int(r["timestamp"]): (Decimal(r["open"]), Decimal(r["high"]), Decimal(r["low"]), Decimal(r["close"]),
                                      Decimal(r["volume"]), Decimal(r["buy_volume"]), Decimal(r["sell_volume"]),
                                      int(r["trades"]), r["partial"]) for r in csv.DictReader(fh)}


def alerts_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]


def keys(alerts: list[dict]) -> set[tuple]:
    return {(a["rule"], a["exchange"], a["symbol"], a["timeframe"], a["ts"]) for a in alerts}


def span_of(path: Path) -> tuple[int, int]:
    with path.open(newline="") as fh:
        ts = [int(r["timestamp"]) for r in csv.DictReader(fh)]
    return min(ts), max(ts)


def candles_name(ex: str, sym: str, tf: str) -> str:
    return f"candles_{ex}_{sym.replace('/', '-')}_{tf}.csv"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run over a folder (two Binance symbols) and a Kraken file; one run per file alone; one run of a file
    holding all three pairs in symbol and exchange columns."""
    tmp = tmp_path_factory.mktemp("market")
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    folder = tmp / "history" / "binance"
    folder.mkdir(parents=True)
    for relative in (BTC, XRP):
        shutil.copy(shared_data(relative), folder / Path(relative).name)
    whole = tmp / "out-whole"
    terminal = backtest(tmp / "history", shared_data(KRAKEN), "--rules", rules, "--out", whole,
                        "--timeframes", "1m,5m")
    alone = {}
    for (ex, sym), relative in PAIRS.items():
        alone[(ex, sym)] = tmp / f"out-{ex}-{sym.replace('/', '-')}"
        backtest(shared_data(relative), "--rules", rules, "--out", alone[(ex, sym)], "--exchange", ex, "--symbol", sym,
                 "--timeframes", "1m,5m")
    rows = []
    for (ex, sym), relative in PAIRS.items():
        with shared_data(relative).open(newline="") as fh:
            rows += [{**r, "symbol": sym, "exchange": ex} for r in csv.DictReader(fh)]
    rows.sort(key=lambda r: int(r["timestamp"]))  # stable: each symbol's own order is kept
    column_file = tmp / "market.csv"
    with column_file.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["exchange", "symbol", "timestamp", "price", "amount", "side", "id"])
        writer.writeheader()
        writer.writerows(rows)
    column = tmp / "out-column"
    backtest(column_file, "--rules", rules, "--out", column, "--timeframes", "1m,5m")
    return {"whole": whole, "alone": alone, "column": column, "terminal": terminal}


@pytest.mark.parametrize("tf", ["1m", "3m", "5m"])
def test_every_pair_of_a_folder_and_a_file_equals_pandas(market, tf):
    for (ex, sym), relative in PAIRS.items():
        got = read_candles(market["whole"] / candles_name(ex, sym, tf))
        want = pandas_candles(shared_data(relative), tf)
        assert sorted(got) == list(want.index), f"{ex} {sym} {tf}: bucket starts differ"
        for ts, row in want.iterrows():
            if row["trades"]:
                assert got[ts][:8] == (row["open"], row["high"], row["low"], row["close"], row["volume"],
                                       row["buy_volume"], row["sell_volume"], row["trades"]), f"{ex} {sym} {tf} {ts}"


def test_one_run_fires_what_each_file_fires_alone(market):
    whole = alerts_of(market["whole"])
    assert whole, "the rules fire on these recordings"
    alone = set().union(*(keys(alerts_of(out)) for out in market["alone"].values()))
    assert keys(whole) == alone
    assert {(a["exchange"], a["symbol"]) for a in whole} == set(PAIRS)
    assert any(a["timeframe"] == "3m" for a in whole), "the rule-only timeframe was evaluated"


def test_a_symbol_column_file_makes_the_same_candles_and_alerts(market):
    for ex, sym in PAIRS:
        for tf in ("1m", "3m", "5m"):
            name = candles_name(ex, sym, tf)
            column, whole = read_candles(market["column"] / name), read_candles(market["whole"] / name)
            assert {ts: row[:8] for ts, row in column.items()} == {ts: row[:8] for ts, row in whole.items()}, name
    # market.csv's name says no day (XRPETH-…-2019-10-11.csv does): its pairs cover their first to last trade, and
    # alerts on the bars around them are left out
    spans = {pair: span_of(shared_data(relative)) for pair, relative in PAIRS.items()}
    inside = {k for k in keys(alerts_of(market["whole"]))
              if spans[k[1:3]][0] <= k[4] and k[4] + TF_MS[k[3]] <= spans[k[1:3]][1] + 1}
    assert keys(alerts_of(market["column"])) == inside


def test_alerts_are_in_time_order_and_none_on_a_partial_bar(market):
    alerts = alerts_of(market["whole"])
    order = [(a["ts"], a["fired_at"]) for a in alerts]
    assert order == sorted(order)
    for a in alerts:
        first, last = span_of(shared_data(PAIRS[(a["exchange"], a["symbol"])]))
        if a["symbol"] == "XRP/ETH":  # a Binance archive's day name: the file covers its whole day
            first = first - first % 86_400_000
            last = first + 86_400_000 - 1
        assert first <= a["ts"] and a["ts"] + TF_MS[a["timeframe"]] <= last + 1, a
    # and each partial bar is marked in the candles files
    first, last = span_of(shared_data(BTC))
    rows = read_candles(market["whole"] / candles_name("binance", "BTC/USDT", "5m"))
    marks = {ts: row[8] for ts, row in rows.items()}
    assert marks == {ts: "1" if ts < first or ts + 300_000 > last + 1 else "0" for ts in rows}
    assert list(marks.values())[0] == "1" and list(marks.values())[-1] == "1"


def test_the_report_is_written_and_its_alert_tables_equal_alerts_jsonl(market):
    page = (market["whole"] / "report.html").read_text()
    shown: dict[str, list[tuple[str, str]]] = {}
    for rule, body in re.findall(r"<details><summary>([^:<]+): \d+ alert\(s\)</summary>(.*?)</details>", page, re.S):
        rows = re.findall(r"<tr><td class=l>([^<]+)</td><td class=l>([^<]+)</td>", body)
        shown[html.unescape(rule)] = sorted((when, html.unescape(pair)) for when, pair in rows)
    from datetime import UTC, datetime

    expected: dict[str, list[tuple[str, str]]] = {}
    for a in alerts_of(market["whole"]):
        when = datetime.fromtimestamp(a["ts"] / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        expected.setdefault(a["rule"], []).append((when, f"{a['exchange']} {a['symbol']}"))
    assert shown == {rule: sorted(rows) for rule, rows in expected.items()}
    assert "wrote" in market["terminal"] and "report.html" in market["terminal"]


def test_a_short_recording_says_why_nothing_fired(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "candles_kraken_BTC-USD_1m.csv"  # a previous backtest's, into the same folder
    stale.write_text("timestamp,open,high,low,close,volume,buy_volume,sell_volume,trades\n")
    terminal = backtest(shared_data(SHORT), "--rules", SAMPLE_RULES, "--out", out)
    assert not stale.exists(), "a previous run's series would join this run's report"
    flat = " ".join(terminal.split())
    # the 46-second recording has one 1m bar: EMA(21) and the 20-bar volume mean cannot be computed
    assert re.search(r"ema_9_21_cross_up fired nothing: warm-up: its condition needs \d+ closed 1m bars .* the data "
                     r"has 1\b", flat), flat
    assert re.search(r"volume_spike fired nothing: warm-up: .* the data has 1\b", flat), flat
    assert (out / "report.html").exists()


def test_a_partial_last_bar_fires_no_bar_close_alert(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: any_5m\n    symbols: ['*']\n    timeframe: 5m\n"
                     "    condition: {left: close, op: above, right: 1}\n"
                     "  - name: other\n    symbols: [ETH/USDT]\n    timeframe: 1m\n"
                     "    condition: {left: close, op: above, right: 1}\n")
    out = tmp_path / "out"
    terminal = backtest(shared_data(SHORT), "--rules", rules, "--out", out)  # data ends at 00:00:46
    assert alerts_of(out) == []
    flat = " ".join(terminal.split())
    assert "1 alert(s) left out: their bar is partial" in flat
    assert "other fired nothing: symbols ['ETH/USDT'] matched no symbol of the data" in flat
    assert [row[8] for row in read_candles(out / "candles_5m.csv").values()] == ["1"]


def test_bad_inputs_name_the_file_line_and_field(tmp_path):
    bad = tmp_path / "many.csv"
    bad.write_text("timestamp,price,amount,side,symbol\n1000,1.5,2,buy,BTC/USDT\n2000,abc,2,buy,ETH/USDT\n")
    with pytest.raises(SentinelError, match=re.escape(f"{bad}:3: field 'price' — expected a decimal number, got 'abc'")):
        CliRunner().invoke(app, ["backtest", str(bad), "--rules", str(SAMPLE_RULES), "--out", str(tmp_path / "o")],
                           catch_exceptions=False)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(InputError, match="no trades files in this folder"):
        resolve([empty])
    with pytest.raises(InputError, match="no such file or folder"):
        resolve([tmp_path / "missing.csv"])
    side = tmp_path / "side.csv"
    side.write_text("timestamp,price,amount,side,symbol\n1000,1.5,2,up,BTC/USDT\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_") and k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "sentinel.cli", "backtest", str(side), "--rules",
                             str(SAMPLE_RULES), "--out", str(tmp_path / "o2")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {side}:2: field 'side' — expected buy or sell, got 'up'"


def test_a_binance_zip_archive_and_a_gzip_csv_read_like_the_plain_csv(tmp_path):
    import gzip
    import zipfile

    plain = shared_data("binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv")
    archive = tmp_path / "zip" / "BTCUSDT-trades-2024-08-08.zip"  # as data.binance.vision serves it
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(plain, "BTCUSDT-trades-2024-08-08.csv")
    packed = tmp_path / "gz" / "BTCUSDT-trades-2024-08-08.csv.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    outs = {}
    for name, path in (("plain", plain), ("zip", archive), ("gz", packed)):
        outs[name] = tmp_path / f"out-{name}"
        backtest(path, "--rules", SAMPLE_RULES, "--out", outs[name], "--timeframes", "1m,5m")
    for tf in ("1m", "5m"):
        want = {ts: row[:8] for ts, row in read_candles(outs["plain"] / f"candles_{tf}.csv").items()}
        assert len(want) >= 4
        for name in ("zip", "gz"):
            assert {ts: row[:8] for ts, row in read_candles(outs[name] / f"candles_{tf}.csv").items()} == want, name


def test_keep_partial_alerts_writes_them_too(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: any_5m\n    symbols: ['*']\n    timeframe: 5m\n"
                     "    condition: {left: close, op: above, right: 1}\n")
    backtest(shared_data(SHORT), "--rules", rules, "--out", tmp_path / "out", "--keep-partial-alerts")
    assert [(a["rule"], a["ts"]) for a in alerts_of(tmp_path / "out")] == [("any_5m", 1610064000000)]


def test_a_rule_on_in_progress_candles_still_fires_in_a_backtest(tmp_path):
    """In-progress candles are built only when a rule reads them: an intrabar rule must keep working. Each bar with
    trades (the partial first and last ones too: an intrabar alert is not a bar-close alert) fires once, at its first
    in-progress candle: the one as of the bar's first trade (a new minute is always a new throttle window), and the
    alert says that time; the bar's close evaluation has the same id."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: intrabar\n    symbols: ['*']\n    timeframe: 1m\n    frequency: once_per_bar\n"
                     "    condition: {left: close, op: above, right: 1}\n")
    out = tmp_path / "out"
    backtest(shared_data(BTC), "--rules", rules, "--out", out)
    with shared_data(BTC).open(newline="") as fh:
        firsts: dict[int, int] = {}
        for r in csv.DictReader(fh):
            ts = int(r["timestamp"])
            firsts.setdefault(ts - ts % 60_000, ts)
    assert sorted((a["ts"], a["fired_at"]) for a in alerts_of(out)) == sorted(firsts.items())
