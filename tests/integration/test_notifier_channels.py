"""Notifier channels with real local receivers: JSON webhook (500 / 429 Retry-After / 4xx), email via aiosmtpd,
grouping of bursts, start-up validation of channel URLs, per-target dead letters."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.notifier.app import NotifierApp
from services.notifier.settings import Settings
from services.notifier.targets import build_targets
from shared import streams
from shared.errors import ConfigError
from shared.schemas import Alert
from tests.integration.notifier.helpers import make_alert, publish, run_until_caught_up
from tests.integration.notifier.receivers import smtp_server, wait_for, webhook_receiver

#: These tests run the notifier with partitions: 1 (one alerts stream: delivery order is publish order).
ONE_STREAM = streams.part_alerts(0)


def settings(tmp_path, channels: dict[str, str], **kw) -> Settings:
    base = dict(jsonl_path=tmp_path / "alerts.jsonl", console=False, consumer_name="n1", block_ms=50,
                channels=channels, default_channels=["jsonl", *channels], backoff_base_s=0.05, backoff_cap_s=0.2,
                rate_per_s=1000, burst=1000, partitions=1)
    base.update(kw)
    return Settings(**base)


def alerts_in(bodies: list[dict]) -> list[str]:
    return [a["id"] for body in bodies for a in body["alerts"]]


async def test_webhook_retries_500_and_honours_429_retry_after(redis, tmp_path):
    script = [(500, {}), (503, {}), (429, {"Retry-After": "1"}), (500, {})]
    async with webhook_receiver(script) as hook:
        alert = make_alert(1)
        await publish(redis, [alert], 1)
        await run_until_caught_up(NotifierApp(settings(tmp_path, {"hook": hook.url}), redis), redis)
        assert [r["status"] for r in hook.requests] == [500, 503, 429, 500, 200]
        gap = hook.requests[3]["t"] - hook.requests[2]["t"]
        assert 1.0 <= gap < 2.5  # waited Retry-After, not the 0.2 s backoff cap
        assert all(r["t2"] - r["t1"] <= 0.35 for r in (
            {"t1": hook.requests[i]["t"], "t2": hook.requests[i + 1]["t"]} for i in (0, 1, 3)))
        body = hook.delivered()[0]
        assert body["count"] == 1 and Alert.model_validate(body["alerts"][0]) == alert
        keys = {r["headers"]["Idempotency-Key"] for r in hook.requests}
        assert len(keys) == 1  # the same key on every retry of the same group
    assert await redis.get(streams.notify_sent(alert.id, "hook")) == b"done"
    assert await redis.xlen(streams.NOTIFY_DEAD_LETTER) == 0


async def test_permanent_4xx_is_not_retried_and_dead_lettered_while_other_targets_deliver(redis, tmp_path):
    async with webhook_receiver([(404, {})]) as bad, webhook_receiver() as good:
        alert = make_alert(2)
        await publish(redis, [alert], 1)
        app = NotifierApp(settings(tmp_path, {"bad": bad.url, "good": good.url}), redis)
        await run_until_caught_up(app, redis)
        assert [r["status"] for r in bad.requests] == [404]
        assert alerts_in(good.delivered()) == [alert.id]
    dead = await redis.xrange(streams.NOTIFY_DEAD_LETTER)
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"alert_id"] == alert.id.encode() and fields[b"target"] == b"bad"
    assert b"permanent" in fields[b"reason"] and b"HTTP 404" in fields[b"reason"]
    assert Alert.decode(fields[b"d"]) == alert
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["id"] == alert.id


async def test_transient_failures_dead_letter_after_max_attempts(redis, tmp_path):
    async with webhook_receiver([(500, {})] * 10) as hook:
        await publish(redis, [make_alert(3)], 1)
        await run_until_caught_up(NotifierApp(settings(tmp_path, {"hook": hook.url}, max_attempts=3), redis), redis)
        assert [r["status"] for r in hook.requests] == [500, 500, 500]
    dead = await redis.xrange(streams.NOTIFY_DEAD_LETTER)
    assert b"gave up after 3 attempts: HTTP 500" in dead[0][1][b"reason"]


async def test_burst_is_grouped_into_one_message_per_target(redis, tmp_path):
    alerts = [make_alert(i, symbol=f"C{i}/USDT") for i in range(40)]
    async with webhook_receiver() as hook:
        s = settings(tmp_path, {"hook": hook.url}, group_window_s=0.5)
        app = NotifierApp(s, redis)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        for i in range(0, 40, 8):  # the burst arrives in pieces within the window
            await publish(redis, alerts[i:i + 8], 1)
            await asyncio.sleep(0.03)
        await wait_for(lambda: len(hook.requests) >= 1)
        await asyncio.sleep(0.3)
        stop.set()
        await task
        assert len(hook.requests) == 1
        assert sorted(alerts_in(hook.delivered())) == sorted(a.id for a in alerts)
        assert hook.delivered()[0]["title"].startswith("[CRITICAL] 40 alerts")
    # the local JSONL target still writes one line per alert
    assert [json.loads(line)["id"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()] \
        == [a.id for a in alerts]


async def test_email_through_a_real_smtp_server(redis, tmp_path):
    with smtp_server() as (port, messages):
        url = f"mailto://127.0.0.1:{port}?from=alerts@example.com&to=ops@example.com"
        alert = make_alert(5, message="breakout <confirmed>")
        await publish(redis, [alert], 1)
        await run_until_caught_up(NotifierApp(settings(tmp_path, {"email": url}), redis), redis)
        assert len(messages) == 1
    msg = messages[0]
    assert msg["To"] == "ops@example.com" and "alerts@example.com" in msg["From"]
    assert alert.rule in msg["Subject"] and alert.symbol in msg["Subject"]
    part = msg.get_body(("html",))
    assert part is not None
    html_body = part.get_content()
    assert "<table" in html_body and "breakout &lt;confirmed&gt;" in html_body and str(alert.price) in html_body


def test_bad_channel_urls_are_refused_at_start_naming_the_channel_without_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("MISSING_TOKEN", raising=False)
    s = settings(tmp_path, {"tg": "tgram://not-a-valid-token-s3cret/", "ops": "nosuchscheme://u:hunter2@h/p",
                            "env": "tgram://${MISSING_TOKEN}/1", "hook": "json://127.0.0.1:9/x"},
                 routes=[{"channels": ["nope"], "severity": ["critical"]}])
    with pytest.raises(ConfigError) as err:
        build_targets(s)
    text = str(err.value)
    for name in ("notifier.channels.tg", "notifier.channels.ops", "notifier.channels.env", "MISSING_TOKEN",
                 "notifier.routes.0.channels: unknown channel 'nope'"):
        assert name in text
    assert "hook" not in text
    assert "s3cret" not in text and "hunter2" not in text


async def test_telegram_and_discord_get_markdown_with_secrets_from_the_environment(redis, tmp_path, monkeypatch,
                                                                                    caplog):
    from apprise.plugins.discord import NotifyDiscord
    from apprise.plugins.telegram import NotifyTelegram

    from tests.integration.notifier.receivers import chat_api

    token = "123456789:AAAbbbCCCdddEEEfffGGGhhhIIIjjjKKKlll"
    monkeypatch.setenv("TG_TOKEN", token)
    monkeypatch.setenv("DISCORD_SECRET", "abcdefghijklmnopqrstuvwxyz")
    async with chat_api() as (port, got):
        monkeypatch.setattr(NotifyTelegram, "notify_url", f"http://127.0.0.1:{port}/bot")
        monkeypatch.setattr(NotifyDiscord, "notify_url", f"http://127.0.0.1:{port}/api/webhooks")
        s = settings(tmp_path, {"tg": "tgram://${TG_TOKEN}/987654", "dc": "discord://1234567890/${DISCORD_SECRET}"},
                     default_channels=["jsonl"], always_channels=[],
                     routes=[{"severity": ["critical"], "channels": ["tg", "dc"]}])
        critical = make_alert(2, message="breakout_confirmed")  # i % 3 == 2 → critical
        info = make_alert(3)
        await publish(redis, [critical, info], 1)
        await run_until_caught_up(NotifierApp(s, redis), redis)
    by_path = {g["path"]: g["body"] for g in got}
    assert set(by_path) == {f"/bot{token}/sendMessage", "/api/webhooks/1234567890/abcdefghijklmnopqrstuvwxyz"}
    tg = by_path[f"/bot{token}/sendMessage"]
    assert tg["chat_id"] == 987654 and tg["parse_mode"].lower().startswith("markdown")
    dc = by_path["/api/webhooks/1234567890/abcdefghijklmnopqrstuvwxyz"]
    for text in (tg["text"], dc["content"]):
        assert "rule\\_2" in text and "`S2/USDT`" in text and "breakout\\_confirmed" in text
        assert f"`{critical.price}`" in text
        assert info.id not in text and "rule\\_0" not in text  # info alert routed to jsonl only
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [info.id]  # critical goes only where its route says
    assert token not in caplog.text and "abcdefghijklmnopqrstuvwxyz" not in caplog.text


async def test_token_bucket_paces_messages_to_a_target(redis, tmp_path):
    async with webhook_receiver() as hook:
        s = settings(tmp_path, {"hook": hook.url}, rate_per_s=10.0, burst=2, max_group=1)
        await publish(redis, [make_alert(i) for i in range(8)], 1)
        await run_until_caught_up(NotifierApp(s, redis), redis)
        times = [r["t"] for r in hook.requests]
    assert len(times) == 8
    # Token bucket law: any n consecutive sends span at least (n - burst) / rate seconds.
    for i in range(8):
        for j in range(i + 1, 8):
            assert times[j] - times[i] >= (j - i + 1 - 2) / 10.0 - 0.02, (i, j)
    assert times[-1] - times[0] < 2.0  # and it is not slower than needed


async def test_failures_are_logged_without_credentials(redis, tmp_path, caplog):
    caplog.set_level("INFO")
    async with webhook_receiver([(500, {}), (401, {})]) as hook:
        url = f"json://robot:hunter2@127.0.0.1:{hook.port}/hook?token=s3cret"
        await publish(redis, [make_alert(1)], 1)
        await run_until_caught_up(NotifierApp(settings(tmp_path, {"hook": url}), redis), redis)
        assert hook.requests[0]["headers"]["Authorization"].startswith("Basic ")
    dead = await redis.xrange(streams.NOTIFY_DEAD_LETTER)
    stored = b"".join(v for _, f in dead for v in f.values() if isinstance(v, bytes))
    assert b"HTTP 401" in stored
    for secret in ("hunter2", "s3cret", "robot"):
        assert secret not in caplog.text and secret.encode() not in stored
    assert "HTTP 500" in caplog.text and "HTTP 401" in caplog.text


async def test_a_slow_target_does_not_hold_back_the_others(redis, tmp_path):
    async with webhook_receiver([(429, {"Retry-After": "3"})]) as slow, webhook_receiver() as fast:
        s = settings(tmp_path, {"slow": slow.url, "fast": fast.url})
        app = NotifierApp(s, redis)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            for i in range(3):
                await publish(redis, [make_alert(i)], 1)
                await wait_for(lambda: len(fast.delivered()) == i + 1, timeout=2.0)  # while "slow" waits 3 s
            assert alerts_in(slow.delivered()) == []
            await wait_for(lambda: len(alerts_in(slow.delivered())) == 3, timeout=8.0)
        finally:
            stop.set()
            await task
    info = await redis.xpending(ONE_STREAM, streams.GROUP_NOTIFIER)
    assert info["pending"] == 0


async def test_rule_naming_an_unknown_channel_dead_letters_that_pair_only(redis, tmp_path):
    alert = make_alert(4, channels=["jsonl", "pager"])
    await publish(redis, [alert], 1)
    await run_until_caught_up(NotifierApp(settings(tmp_path, {}), redis), redis)
    dead = await redis.xrange(streams.NOTIFY_DEAD_LETTER)
    assert [(f[b"target"], f[b"reason"]) for _, f in dead] == [(b"pager", b"unknown channel 'pager'")]
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["id"] == alert.id


async def test_service_wide_bucket_is_shared_by_targets_of_one_scheme(redis, tmp_path):
    async with webhook_receiver() as a, webhook_receiver() as b:
        s = settings(tmp_path, {"a": a.url, "b": b.url}, max_group=1, scheme_rates={"json": 4.0})
        await publish(redis, [make_alert(i) for i in range(4)], 1)
        await run_until_caught_up(NotifierApp(s, redis), redis)
        times = sorted(r["t"] for r in a.requests + b.requests)
    assert len(times) == 8
    # 8 messages through one bucket of 4/s with burst 4: the last leaves >= (8 - 4) / 4 s after the first
    assert times[-1] - times[0] >= 1.0 - 0.05


async def test_alerts_being_retried_are_not_claimable_by_another_replica(redis, tmp_path):
    async with webhook_receiver([(429, {"Retry-After": "1"})] * 2) as hook:
        s = settings(tmp_path, {"hook": hook.url}, claim_idle_ms=300)
        await publish(redis, [make_alert(1)], 1)
        app = NotifierApp(s, redis)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        stolen = []
        try:
            await wait_for(lambda: len(hook.requests) >= 1)
            while len(hook.delivered()) == 0:  # ~2 s of retries, far beyond claim_idle_ms
                result = await redis.xautoclaim(ONE_STREAM, streams.GROUP_NOTIFIER, "other-replica", 300,
                                                count=10)
                stolen.extend(result[1])
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
        assert stolen == []
        assert [r["status"] for r in hook.requests] == [429, 429, 200]
