"""Replicas of one exchange's feed group must feed the same symbols (issue 21): a partition's ``symbol == ""``
watermark speaks for every pair of the exchange in it, and a partition is published by one replica only, so a
replica with another list would close the others' candles early and leave their pairs unpublished while it holds
their partitions. A replica whose list differs from a live replica's refuses to start, naming both lists."""

from __future__ import annotations

import asyncio

import pytest

from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings
from shared import streams
from shared.errors import ConfigError

START = 1_700_000_000_000


def feed(redis, name: str, symbols: list[str], **kw) -> MarketFeedApp:
    return MarketFeedApp(Settings(mode="simulated", exchange="sim", sim_symbols=symbols, sim_seed=3,
                                  sim_start_ms=START, speed=1.0, consumer_name=name, lease_ttl_ms=1500, **kw), redis)


async def started(app: MarketFeedApp) -> tuple[asyncio.Event, asyncio.Task]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    for _ in range(300):
        if app.trades_published:
            return stop, task
        assert not task.done(), task.result()
        await asyncio.sleep(0.02)
    raise AssertionError("the feed published nothing")


async def test_a_replica_with_another_symbol_list_refuses_to_start_naming_both(redis):
    a_stop, a_task = await started(feed(redis, "feed-a", ["BTC/USDT", "ETH/USDT", "SOL/USDT"]))
    try:
        with pytest.raises(ConfigError) as err:
            await asyncio.wait_for(feed(redis, "feed-b", ["ETH/USDT", "SOL/USDT", "XRP/USDT"]).run(asyncio.Event()),
                                   10)
        text = str(err.value)
        assert "BTC/USDT,ETH/USDT,SOL/USDT" in text and "ETH/USDT,SOL/USDT,XRP/USDT" in text and "feed-a" in text
        # the same list is a replica: it starts and shares the partitions
        c_stop = asyncio.Event()
        c_task = asyncio.create_task(feed(redis, "feed-c", ["SOL/USDT", "BTC/USDT", "ETH/USDT"]).run(c_stop))
        await asyncio.sleep(1.0)
        assert not c_task.done(), c_task.result()
        assert "feed-c" in {k.decode() for k in await redis.zrange(streams.members(streams.feed_group("sim")), 0, -1)}
        c_stop.set()
        await asyncio.wait_for(c_task, 10)
        assert "feed-b" not in {k.decode() for k in await redis.hkeys(streams.feed_symbols(streams.feed_group("sim")))}
    finally:
        a_stop.set()
        await asyncio.wait_for(a_task, 10)


async def test_a_new_list_is_taken_once_the_old_replicas_are_gone(redis):
    stop, task = await started(feed(redis, "feed-a", ["BTC/USDT", "ETH/USDT"]))
    stop.set()
    await asyncio.wait_for(task, 10)
    await asyncio.sleep(1.6)  # past lease_ttl_ms: feed-a left the group (and its list is old)
    stop, task = await started(feed(redis, "feed-b", ["ETH/USDT", "XRP/USDT"]))
    stop.set()
    await asyncio.wait_for(task, 10)
