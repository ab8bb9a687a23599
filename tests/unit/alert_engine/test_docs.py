"""docs/rules.md: every example loads with the engine's parser, and every operator, indicator, field, frequency,
rule key and placeholder the parser knows is documented there."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from shared import rules as r

DOC = Path(__file__).resolve().parents[3] / "docs" / "rules.md"


def _examples() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_example_is_a_valid_rules_file():
    examples = _examples()
    assert len(examples) >= 4
    names = []
    for text in examples:
        ruleset = r.parse_rules(text, str(DOC))
        assert ruleset.rules
        names += [rule.name for rule in ruleset.rules]
    assert len(names) >= 11


def test_everything_the_parser_knows_is_documented():
    text = DOC.read_text()
    documented = set(re.findall(r"`([^`]+)`", text)) | set(re.findall(r"[{(]?(\w+)[})]?", text))
    known = {
        *r.COMPARE_OPS, *r.CHANNEL_OPS, *r.MOVE_OPS, "volume_spike", "all", "any", *r.INDICATORS,
        *r.CANDLE_FIELDS, *r.TICKER_FIELDS, *r.BOOK_FIELDS, *r.DERIVS_FIELDS, *r.FEEDS, *typing.get_args(r.Frequency), *r.PLACEHOLDERS,
        *(f.alias or name for name, f in r.Rule.model_fields.items()),
    }
    missing = sorted(k for k in known if k not in documented)
    assert not missing, f"not in docs/rules.md: {missing}"
    for placeholder in r.PLACEHOLDERS:
        assert "{" + placeholder + "}" in text
