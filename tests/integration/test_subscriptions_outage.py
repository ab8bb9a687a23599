"""Subscriptions through a Redis outage longer than their TTL (issue 19): every subscriber's set expires while no
heartbeat can refresh it; candle_builder must not drop a timeframe only a subscriber asked for before the
subscriber's next heartbeat publishes it again. Real redis-server (stopped and started from its AOF) and the real
CandleBuilderApp."""

from __future__ import annotations

import asyncio

from shared import streams
from shared.runtime import connect
from shared.subscriptions import Subscriptions
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
    await engine.publish("engine-1", {(ex, sym, "30m"): 0})
    await publish(redis, ex, sym, trades[:half], per_entry=50, final=False)
    try:
        async with running_builder(redis, settings_for(own_redis.url, timeframes=["1m"])) as app:
            async def builds_30m() -> bool:
                return "30m" in app.wanted.get((ex, sym), set())

            await wait_for(builds_30m, "the subscribed 30m followed")
            own_redis.stop()
            await asyncio.sleep(3.0)  # longer than the TTL: the set is gone when Redis is back
            own_redis.start()
            assert not await redis.exists(streams.subscriber("engine-1"))
            await wait_for(lambda: _ok(app.bus.outage), "the builder back on Redis")
            dropped = False
            for _ in range(20):  # the subscriber's next heartbeat comes 1 s later
                dropped |= not await builds_30m()
                await asyncio.sleep(0.05)
            await engine.refresh("engine-1")  # its heartbeat: publishes the expired set again
            for _ in range(20):
                dropped |= not await builds_30m()
                await asyncio.sleep(0.05)
            assert not dropped, "candle_builder dropped 30m while its subscriber's set was expired"
            await publish(redis, ex, sym, trades[half:], per_entry=50)
            await wait_for(lambda: builder_caught_up(redis), "caught up")
        for tf in ("1m", "30m"):
            check_against_pandas(await read_candles(redis, ex, sym, tf), path, tf)
    finally:
        await redis.aclose()


async def _ok(outage) -> bool:
    return not outage.down
