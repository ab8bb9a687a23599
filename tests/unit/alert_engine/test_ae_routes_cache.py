"""``Routes.needs`` / ``needs_feeds`` / ``needs_tickers`` / ``lookbacks`` are worked out once per pair and rule set:
the answers equal a plain scan of the rules (written here, independently), follow a rule change, and a caller
changing what it got changes nothing for the next caller."""

from __future__ import annotations

from fnmatch import fnmatchcase

from services.alert_engine.core import AlertEngine
from shared.rules import parse_rules

RULES_A = """
rules:
  - {name: ema, symbols: ["B*/USDT"], timeframe: 5m, condition: {left: {ema: 20}, op: crosses_up, right: {ema: 50}}}
  - {name: eth_on_1h, exchange: x, symbols: ["A1/USDT"], timeframe: 1m,
     condition: {left: close, op: above, right: {ema: 9}, timeframe: 1h, symbol: ETH/USDT}}
  - {name: heavy, symbols: ["B1*/USDT"], frequency: every_time, condition: {left: {imbalance: 10}, op: above,
     right: "0.1"}}
  - {name: funding, symbols: ["C*/USDT"], frequency: every_time, condition: {left: funding_rate, op: above,
     right: "0.001"}}
  - {name: spread, symbols: ["B2*/USDT"], timeframe: 1m, frequency: every_time,
     condition: {left: spread, op: above, right: 1}}
"""
RULES_B = """
rules:
  - {name: rsi, symbols: ["C*/USDT"], timeframe: 15m, condition: {left: {rsi: 14}, op: crosses_up, right: 70}}
  - {name: heavy, symbols: ["C1*/USDT"], frequency: every_time, condition: {left: {imbalance: 25}, op: below,
     right: "-0.1"}}
"""
PAIRS = [("x", f"{p}{i}/USDT") for p in "ABC" for i in range(30)] + [("x", "ETH/USDT"), ("y", "B3/USDT")]
# (the rules above, read by hand: rule -> (symbol patterns, exchange or None, timeframe, feed kinds, tickers?))
EXPECTED_A = {"ema": (["B*/USDT"], None, "5m", set(), False), "eth_on_1h": (["A1/USDT"], "x", "1m", set(), False),
              "heavy": (["B1*/USDT"], None, None, {"book"}, False),
              "funding": (["C*/USDT"], None, None, {"funding"}, False),
              "spread": (["B2*/USDT"], None, "1m", set(), True)}


def _scan_feeds(table: dict, ex: str, sym: str) -> set[str]:
    return {kind for pats, rex, _tf, kinds, _t in table.values()
            if (rex is None or rex == ex) and any(fnmatchcase(sym, p) for p in pats) for kind in kinds}


def test_answers_equal_a_plain_scan_and_follow_a_rule_change() -> None:
    engine = AlertEngine(parse_rules(RULES_A))
    routes = engine.routes
    for _ in range(2):  # the second round is answered from what the first worked out
        for ex, sym in PAIRS:
            want_tfs = {tf for pats, rex, tf, kinds, _t in EXPECTED_A.values() if tf and not kinds
                        and (rex is None or rex == ex) and any(fnmatchcase(sym, p) for p in pats)}
            if ex == "x" and sym == "ETH/USDT":
                want_tfs.add("1h")  # read by eth_on_1h on A1/USDT
            assert routes.needs(ex, sym) == want_tfs, (ex, sym)
            assert routes.needs_feeds(ex, sym) == _scan_feeds(EXPECTED_A, ex, sym), (ex, sym)
            assert routes.needs_tickers(ex, sym) == any(
                t and any(fnmatchcase(sym, p) for p in pats) for pats, _rex, _tf, _k, t in EXPECTED_A.values())
    assert set(routes.lookbacks("x", "ETH/USDT", "1h")) == {"eth_on_1h"}
    assert routes.lookbacks("x", "B5/USDT", "5m")["ema"] >= 50
    assert routes.lookbacks("x", "B5/USDT", "1m") == {}

    engine.set_rules(parse_rules(RULES_B))  # new rules: nothing of the old answers is left
    routes = engine.routes
    for ex, sym in PAIRS:
        c = sym.startswith("C")
        assert routes.needs(ex, sym) == ({"15m"} if c else set()), (ex, sym)
        assert routes.needs_feeds(ex, sym) == ({"book"} if sym.startswith("C1") else set()), (ex, sym)
        assert not routes.needs_tickers(ex, sym)
    assert routes.lookbacks("x", "B5/USDT", "5m") == {}
    assert routes.lookbacks("x", "C5/USDT", "15m")["rsi"] >= 14


def test_a_caller_changing_its_answer_changes_nothing_for_the_next() -> None:
    routes = AlertEngine(parse_rules(RULES_A)).routes
    got = routes.needs("x", "B5/USDT")
    got.add("1d")
    assert routes.needs("x", "B5/USDT") == {"5m"}
    feeds = routes.needs_feeds("x", "B15/USDT")
    feeds.clear()
    assert routes.needs_feeds("x", "B15/USDT") == {"book"}
    back = routes.lookbacks("x", "B5/USDT", "5m")
    back["ema"] = 0
    assert routes.lookbacks("x", "B5/USDT", "5m")["ema"] >= 50
