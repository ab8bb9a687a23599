"""A backtest output of several symbols (``candles_<exchange>_<BASE-QUOTE>_<tf>.csv``): one chart per series, the
alerts counted per symbol. Candles are pandas' from two real recordings; the alerts are the alert engine's own."""

from __future__ import annotations

import json
from collections import Counter

from sentinel import export
from sentinel.report import write_report
from services.alert_engine.core import AlertEngine
from shared import rules as r
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref

RULES = """
rules:
  - name: cross_ema3
    symbols: ["BTC/*"]
    timeframe: 1m
    condition: {left: close, op: crossing, right: {ema: 3}}
"""
SOURCES = [("binance", "BTC/USDT", "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"),
           ("kraken", "BTC/USD", "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv")]


def test_several_symbols_each_get_their_chart_and_count(tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    engine = AlertEngine(r.load_rules_file(rules_file))
    fired = []
    for exchange, symbol, path in SOURCES:
        candles = pdref.candles_from_csv(shared_data(path), exchange, symbol, "1m", 60_000)
        export.write_candles_csv(tmp_path / f"candles_{exchange}_{symbol.replace('/', '-')}_1m.csv", candles)
        fired += [f.alert for c in candles for f in engine.on_candle(c)]
    export.write_alerts_jsonl(tmp_path / "alerts.jsonl", fired)
    counts = Counter(f"{a.exchange} {a.symbol}" for a in fired)
    assert len(counts) == 2, counts  # the rule fired on both recordings

    report = write_report(tmp_path, rules_file, forward_bars=3)
    assert list(report.output.candles) == [("binance", "BTC/USDT", "1m"), ("kraken", "BTC/USD", "1m")]
    assert report.rules[0].by_symbol == dict(counts)
    html = report.path.read_text()
    data = json.loads(html.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    markers = {(s["exchange"], s["symbol"]): len(s["markers"]) for s in data["series"]}
    assert markers == {("binance", "BTC/USDT"): counts["binance BTC/USDT"],
                       ("kraken", "BTC/USD"): counts["kraken BTC/USD"]}
