"""Issue 19 defect 6: deeply nested or huge rule bodies answer 4xx naming the limit, never 500 (RecursionError)."""

from __future__ import annotations

import json

from services.api.rules_api import MAX_BODY_BYTES
from shared.errors import ConfigError
from shared.rules import parse_rules
from shared.yamlfile import MAX_DEPTH
from tests.integration.test_api_rules import client_for


def nested_rule(levels: int) -> dict:
    """A valid rule whose condition is ``levels`` nested ``all:`` groups around one comparison."""
    condition: dict = {"left": "close", "op": "above", "right": 1}
    for _ in range(levels):
        condition = {"all": [condition]}
    return {"name": "deep", "symbols": ["BTC/USDT"], "condition": condition}


def depth_of(value) -> int:
    """Nesting depth of mappings and lists, counted independently of the loader."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


async def test_nesting_and_size_limits_answer_4xx_naming_the_limit(redis):
    async with client_for(redis) as client:
        yaml_type = {"Content-Type": "application/yaml"}
        brackets = await client.post("/rules", content="[" * 100_000, headers=yaml_type)  # 100 kB: over the size
        assert brackets.status_code == 413 and str(MAX_BODY_BYTES) in brackets.json()["detail"]
        brackets = await client.post("/rules", content="[" * 10_000, headers=yaml_type)  # within it: the depth
        assert brackets.status_code == 422, brackets.text
        assert brackets.json()["detail"] == [f"request body:1: nested deeper than {MAX_DEPTH} levels (the limit for "
                                             "mappings and lists)"]

        deep = await client.post("/rules", json=nested_rule(300))
        assert deep.status_code == 422, deep.text
        assert f"deeper than {MAX_DEPTH}" in deep.json()["detail"][0]

        # the deepest rule the limit lets through is stored and read back as sent
        levels = max(n for n in range(1, 60) if depth_of(nested_rule(n)) <= MAX_DEPTH)
        ok = await client.post("/rules", json=nested_rule(levels))
        assert ok.status_code == 201, ok.text
        assert (await client.get("/rules/deep")).json()["rule"] == nested_rule(levels)
        too_deep = await client.put("/rules/deep", json=nested_rule(levels + 1))
        assert too_deep.status_code == 422

        big = {**nested_rule(1), "name": "big", "labels": {"pad": "x" * MAX_BODY_BYTES}}
        huge = await client.post("/rules", content=json.dumps(big), headers={"Content-Type": "application/json"})
        assert huge.status_code == 413 and str(MAX_BODY_BYTES) in huge.json()["detail"]
        assert (await client.get("/rules/big")).status_code == 404


def test_a_rules_file_nested_too_deep_is_a_located_config_error():
    text = "rules:\n  - name: deep\n    symbols: [BTC/USDT]\n    condition: " + "[" * 5000 + "\n"
    try:
        parse_rules(text, "deep.yaml")
    except ConfigError as exc:
        assert exc.problems[0].startswith("deep.yaml:4: nested deeper than")
    else:
        raise AssertionError("a 5000-level document was accepted")
