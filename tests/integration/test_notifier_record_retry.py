"""A notifier whose delivery succeeded while Redis went away records it once Redis is back and does not send it again
(found by the pipeline chaos harness: the group was re-sent with other alerts joined, under another Idempotency-Key,
and the JSONL file got a second line)."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.notifier.app import NotifierApp
from services.notifier.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from tests.integration.notifier.helpers import make_alert, publish
from tests.integration.notifier.receivers import webhook_receiver

#: These tests run the notifier with partitions: 1 (one alerts stream: delivery order is publish order).
ONE_STREAM = streams.part_alerts(0)


async def _pending(redis) -> int:
    try:
        return (await redis.xpending(ONE_STREAM, streams.GROUP_NOTIFIER))["pending"]
    except ResponseError:  # the notifier has not made its group yet
        return 0


async def _caught_up(redis) -> bool:
    try:
        return await Bus(redis).caught_up(ONE_STREAM, streams.GROUP_NOTIFIER)
    except RedisConnectionError:  # pooled connections of before the restart
        return False


async def test_a_send_whose_record_meets_a_redis_outage_is_recorded_later_not_sent_again(own_redis, tmp_path):
    redis = connect(own_redis.url)
    alerts = [make_alert(i) for i in range(6)]
    try:
        async with webhook_receiver(delay=1.0) as hook:  # the request is in flight for 1 s
            settings = Settings(jsonl_path=tmp_path / "alerts.jsonl", console=False, consumer_name="n1", block_ms=50,
                                partitions=1,
                                channels={"hook": hook.url}, default_channels=["hook"], always_channels=[],
                                rate_per_s=1000, burst=1000)
            app = NotifierApp(settings, redis)
            await publish(redis, alerts, 1)
            stop = asyncio.Event()
            runner = asyncio.create_task(app.run(stop))
            async with asyncio.timeout(10):  # read and sent: pending in the group
                while not await _pending(redis):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            own_redis.kill()  # gone when the receiver answers 200, back 1.5 s later (AOF)
            await asyncio.sleep(1.5)
            own_redis.start()
            async with asyncio.timeout(30):
                while not await _caught_up(redis):
                    assert not runner.done(), runner
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(runner, 10)
        on_the_wire = [a["id"] for r in hook.requests for a in r["body"]["alerts"]]
        assert sorted(on_the_wire) == sorted(a.id for a in alerts), on_the_wire  # each sent once
        assert [await redis.get(streams.notify_sent(a.id, "hook")) for a in alerts] == [b"done"] * len(alerts)
    finally:
        await redis.aclose()
