"""sentinel.client against a real redis (killed and restarted) and a real API server."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from sentinel.client import ClientError, SentinelClient
from services.api.app import ApiApp
from services.api.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from shared.schemas import Alert, Candle
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from tests.support.subscriptions import subscribers
from tests.support.candles import candles_stream, publish_live

EX, SYM, TF = "sim", "BTC/USDT", "1m"


def candle(i: int, closed: bool = True) -> Candle:
    p = Decimal("100.5") + i
    return Candle(exchange=EX, symbol=SYM, timeframe=TF, ts=i * 60_000, open=p, high=p + 2, low=p - 1,
                  close=p + 1, volume=Decimal("4"), buy_volume=Decimal("3"), sell_volume=Decimal("1"), closed=closed)


async def publish_until(redis, channel: str, data: bytes, got: list, n: int, timeout: float = 15) -> None:
    """PUBLISH until the subscriber has ``n`` events (the subscription may still be (re)connecting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < n:
        if loop.time() > deadline:
            pytest.fail(f"only {len(got)} events arrived")
        with contextlib.suppress(RedisConnectionError, OSError):  # the publisher's own connection died with the server
            await redis.publish(channel, data)
        await asyncio.sleep(0.05)


async def test_subscribe_yields_typed_events_and_survives_a_redis_restart(own_redis):
    publisher = connect(own_redis.url)
    client = SentinelClient(own_redis.url, max_backoff=0.5)
    got: list = []

    async def consume() -> None:
        async with contextlib.aclosing(client.subscribe(series=[(EX, SYM, TF)], alerts=True)) as events:
            async for event in events:
                got.append(event)

    task = asyncio.create_task(consume())
    await publish_until(publisher, streams.channel_candles_live(EX, SYM, TF), candle(1, False).encode(), got, 1)
    assert got[0].kind == "candle_live" and got[0].value == candle(1, False)
    assert (await subscribers(publisher)).get("sim|BTC/USDT|1m") == 1

    own_redis.stop()
    await asyncio.sleep(0.3)
    own_redis.start()
    mark = len(got)
    alert = Alert(id="a1", rule="r", exchange=EX, symbol=SYM, ts=1, fired_at=2, price=Decimal("1.25"))
    await publish_until(publisher, streams.CHANNEL_ALERTS, alert.encode(), got, mark + 2)
    kinds = [e.kind for e in got[mark:]]
    assert kinds[0] == "reconnected" and "alert" in kinds
    assert next(e.value for e in got[mark:] if e.kind == "alert") == alert
    assert client.reconnects == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.aclose()
    await publisher.aclose()


async def test_history_and_states_through_the_api(redis_url, redis):
    bus = Bus(redis)
    for i in range(30):
        await bus.publish(candles_stream(EX, SYM, TF), candle(i).encode())
    await publish_live(redis, candle(30, False))
    alerts = [Alert(id=f"a{i}", rule="r" if i % 2 else "q", exchange=EX, symbol=SYM, ts=i, fired_at=i + 1)
              for i in range(25)]
    for a in alerts:
        await bus.publish(streams.part_alerts(partition_of(EX, SYM, DEFAULT_PARTITIONS)), a.encode())
    server_redis = connect(redis_url)
    api = ApiApp(Settings(port=0, api_token="t", shutdown_grace_s=1), server_redis)
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))
    await asyncio.wait_for(api.started.wait(), 10)
    try:
        async with SentinelClient(redis_url, api_url=api.url, token="t") as client:
            got = await client.candles(EX, SYM, TF, limit=10, live=True)
            assert got == [candle(i) for i in range(20, 30)] + [candle(30, False)]
            history = await client.alert_history(rule="r", limit=5)
            assert [a.id for a in history] == [a.id for a in reversed(alerts) if a.rule == "r"][:5]
            assert await client.rule_states() == []
        async with SentinelClient(redis_url, api_url=api.url, token="wrong") as client:
            with pytest.raises(ClientError) as info:
                await client.rule_states()
            assert info.value.status == 401
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server_redis.aclose()
