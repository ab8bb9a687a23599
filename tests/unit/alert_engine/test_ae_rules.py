"""Rules files: a bad file is refused whole, every problem located as file:line: field.path — expected."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.alert_engine.cli import rules_app
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
    assert "used twice" in info.value.problems[0]


def test_sample_rules_are_valid_and_target_the_simulated_market():
    ruleset = load_rules_file(SAMPLE_RULES)
    # The demo's market is labelled "sim" (--direct) or "binance" (through the local exchange): rules match both.
    assert ruleset.rules and all(rule.exchange is None for rule in ruleset.rules)
    for exchange in ("sim", "binance"):
        assert all(rule.matches(exchange, "BTC/USDT") or rule.matches(exchange, "ETH/USDT") for rule in ruleset.rules)
