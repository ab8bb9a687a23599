"""Notifier against a real redis-server: console + JSONL delivery, ack after writing, no duplicates on re-delivery
or claim, undecodable alerts dead-lettered while the rest flows."""

from __future__ import annotations

import json

from services.notifier.app import NotifierApp
from services.notifier.settings import Settings
from shared import streams
from shared.bus import FIELD, Bus
from tests.integration.notifier.helpers import make_alert, publish, run_until_caught_up

#: These tests run the notifier with partitions: 1 (one alerts stream: delivery order is publish order).
ONE_STREAM = streams.part_alerts(0)


def settings(tmp_path, **kw) -> Settings:
    return Settings(jsonl_path=tmp_path / "alerts.jsonl", consumer_name="n1", block_ms=50, partitions=1, **kw)


def jsonl_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_row(alert) -> dict:
    # Independent of the notifier's formatting code: the schema's own JSON dump.
    return json.loads(alert.model_dump_json())


async def test_each_alert_lands_once_in_jsonl_and_on_console(redis, tmp_path, capsys):
    alerts = [make_alert(i) for i in range(25)]
    await publish(redis, alerts, 1)
    app = NotifierApp(settings(tmp_path), redis)
    await run_until_caught_up(app, redis)
    rows = jsonl_rows(tmp_path / "alerts.jsonl")
    assert rows == [expected_row(a) for a in alerts]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 25
    for a, line in zip(alerts, out):
        for part in (a.rule, a.exchange, a.symbol, a.timeframe, str(a.price), a.message, a.severity.upper()):
            assert part in line
        assert "2023-11-14 22:1" in out[0]  # fired_at 1_700_000_060_000 ms is 2023-11-14 22:14:20 UTC
    assert await redis.get(streams.notify_sent(alerts[0].id, "jsonl")) == b"done"


async def test_redelivered_and_claimed_entries_do_not_duplicate(redis, tmp_path):
    alerts = [make_alert(i) for i in range(10)]
    await publish(redis, alerts, 1)
    await run_until_caught_up(NotifierApp(settings(tmp_path), redis), redis)
    # Rewind the group: every alert is delivered again to the same consumer, as after a crash before XACK.
    await redis.xgroup_setid(ONE_STREAM, streams.GROUP_NOTIFIER, "0")
    await run_until_caught_up(NotifierApp(settings(tmp_path), redis), redis)
    # Rewind again and leave the entries pending on a dead consumer; a new one claims them.
    await redis.xgroup_setid(ONE_STREAM, streams.GROUP_NOTIFIER, "0")
    got = await redis.xreadgroup(streams.GROUP_NOTIFIER, "ghost", {ONE_STREAM: ">"}, count=100)
    assert len(got[0][1]) == 10
    more = [make_alert(i) for i in range(10, 13)]
    await publish(redis, more, 1)
    app = NotifierApp(settings(tmp_path, claim_idle_ms=1), redis)
    await run_until_caught_up(app, redis)
    rows = jsonl_rows(tmp_path / "alerts.jsonl")
    assert rows == [expected_row(a) for a in alerts + more]
    assert app.delivery.skipped >= 10 * 2  # console and jsonl both skipped for the claimed ones


async def test_undecodable_entry_goes_to_dead_letter_and_the_rest_flows(redis, tmp_path):
    good = [make_alert(i) for i in range(4)]
    await publish(redis, good[:2], 1)
    await Bus(redis).publish(ONE_STREAM, b"\xc1 not msgpack")
    await Bus(redis).publish(ONE_STREAM, good[0].encode()[:-3])  # truncated
    await publish(redis, good[2:], 1)
    await run_until_caught_up(NotifierApp(settings(tmp_path), redis), redis)
    assert jsonl_rows(tmp_path / "alerts.jsonl") == [expected_row(a) for a in good]
    dead = await redis.xrange(streams.DEAD_LETTER)
    assert [d[1][FIELD] for d in dead] == [b"\xc1 not msgpack", good[0].encode()[:-3]]
    assert all(d[1][b"source"] == ONE_STREAM.encode() for d in dead)


async def test_jsonl_lines_written_before_a_crash_are_not_written_again(redis, tmp_path):
    # A notifier killed after the fsync but before its Redis record: the lines are in the file, no record exists,
    # and the last line is torn. The restarted notifier must neither duplicate nor keep the torn line.
    alerts = [make_alert(i) for i in range(5)]
    path = tmp_path / "alerts.jsonl"
    path.write_text("".join(json.dumps(expected_row(a)) + "\n" for a in alerts[:3]) + '{"id": "a00')
    await publish(redis, alerts, 1)
    await run_until_caught_up(NotifierApp(settings(tmp_path), redis), redis)
    assert jsonl_rows(path) == [expected_row(a) for a in alerts]
