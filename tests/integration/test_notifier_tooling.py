"""``sentinel notify`` tooling and the API-facing history functions, against real redis and real receivers."""

from __future__ import annotations

import asyncio

import yaml
from typer.testing import CliRunner

from services.notifier.app import NotifierApp
from services.notifier.cli import notify_app
from shared.notify_history import dead_letters, recent_deliveries, retry_dead_letters
from services.notifier.settings import Settings
from shared import streams
from shared.runtime import connect
from tests.integration.notifier.helpers import make_alert, publish, run_until_caught_up
from tests.integration.notifier.receivers import smtp_server, webhook_receiver


def write_config(tmp_path, redis_url: str, channels: dict[str, str]):
    path = tmp_path / "sentinel.yaml"
    path.write_text(yaml.safe_dump({"redis_url": redis_url, "notifier": {
        "jsonl_path": str(tmp_path / "alerts.jsonl"), "console": False, "channels": channels,
        "max_attempts": 1, "consumer_name": "n1"}}))
    return path


def test_notify_test_sends_and_reports_without_secrets(tmp_path, redis_url):
    with smtp_server() as (port, messages):
        cfg = write_config(tmp_path, redis_url, {
            "email": f"mailto://127.0.0.1:{port}?from=alerts@example.com&to=ops@example.com",
            "down": "json://robot:hunter2@127.0.0.1:1/hook?token=s3cret"})
        runner = CliRunner()
        ok = runner.invoke(notify_app, ["test", "email", "-c", str(cfg)])
        assert ok.exit_code == 0, ok.output
        assert "delivered" in ok.output and len(messages) == 1
        assert "sentinel-test" in messages[0]["Subject"]
        bad = runner.invoke(notify_app, ["test", "down", "-c", str(cfg)])
        assert bad.exit_code == 1 and "FAILED" in bad.output
        assert "hunter2" not in bad.output and "s3cret" not in bad.output and "robot" not in bad.output
        unknown = runner.invoke(notify_app, ["test", "nope", "-c", str(cfg)])
        assert unknown.exit_code == 1 and "unknown channel 'nope'" in unknown.output


async def test_history_lists_deliveries_and_dead_letters_and_retry_delivers(redis, tmp_path):
    async with webhook_receiver([(400, {})]) as hook:
        s = Settings(jsonl_path=tmp_path / "a.jsonl", console=False, consumer_name="n1", block_ms=50,
                     channels={"hook": hook.url}, default_channels=["jsonl", "hook"])
        alerts = [make_alert(1), make_alert(2)]
        await publish(redis, alerts[:1])
        app = NotifierApp(s, redis)
        await run_until_caught_up(app, redis)
        await publish(redis, alerts[1:])
        await run_until_caught_up(NotifierApp(s, redis), redis)
        dead = await dead_letters(redis)
        assert [(d["alert_id"], d["target"]) for d in dead] == [(alerts[0].id, "hook")]
        assert dead[0]["alert"]["id"] == alerts[0].id and "HTTP 400" in dead[0]["reason"]
        recent = await recent_deliveries(redis)
        got = {(r["target"], tuple(r["alert_ids"]), r["status"]) for r in recent}
        assert got == {("jsonl", (alerts[0].id,), "delivered"), ("hook", (alerts[0].id,), "dead"),
                       ("jsonl", (alerts[1].id,), "delivered"), ("hook", (alerts[1].id,), "delivered")}
        retried = await retry_dead_letters(NotifierApp(s, redis))
        assert [(r["alert_id"], r["status"]) for r in retried] == [(alerts[0].id, "delivered")]
        assert await dead_letters(redis) == []
        ids = [a["id"] for body in hook.delivered() for a in body["alerts"]]
        assert sorted(ids) == sorted(a.id for a in alerts)


def test_dead_letters_cli_lists_and_retry_reports_failure(tmp_path, redis_url):
    async def seed() -> None:
        redis = connect(redis_url)
        await redis.flushall()
        async with webhook_receiver([(403, {})]) as hook:
            s = Settings(jsonl_path=tmp_path / "a.jsonl", console=False, consumer_name="n1", block_ms=50,
                         channels={"hook": hook.url}, default_channels=["hook"])
            await publish(redis, [make_alert(7)])
            await run_until_caught_up(NotifierApp(s, redis), redis)
            url = hook.url
        await redis.aclose()
        return url

    url = asyncio.run(seed())  # the receiver is gone afterwards: retry fails again
    cfg = write_config(tmp_path, redis_url, {"hook": url})
    runner = CliRunner()
    listed = runner.invoke(notify_app, ["dead-letters", "list", "-c", str(cfg)])
    assert listed.exit_code == 0, listed.output
    assert "a0007" in listed.output and "1 dead letter(s)" in listed.output
    retried = runner.invoke(notify_app, ["dead-letters", "retry", "-c", str(cfg)])
    assert retried.exit_code == 1 and "a0007" in retried.output and "dead" in retried.output

    async def count() -> int:
        redis = connect(redis_url)
        try:
            return await redis.xlen(streams.NOTIFY_DEAD_LETTER)
        finally:
            await redis.aclose()

    assert asyncio.run(count()) == 1  # the old entry replaced by the new failure
