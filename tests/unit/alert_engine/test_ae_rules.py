"""Rules files: a bad file is refused whole, every problem located as file:line: field.path — expected."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sentinel.rules_cli import rules_app
from services.alert_engine.settings import SAMPLE_RULES
from shared.errors import ConfigError
from shared.rules import check_rules_file, load_rules_file, parse_rules

BAD = """\
rules:
  - name: ok_rule
    symbols: [BTC/USDT]
    condition: {op: above, right: 100}
  - name: bad one
    symbols: "*/USDT"
    timeframe: 7m
    condition: {left: closee, op: crosses_up, right: {ema: -3}}
    cooldown: 5 minutes
    colour: red
  - name: b
    condition:
      all:
        - {op: abovee, right: 100}
        - {left: {macd: {fast: 30}}, op: greater_than, right: 0}
        - {op: moving_up_pct, amount: 1.5, bars: 3}
    message: "{symbol} {nope}"
    severity: loud
"""

EXPECTED = [  # (line, path, words the explanation must contain)
    (5, "rules[1].name", "pattern"),
    (7, "rules[1].timeframe", "'1m'"),
    (8, "rules[1].condition.left", "'close'"),
    (8, "rules[1].condition.right.ema.period", "greater than or equal to 1"),
    (9, "rules[1].cooldown", "duration"),
    (10, "rules[1].colour", "unknown field"),
    (11, "rules[2].symbols", "required"),
    (14, "rules[2].condition.all[0]", "op"),
    (15, "rules[2].condition.all[1].left.macd", "fast must be smaller than slow"),
    (16, "rules[2].condition.all[2]", "percent"),
    (17, "rules[2].message", "nope"),
    (18, "rules[2].severity", "'warning'"),
]


def test_every_problem_is_reported_with_file_line_and_path(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_rules_file(path)
    problems = info.value.problems
    assert len(problems) == len(EXPECTED), "\n".join(problems)
    for (line, field, words), problem in zip(EXPECTED, problems, strict=True):
        assert problem.startswith(f"{path}:{line}: {field} — "), problem
        assert words in problem, problem
    assert check_rules_file(path) == problems


def test_cli_check_prints_problems_and_fails(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(BAD)
    result = CliRunner().invoke(rules_app, ["check", str(path)])
    assert result.exit_code == 1
    assert f"{path}:10: rules[1].colour — unknown field" in result.output
    ok = CliRunner().invoke(rules_app, ["check", str(SAMPLE_RULES)])
    assert ok.exit_code == 0 and "OK" in ok.output


def test_yaml_syntax_error_and_duplicate_names():
    with pytest.raises(ConfigError) as info:
        parse_rules("rules:\n  - name: [unclosed\n", "x.yaml")
    assert info.value.problems[0].startswith("x.yaml:")
    with pytest.raises(ConfigError) as info:
        parse_rules("rules:\n- {name: a, symbols: [X/Y], condition: {op: above, right: 1}}\n"
                    "- {name: a, symbols: [X/Y], condition: {op: above, right: 1}}\n", "d.yaml")
    # at the duplicate's own line, naming the first
    assert info.value.problems == ["d.yaml:3: rules[1].name — 'a' is already the name of rules[0] (line 2); "
                                   "names must be unique"]


def test_sample_rules_are_valid_and_target_the_simulated_market():
    ruleset = load_rules_file(SAMPLE_RULES)
    # The demo's market is labelled "sim" (--direct) or "binance" (through the local exchange): rules match both.
    assert ruleset.rules and all(rule.exchange is None for rule in ruleset.rules)
    # (the futures rule names the perpetuals the local exchange serves beside the spot pairs)
    for exchange in ("sim", "binance"):
        assert all(any(rule.matches(exchange, s) for s in ("BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"))
                   for rule in ruleset.rules)


MISTAKES = """\
rules:
  - name: spot
    symbols: [BTCUSDT, ETH/USDT, "*/USDT"]
    condition: {left: {emma: 9}, op: crosses_up, right: {ema: 21}}
    channels: [telegram, console]
  - name: pairs
    symbols: [ETH/USDT]
    condition: {all: [{op: above, right: 1}, {op: above, right: 2, symbol: SOLUSDC}]}
    channels: [ops_hook, desk]
  - name: spot
    symbols: [XRP/BTC:BTC]
    condition: {op: above, right: 1}
"""

SETTINGS = """\
notifier:
  channels:
    telegram: tgram://123456789:abcdefghijklmnopqrstuvwxyz/12345
    ops_hook: json://127.0.0.1:9/hook
"""


def test_check_names_every_mistake_at_its_line_in_one_run(tmp_path):
    """Symbols without a quote currency (a rule's and a condition's), an unknown indicator (named), a duplicate name
    (at its own line), and with the settings file the channels its notifier does not define: all in one run, in
    file order, each as file:line: path — expected."""
    rules, settings = tmp_path / "rules.yaml", tmp_path / "sentinel.yaml"
    rules.write_text(MISTAKES)
    settings.write_text(SETTINGS)
    result = CliRunner().invoke(rules_app, ["check", str(rules), "--config", str(settings)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"{rules}: 5 problem(s); the file is refused"
    expected = [
        (3, "rules[0].symbols[0]", "'BTCUSDT' has no quote currency (BTC/USDT?)"),
        (4, "rules[0].condition.left", "unknown indicator 'emma'"),
        (8, "rules[1].condition.all[1].symbol", "'SOLUSDC' has no quote currency (SOL/USDC?)"),
        (9, "rules[1].channels[1]", "unknown channel 'desk'"),
        (10, "rules[2].name", "'spot' is already the name of rules[0] (line 2)"),
    ]
    assert len(lines) == len(expected) + 1, result.output
    for (line, path, words), got in zip(expected, lines, strict=False):
        assert got.startswith(f"{rules}:{line}: {path} — ") and words in got, got
    assert f"{settings} defines console, jsonl, ops_hook, telegram" in lines[3]
    # without the settings file channels are not checked: the other four remain
    assert f"{rules}: 4 problem(s)" in CliRunner().invoke(rules_app, ["check", str(rules)]).output


def test_check_with_settings_accepts_defined_channels_and_reports_a_bad_settings_file(tmp_path):
    rules, settings = tmp_path / "rules.yaml", tmp_path / "sentinel.yaml"
    rules.write_text("rules:\n  - {name: a, symbols: [BTC/USDT], condition: {op: above, right: 1}, "
                     "channels: [telegram, jsonl]}\n")
    settings.write_text(SETTINGS)
    ok = CliRunner().invoke(rules_app, ["check", str(rules), "--config", str(settings)])
    assert ok.exit_code == 0 and "OK, 1 rule(s)" in ok.output
    settings.write_text(SETTINGS + "  colour: red\n")
    bad = CliRunner().invoke(rules_app, ["check", str(rules), "--config", str(settings)])
    assert bad.exit_code == 1 and f"{settings}:5: notifier.colour — unknown field" in bad.output


def test_sample_messages_say_what_holds_in_both_states():
    """btc_outside_range alerts when the close leaves 58000-62000 and again (resolved) when it comes back: its
    message must not call a close inside the range "outside" (it said "resolved: close 61000 outside 58000-62000")."""
    from decimal import Decimal

    from services.alert_engine.core import AlertEngine
    from shared.schemas import Candle

    ruleset = load_rules_file(SAMPLE_RULES)
    rule = ruleset.by_name()["btc_outside_range"]
    engine = AlertEngine(ruleset.model_copy(update={"rules": [rule]}))
    messages = {}
    for i, close in enumerate(["60000", "63000", "61000"]):
        p = Decimal(close)
        candle = Candle(exchange="sim", symbol="BTC/USDT", timeframe="5m", ts=i * 300_000, open=p, high=p, low=p,
                        close=p, volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0))
        for f in engine.on_candle(candle):
            messages[f.alert.state] = (close, f.alert.message)
    assert messages["firing"] == ("63000", "BTC/USDT 5m close 63000: outside 58000-62000 is firing")
    assert messages["resolved"] == ("61000", "BTC/USDT 5m close 61000: outside 58000-62000 is resolved")
    for r in ruleset.rules:  # every sample rule that alerts on resolve says which state it is in
        assert not r.notify_on_resolve or "{state}" in r.message, r.name
