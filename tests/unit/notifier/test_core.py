"""Pure notifier logic: routing, templates, URL redaction and secrets, retry decisions, token bucket."""

from __future__ import annotations

import html
import json
import random
from decimal import Decimal
from email.utils import format_datetime
from datetime import UTC, datetime

import pytest

from services.notifier import core
from shared.errors import ConfigError
from shared.schemas import Alert


def alert(i: int = 0, **kw) -> Alert:
    base = dict(id=f"id{i}", rule="btc_above", exchange="binance", symbol="BTC/USDT", timeframe="5m",
                ts=1_723_161_000_000, fired_at=1_723_161_300_000, price=Decimal("61837.63"), severity="warning",
                message="BTC > 60k (a_b*c)", labels={"team": "desk"})
    base.update(kw)
    return Alert(**base)


def test_route_prefers_rule_channels_then_matching_routes_then_default():
    routes = [core.Route(("tg", "mail"), frozenset({"critical"})),
              core.Route(("hook",), labels=(("team", "desk"),)),
              core.Route(("tg",), frozenset({"critical", "warning"}), (("team", "ops"),))]
    default = ["console", "jsonl"]
    assert core.route(alert(channels=["x", "y", "x"]), routes, default) == ["x", "y"]
    assert core.route(alert(severity="critical"), routes, default) == ["tg", "mail", "hook"]
    assert core.route(alert(severity="warning"), routes, default) == ["hook"]
    assert core.route(alert(severity="warning", labels={"team": "ops"}), routes, default) == ["tg"]
    assert core.route(alert(severity="info", labels={}), routes, default) == default
    assert core.route(alert(channels=["tg"]), routes, default, always=["jsonl"]) == ["tg", "jsonl"]
    assert core.route(alert(severity="info", labels={}), routes, default, always=["jsonl"]) == default


def test_json_template_carries_every_alert_field_exactly():
    alerts = [alert(i, price=Decimal("0.000012345678901234567890")) for i in range(3)]
    msg = core.render("json", alerts)
    doc = json.loads(msg.body)
    assert doc["count"] == 3
    for a, got in zip(alerts, doc["alerts"]):
        assert set(got) == set(Alert.model_fields)
        assert Decimal(got["price"]) == a.price  # exact, no float
        assert Alert.model_validate(got) == a


def test_markdown_escapes_and_html_escapes():
    a = alert(message="<b>x</b> [link](y) 1.5*2_3")
    md = core.render("markdown", [a]).body
    assert "\\[link\\](y)" in md and "1.5\\*2\\_3" in md and "`BTC/USDT`" in md
    body = core.render("html", [a]).body
    assert html.escape("<b>x</b>") in body and "<b>x</b>" not in body
    assert "61837.63" in body and "binance" in body


def test_group_title_names_count_worst_severity_and_symbols():
    alerts = [alert(i, symbol=f"S{i}/USDT", severity="critical" if i == 7 else "info") for i in range(40)]
    msg = core.render("text", alerts)
    assert msg.title.startswith("[CRITICAL] 40 alerts: ")
    assert len(msg.body.splitlines()) == 40


def test_console_line_has_every_part():
    line = core.console_line(alert())
    # 1_723_161_300_000 ms = 2024-08-08 23:55:00 UTC (datetime, independently)
    stamp = datetime.fromtimestamp(1_723_161_300, UTC).strftime("%Y-%m-%d %H:%M:%S")
    for part in (stamp, "WARNING", "btc_above", "binance", "BTC/USDT", "5m", "61837.63", "BTC > 60k"):
        assert part in line


@pytest.mark.parametrize("url, shown", [
    ("json://user:s3cret@hooks.example.com:8443/x/TOKEN123?token=abc&+X-Key=k", "json://***@hooks.example.com:8443/***?token=***&+X-Key=***"),
    ("tgram://123456789:AAHsecretsecret/-100123", "tgram://***"),
    ("discord://webhook_id/webhook_token", "discord://***"),
    ("mailtos://me:pw@smtp.example.com?to=ops@example.com", "mailtos://***@smtp.example.com?to=***"),
    ("not a url", "***"),
])
def test_redact_url_hides_secrets(url, shown):
    got = core.redact_url(url)
    assert got == shown
    for secret in ("s3cret", "TOKEN123", "AAHsecret", "webhook_token", "pw@", "abc"):
        assert secret not in got


def test_expand_env_names_channel_and_variable():
    assert core.expand_env("tgram://${T}/${C}", "tg", {"T": "1:x", "C": "5"}) == "tgram://1:x/5"
    with pytest.raises(ConfigError) as err:
        core.expand_env("tgram://${TELEGRAM_TOKEN}/1", "telegram", {})
    assert "notifier.channels.telegram" in str(err.value) and "TELEGRAM_TOKEN" in str(err.value)


def test_format_for_channel_types():
    assert core.format_for("t", "tgram://x/y") == "markdown"
    assert core.format_for("d", "discord://x/y") == "markdown"
    assert core.format_for("m", "mailto://h?to=a@b.com") == "html"
    assert core.format_for("w", "json://h/p") == "json"
    assert core.format_for("jsonl", None) == "json"


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert core.parse_retry_after("7", now) == 7.0
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert core.parse_retry_after(date, now) == pytest.approx(30.0)
    assert core.parse_retry_after("garbage", now) is None
    assert core.parse_retry_after(None, now) is None
    assert core.parse_retry_after("-5", now) == 0.0


def test_after_failure_backoff_is_capped_exponential_with_jitter_and_honours_retry_after():
    kw = dict(max_attempts=6, permanent=False, reason="HTTP 500", base=0.5, cap=4.0, retry_after_cap=60.0)
    rng = random.Random(1)
    for attempt in range(1, 6):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [core.after_failure(attempt=attempt, retry_after=None, jitter=rng.random(), **kw).delay
                  for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # jitter spreads over the whole range
    assert core.after_failure(attempt=2, retry_after=9.0, jitter=0.5, **kw).delay == 9.0
    assert core.after_failure(attempt=2, retry_after=600.0, jitter=0.5, **kw).delay == 60.0
    last = core.after_failure(attempt=6, retry_after=None, jitter=0.5, **kw)
    assert not last.retry and "6 attempts" in last.reason
    perm = core.after_failure(attempt=1, retry_after=None, jitter=0.5, **{**kw, "permanent": True})
    assert not perm.retry and perm.reason.startswith("permanent")


def test_permanent_statuses():
    assert [s for s in (400, 401, 403, 404, 408, 410, 422, 425, 429, 500, 502, 503) if core.is_permanent_status(s)] \
        == [400, 401, 403, 404, 410, 422]


def test_token_bucket_allows_burst_then_rate():
    b = core.TokenBucket(rate=2.0, burst=3)
    assert [b.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(10.0) == pytest.approx(0.5)
    assert b.take(10.0) == pytest.approx(1.0)
    # simulate: send each at its allowed time; 20 sends after the burst take 20 / rate seconds
    b = core.TokenBucket(rate=1.0, burst=1)
    t = 0.0
    times = []
    for _ in range(20):
        t += b.take(t)
        times.append(t)
    assert times[-1] == pytest.approx(19.0)
    b.hold(100.0, 5.0)
    assert b.take(100.0) == pytest.approx(5.0)
