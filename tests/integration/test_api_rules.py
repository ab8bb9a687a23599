"""Rules CRUD through the API on a real redis, checked against the alert engine's own rules-file parser."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import yaml

from services.api.app import create_app
from services.api.settings import Settings
from shared import streams
from shared.errors import ConfigError
from shared.rules import parse_rules

RULE = {"name": "btc_up", "exchange": "binance", "symbols": ["BTC/USDT"], "timeframe": "1m",
        "condition": {"left": "close", "op": "crosses_up", "right": {"ema": 21}}, "cooldown": "5m",
        "severity": "warning"}
BAD_YAML = """name: bad_one
symbols: [BTC/USDT]
timeframe: 7m
condition:
  left: close
  op: sideways
  right: 10
"""


def client_for(redis, **settings) -> httpx.AsyncClient:
    app = create_app(Settings(**settings), redis)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_create_get_list_replace_delete_and_export(redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(streams.CHANNEL_RULES)
    async with client_for(redis) as client:
        r = await client.post("/rules", json=RULE)
        assert r.status_code == 201, r.text
        assert (await client.post("/rules", json=RULE)).status_code == 409
        yaml_rule = yaml.safe_dump({**RULE, "name": "eth_down", "symbols": ["ETH/USDT"],
                                    "condition": {"left": "close", "op": "below", "right": 2500}})
        r = await client.post("/rules", content=yaml_rule, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        got = (await client.get("/rules/btc_up")).json()
        assert got["enabled"] is True and got["rule"]["cooldown"] == "5m"
        assert [r["name"] for r in (await client.get("/rules")).json()["rules"]] == ["btc_up", "eth_down"]

        replaced = {**RULE, "condition": {"left": "close", "op": "above", "right": 70000}}
        assert (await client.put("/rules/btc_up", json=replaced)).status_code == 200
        assert (await client.put("/rules/other", json=replaced)).status_code == 422

        export = (await client.get("/rules/export")).text
        # independent check: the alert engine's parser reads the export back to the same rules
        ruleset = parse_rules(export, "export.yaml")
        expected = parse_rules(yaml.safe_dump({"rules": [replaced, yaml.safe_load(yaml_rule)]}), "expected.yaml")
        assert ruleset.rules == expected.rules

        assert (await client.delete("/rules/eth_down")).status_code == 204
        assert (await client.delete("/rules/eth_down")).status_code == 404
        assert (await client.get("/rules/eth_down")).status_code == 404
        assert await redis.hkeys(streams.RULES) == [b"btc_up"]
    names = []
    for _ in range(20):  # a None also stands for the (ignored) subscribe confirmation
        m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if m is not None:
            names.append(m["data"])
    assert names == [b"btc_up", b"eth_down", b"btc_up", b"eth_down"]
    await pubsub.aclose()


async def test_invalid_rule_is_refused_with_the_rules_file_errors(redis):
    # what the engine says about the same rule in a file, located on the same lines
    indented = "rules:\n" + "".join(("  - " if i == 0 else "    ") + line + "\n"
                                    for i, line in enumerate(BAD_YAML.splitlines()))
    try:
        parse_rules(indented, "rules.yaml")
    except ConfigError as exc:
        file_problems = exc.problems
    async with client_for(redis) as client:
        r = await client.post("/rules", content=BAD_YAML, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422
    problems = r.json()["detail"]
    assert len(problems) == len(file_problems) >= 2
    for api_line, file_line in zip(sorted(problems), sorted(file_problems), strict=True):
        # same line numbers (the file has one header line more) and the same path/message after "rules.0."
        where, _, what = api_line.partition(": ")
        fwhere, _, fwhat = file_line.partition(": ")
        assert where.startswith("request body:")
        assert int(where.rsplit(":", 1)[1]) + 1 == int(fwhere.rsplit(":", 1)[1])
        assert fwhat.replace("rules[0].", "").replace("rules.0.", "") == what
    assert any("timeframe" in p and ":3:" in p for p in problems)
    assert await redis.hlen(streams.RULES) == 0


async def test_enable_disable_snooze_and_read_only_token(redis):
    async with client_for(redis, api_token="w", api_read_token="r") as client:
        write, read = {"Authorization": "Bearer w"}, {"Authorization": "Bearer r"}
        assert (await client.post("/rules", json=RULE, headers=read)).status_code == 403
        assert (await client.post("/rules", json=RULE, headers=write)).status_code == 201
        assert (await client.get("/rules", headers=read)).status_code == 200
        r = await client.post("/rules/btc_up/disable", headers=write)
        assert r.json()["enabled"] is False
        assert parse_rules("rules:\n- " + (await redis.hget(streams.RULES, "btc_up")).decode()
                           .replace("\n", "\n  "), "x").rules[0].enabled is False
        assert (await client.post("/rules/btc_up/enable", headers=write)).json()["enabled"] is True
        before = time.time()
        r = await client.post("/rules/btc_up/snooze", json={"duration": "2h"}, headers=write)
        until = datetime.fromisoformat(r.json()["snooze_until"]).timestamp()
        assert before + 7200 - 1 <= until <= time.time() + 7200 + 1
        r = await client.post("/rules/btc_up/snooze", json={}, headers=write)
        assert r.json()["snooze_until"] is None
        r = await client.post("/rules/btc_up/snooze", json={"duration": "soon"}, headers=write)
        assert r.status_code == 422
        assert (await client.post("/rules/nope/enable", headers=write)).status_code == 404


async def test_file_rules_are_listed_next_to_api_rules_read_only(redis, tmp_path):
    from services.alert_engine.app import AlertEngineApp
    from services.alert_engine.settings import Settings as EngineSettings

    file_text = """rules:
  - name: btc_up          # overridden through the API below
    symbols: [BTC/USDT]
    condition: {left: close, op: above, right: 60000}
  - name: from_file
    exchange: binance
    symbols: ["ETH/USDT"]
    timeframe: 5m
    condition: {left: close, op: below, right: 2500.5}
    cooldown: 10m
"""
    path = tmp_path / "rules.yaml"
    path.write_text(file_text)
    engine = AlertEngineApp(EngineSettings(rules_file=path, redis_url="redis://unused", block_ms=50), redis)
    await engine.drain()  # the real engine publishes its file rules
    in_file = {r["name"]: r for r in yaml.safe_load(file_text)["rules"]}  # independent: PyYAML's reading

    async with client_for(redis) as client:
        listed = (await client.get("/rules")).json()["rules"]
        assert [(r["name"], r["source"], r["rule"]) for r in listed] == [
            ("btc_up", "file", in_file["btc_up"]), ("from_file", "file", in_file["from_file"])]
        got = (await client.get("/rules/from_file")).json()
        assert got["source"] == "file" and got["rule"] == in_file["from_file"] and got["enabled"] is True

        # POST of a file rule's name is refused; PUT stores an API override, which the list then shows
        assert (await client.post("/rules", json=RULE)).status_code == 409
        assert (await client.put("/rules/btc_up", json=RULE)).status_code == 200
        assert (await client.post("/rules", json={**RULE, "name": "api_only"})).status_code == 201
        listed = (await client.get("/rules")).json()["rules"]
        assert [(r["name"], r["source"]) for r in listed] == [("api_only", "api"), ("btc_up", "api"),
                                                              ("from_file", "file")]
        assert listed[1]["rule"] == RULE
        assert [r["overrides_file"] for r in listed] == [False, True, False]

        # disable of a file rule stores the file's rule, disabled, as an override
        r = await client.post("/rules/from_file/disable")
        assert r.status_code == 200 and r.json()["source"] == "api" and r.json()["enabled"] is False
        assert r.json()["overrides_file"] is True and (await client.get("/rules/from_file")).json()["overrides_file"]
        assert yaml.safe_load(await redis.hget(streams.RULES, "from_file")) == {**in_file["from_file"],
                                                                                "enabled": False}
        # DELETE removes the override (the file's rule is back); a rule only in the file cannot be deleted
        assert (await client.delete("/rules/from_file")).status_code == 204
        back = (await client.get("/rules/from_file")).json()
        assert back["source"] == "file" and back["enabled"] is True
        r = await client.delete("/rules/from_file")
        assert r.status_code == 409 and "rules file" in r.json()["detail"]
        assert (await client.delete("/rules/nothing")).status_code == 404
        assert await redis.hexists(streams.FILE_RULES, "from_file")

        # the engine reloads a file without from_file: the API no longer lists it
        path.write_text(yaml.safe_dump({"rules": [in_file["btc_up"]]}))
        import os
        os.utime(path, ns=(1, 1))
        assert await engine.reload_rules()
        listed = (await client.get("/rules")).json()["rules"]
        assert [(r["name"], r["source"]) for r in listed] == [("api_only", "api"), ("btc_up", "api")]
        assert (await client.get("/rules/from_file")).status_code == 404


async def test_export_is_the_rule_set_the_engine_runs(redis, tmp_path):
    """File rules + API rules (one overriding a file rule) → one rules file; `sentinel rules check` accepts it and
    the engine's parser reads it back to exactly the rules the running engine merged itself."""
    from typer.testing import CliRunner

    from sentinel.cli import app as cli
    from services.alert_engine.app import AlertEngineApp
    from services.alert_engine.settings import Settings as EngineSettings
    from shared.rules import load_rules_file

    file_rules = [
        {"name": "btc_up", "symbols": ["BTC/USDT"], "condition": {"left": "close", "op": "above", "right": 60000},
         "cooldown": "1m"},
        {"name": "from_file", "exchange": "binance", "symbols": ["ETH/USDT"], "timeframe": "5m",
         "condition": {"left": "close", "op": "below", "right": 2500.5}, "cooldown": "10m"},
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": file_rules}, sort_keys=False))
    engine = AlertEngineApp(EngineSettings(rules_file=path, redis_url="redis://unused", block_ms=50), redis)
    await engine.drain()

    override = {**RULE, "severity": "critical", "message": "override {close}"}  # name btc_up: overrides the file's
    api_only = {**RULE, "name": "api_only", "symbols": ["SOL/USDT"],
                "condition": {"left": "close", "op": "below", "right": 100}}
    async with client_for(redis) as client:
        assert (await client.put("/rules/btc_up", json=override)).status_code == 200
        assert (await client.post("/rules", json=api_only)).status_code == 201
        assert (await client.post("/rules/from_file/disable")).status_code == 200  # an override too
        exported = {src: (await client.get("/rules/export", params={"source": src} if src else None))
                    for src in (None, "all", "api", "file")}
        assert (await client.get("/rules/export", params={"source": "both"})).status_code == 422
    for r in exported.values():
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml")
    assert exported[None].text == exported["all"].text

    out = tmp_path / "export.yaml"
    out.write_text(exported["all"].text)
    result = CliRunner().invoke(cli, ["rules", "check", str(out)])
    assert result.exit_code == 0, result.output
    loaded = load_rules_file(out)

    await engine.drain()  # the engine merges the API's rules over its file (its own code, not the API's)
    assert loaded.by_name() == engine.ruleset.by_name()
    # and independently of both: the override's fields, each name once
    names = [r["name"] for r in yaml.safe_load(exported["all"].text)["rules"]]
    assert names == ["api_only", "btc_up", "from_file"]
    expected = parse_rules(yaml.safe_dump({"rules": [api_only, override, {**file_rules[1], "enabled": False}]}), "x")
    assert loaded.rules == expected.rules
    assert loaded.by_name()["btc_up"].severity == "critical"

    assert parse_rules(exported["api"].text, "api").rules == expected.rules
    assert parse_rules(exported["file"].text, "file").rules == parse_rules(path.read_text(), "f").rules


async def test_export_leaves_out_an_invalid_stored_rule_and_says_so(redis, tmp_path):
    from shared.rules import load_rules_file

    await redis.hset(streams.FILE_RULES, "from_file", yaml.safe_dump({**RULE, "name": "from_file"}))
    await redis.hset(streams.FILE_RULES, "btc_up", yaml.safe_dump(RULE))
    # an API override that no longer validates (e.g. written by an older version): the engine skips it and keeps
    # the file's rule, so the export does the same and names the problem in a comment
    await redis.hset(streams.RULES, "btc_up", yaml.safe_dump({**RULE, "timeframe": "7m"}))
    async with client_for(redis) as client:
        text = (await client.get("/rules/export")).text
    first = text.splitlines()[0]
    assert first.startswith("# left out, invalid: sentinel:rules[btc_up]") and "timeframe" in first
    out = tmp_path / "export.yaml"
    out.write_text(text)
    assert load_rules_file(out).rules == parse_rules(yaml.safe_dump({"rules": [RULE, {**RULE, "name": "from_file"}]}),
                                                     "x").rules
