"""Per-channel body templates (TradingView-style placeholders) and sending each alert alone, with a real local
webhook receiver; expected bodies are built here from the alerts' fields, not from the renderer."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from services.notifier.app import NotifierApp
from services.notifier.settings import Settings
from services.notifier.targets import build_targets
from shared.errors import ConfigError
from tests.integration.notifier.helpers import make_alert, publish, run_until_caught_up
from tests.integration.notifier.receivers import webhook_receiver

JSON_BODY = '{"ticker": "{{ticker}}", "price": {{close}}, "tf": "{{interval}}", "text": "{{rule}}: {{message}}", ' \
            '"desk": "{{labels.n}}", "value": {{value}}}'


def settings(tmp_path, channels: dict, **kw) -> Settings:
    return Settings(jsonl_path=tmp_path / "alerts.jsonl", console=False, consumer_name="n1", block_ms=50,
                    channels=channels, default_channels=list(channels), rate_per_s=1000, burst=1000,
                    group_window_s=0.5, **kw)


async def test_json_and_text_templates_send_each_alert_alone_as_written(redis, tmp_path):
    # a quote and a backslash in the message must stay valid JSON; a price with trailing zeros reads without them
    alerts = [make_alert(i, message=f'crossed "EMA 21" \\ {i}', price=Decimal("61717.63000000") + i)
              for i in range(3)]
    async with webhook_receiver() as as_json, webhook_receiver() as as_text, webhook_receiver() as grouped:
        channels = {"tv": {"url": as_json.url, "body": JSON_BODY},
                    "plain": {"url": as_text.url, "body": "{{ticker}} {{close}} ({{severity}}) {{message}}"},
                    "grouped": grouped.url}
        await publish(redis, alerts)
        await run_until_caught_up(NotifierApp(settings(tmp_path, channels), redis), redis)

        assert [r["headers"]["Content-Type"] for r in as_json.requests] == ["application/json"] * 3
        got = [json.loads(json.dumps(b), parse_float=Decimal) for b in as_json.delivered()]
        expected = [{"ticker": a.symbol.replace("/", ""), "price": a.price, "tf": a.timeframe,
                     "text": f"{a.rule}: {a.message}", "desk": a.labels["n"], "value": a.value} for a in alerts]
        assert sorted(got, key=lambda b: b["price"]) == expected
        assert all("61717.63000000" not in json.dumps(r["body"]) for r in as_json.requests)

        texts = sorted(r["body"] for r in as_text.requests)
        assert texts == sorted(f"{a.symbol.replace('/', '')} {a.price.normalize():f} ({a.severity}) {a.message}"
                               for a in alerts)
        assert all(r["headers"]["Content-Type"].startswith("text/plain") for r in as_text.requests)
        # the reference: the same burst, grouped, is one message of three alerts
        assert [b["count"] for b in grouped.delivered()] == [3]


async def test_alone_sends_the_default_body_one_alert_per_message(redis, tmp_path):
    alerts = [make_alert(i) for i in range(4)]
    async with webhook_receiver() as alone:
        await publish(redis, alerts)
        channels = {"pager": {"url": alone.url, "alone": True}}
        await run_until_caught_up(NotifierApp(settings(tmp_path, channels), redis), redis)
        bodies = alone.delivered()
        assert [b["count"] for b in bodies] == [1, 1, 1, 1]
        assert sorted(b["alerts"][0]["id"] for b in bodies) == [a.id for a in alerts]


def test_bad_templates_are_config_errors_naming_channel_and_cause(tmp_path):
    channels = {"one": {"url": "json://127.0.0.1:9/x", "body": '{"p": {{closee}}}'},
                "two": {"url": "json://127.0.0.1:9/x", "body": '{"p": "{{close}}" "q"}'},
                "ok": {"url": "json://127.0.0.1:9/x", "body": "{{ticker}} at {{close}}"}}
    with pytest.raises(ConfigError) as info:
        build_targets(settings(tmp_path, channels).model_copy(update={"default_channels": ["ok"]}))
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("notifier.channels.one.body — unknown placeholder(s) {{closee}}")
    assert problems[1].startswith("notifier.channels.two.body — not valid JSON once filled in")
