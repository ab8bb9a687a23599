"""Subscriptions through a Redis outage longer than their TTL (issue 19): no heartbeat can refresh a subscriber's
set meanwhile, yet candle_builder, the one running through it and one started while Redis was away, must not drop
(or start without) a timeframe only a subscriber asked for before that subscriber's next heartbeat. The chaos bench
saw a restarted builder start without the 1s its engine asked for: another base timeframe, its saved state unusable,
partial candles. Real redis-server (stopped and started from its AOF), the real CandleBuilderApp, a real recording."""

from __future__ import annotations

import asyncio

from redis import exceptions as redis_errors

from shared import streams
from shared.runtime import connect
from shared.subscriptions import UNTIL, Subscriptions
from tests.conftest import shared_data
from tests.integration.test_candle_builder_lookback import running_builder, wait_for
from tests.support.candles import (RECORDINGS, builder_caught_up, check_against_pandas, publish, read_candles,
                                   read_trades, settings_for)


async def test_a_timeframe_only_a_subscriber_asked_for_survives_an_outage_longer_than_the_ttl(own_redis):
    ex, sym, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    half = len(trades) // 2
    redis = connect(own_redis.url)
    engine = Subscriptions(redis, ttl_ms=1_500)  # the subscriber (as alert_engine: its heartbeat refreshes it)
    await engine.publish("engine-1", {(ex, sym, "1m"): 0})  # the builder's own timeframe is 5m: 1m is the base
    await publish(redis, ex, sym, trades[:half], per_entry=50, final=False)
    settings = settings_for(own_redis.url, timeframes=["5m"])

    def builds_1m(app) -> bool:
        return "1m" in app.wanted.get((ex, sym), set())

    try:
        async with running_builder(redis, settings) as first:
            await wait_for(lambda: _true(builds_1m(first)), "the subscribed 1m followed")
            await wait_for(lambda: builder_caught_up(redis), "the first half built")
            own_redis.stop()
            await asyncio.sleep(3.0)  # longer than the TTL: the set is stale when Redis is back
            own_redis.start()
            until = int(await redis.hget(streams.subscriber("engine-1"), UNTIL))
            assert until < _ms(await redis.time())  # stale: not refreshed within its TTL
            dropped = False
            for _ in range(20):  # the subscriber's next heartbeat comes 1 s later
                dropped |= not builds_1m(first)
                await asyncio.sleep(0.05)
            assert not dropped, "the running builder dropped 1m while its subscriber's set was stale"
        # a builder started while the set is stale (killed and restarted during the outage)
        async with running_builder(redis, settings) as second:
            await wait_for(lambda: _true(bool(second.wanted)), "the new builder's first discovery", timeout=5)
            assert builds_1m(second), "the restarted builder started without 1m"
            for _ in range(100):  # the subscriber's heartbeat: its set is live again (the client's pool still holds
                try:  # connections opened before the restart, one per partition worker of the first builder: a
                    await engine.refresh("engine-1")  # heartbeat retries after a connection error, as here)
                    break
                except redis_errors.ConnectionError:
                    await asyncio.sleep(0.02)
            await publish(redis, ex, sym, trades[half:], per_entry=50)
            await wait_for(lambda: builder_caught_up(redis), "caught up")
            assert builds_1m(second)
        for tf in ("1m", "5m"):
            check_against_pandas(await read_candles(redis, ex, sym, tf), path, tf)
    finally:
        await redis.aclose()


def _ms(t: tuple[int, int]) -> int:
    return t[0] * 1000 + t[1] // 1000


async def _true(value: bool) -> bool:
    return value
