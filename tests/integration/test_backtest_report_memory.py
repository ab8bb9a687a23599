"""``sentinel backtest`` hands the report what it just wrote (in memory) instead of reading its files back: the page
must be the very page ``sentinel report`` makes from those files (one pair, and several pairs of two exchanges)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sentinel.cli import app
from sentinel.report import write_report
from tests.conftest import shared_data

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
KRAKEN = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"
RULES = """
rules:
  - {name: up_1m, symbols: ["*"], timeframe: 1m, condition: {left: close, op: crosses_up, right: {sma: 3}}}
  - {name: ema_5m, symbols: ["*"], timeframe: 5m, condition: {left: {ema: 3}, op: crossing, right: {sma: 4}}}
  - {name: never, symbols: ["*"], timeframe: 1m, condition: {op: above, right: 100000000}}
"""


@pytest.mark.parametrize("inputs", [[BTC], [BTC, KRAKEN]], ids=["one pair", "two exchanges"])
def test_the_backtests_report_equals_the_report_of_its_files(tmp_path: Path, inputs: list[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    out = tmp_path / "out"
    extra = ["--exchange", "binance", "--symbol", "BTC/USDT"] if len(inputs) == 1 else []
    result = CliRunner().invoke(app, ["backtest", *map(str, map(shared_data, inputs)), "--rules", str(rules), "--out",
                                      str(out), "--timeframes", "1m,5m", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "up_1m" in page and "chart-0" in page
    one = ("binance", "BTC/USDT") if len(inputs) == 1 else (None, None)
    write_report(out, rules, exchange=one[0], symbol=one[1])  # from the files, as `sentinel report` reads them
    assert (out / "report.html").read_text() == page
