"""Which pairs and timeframes the builder follows, on real redis-server and real recordings: a pair removed from
FEED_REGISTRY is no longer read (its stream may grow, nothing is consumed) and leaves its partition's candle registry; re-added, it
resumes exactly from the state kept in Redis (every candle equals pandas over the whole recording); a subscribed
timeframe whose count fell to 0 stops and leaves its partition's candle registry while the settings' timeframes go on."""

from __future__ import annotations

from shared import streams
from shared.partitioned import caught_up
from shared.partitions import partition_of
from shared.subscriptions import Subscriptions
from shared.bus import Bus
from shared.feed_codec import encode_trades, encode_watermark
from shared.schemas import Watermark
from tests.support.candles import trades_stream
from tests.conftest import shared_data
from tests.support.candles import (
    RECORDINGS,
    TIMEFRAMES,
    check_against_pandas,
    publish,
    read_candles,
    read_trades,
    settings_for,
)
from tests.integration.test_candle_builder_lookback import running_builder, wait_for
from tests.support.candles import registered


async def registry(redis, exchange: str, symbol: str) -> set[str]:
    return {tf for ex, sym, tf in await registered(redis) if (ex, sym) == (exchange, symbol)}


async def test_a_removed_pair_is_unfollowed_and_a_re_added_one_resumes_exactly(redis, redis_url):

    ex, sym, rel = RECORDINGS["btcusdt"]
    kx, ks, krel = RECORDINGS["kraken"]
    path, kpath = shared_data(rel), shared_data(krel)
    trades, ktrades = read_trades(path), read_trades(kpath)
    btc = trades_stream(ex, sym)
    bus = Bus(redis)
    half = len(trades) // 2
    subscriptions = Subscriptions(redis, ttl_ms=3_600_000)
    await subscriptions.publish("engine-1", {(ex, sym, "30m"): 0, (kx, ks, "30m"): 0})
    await publish(redis, ex, sym, trades[:half], per_entry=50, final=False)
    await publish(redis, kx, ks, ktrades, per_entry=50)
    async with running_builder(redis, settings_for(redis_url)) as app:
        async def built() -> bool:
            return await caught_up(redis, 16, streams.GROUP_CANDLE_BUILDER, streams.part_trades)

        await wait_for(built, "both pairs built")
        assert await registry(redis, ex, sym) == set(TIMEFRAMES) | {"30m"}
        live_key = streams.part_live_latest(partition_of(ex, sym, 16))
        assert [m for m in await redis.hkeys(live_key) if m.decode().startswith(f"{ex}|{sym}|")]

        await redis.srem(streams.FEED_REGISTRY, streams.registry_member(ex, sym))
        await subscriptions.publish("engine-1", {(ex, sym, "30m"): 0})  # kraken's 30m no longer wanted

        async def unfollowed() -> bool:
            return (ex, sym) not in app.series and not await registry(redis, ex, sym) and \
                await registry(redis, kx, ks) == set(TIMEFRAMES)

        await wait_for(unfollowed, "the pair and the timeframe dropped")
        live = await redis.hkeys(live_key)
        assert not [m for m in live if m.decode().startswith(f"{ex}|{sym}|")]  # no in-progress candle left for it
        state = streams.part_state(partition_of(ex, sym, 16), streams.GROUP_CANDLE_BUILDER)
        assert await redis.hget(state, streams.pair_field(ex, sym)) is not None  # Redis holds its state

        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(ex, sym))  # (the feed registers first)

        async def followed() -> bool:
            return (ex, sym) in app.wanted

        await wait_for(followed, "the pair followed again")
        rest = trades[half:]  # the feed goes on
        await bus.publish_many([(btc, encode_trades(ex, sym, rest[i:i + 50])) for i in range(0, len(rest), 50)])
        await bus.publish(btc, encode_watermark(Watermark(ex, sym, rest[-1].ts, final=True)))
        await wait_for(built, "the re-added pair caught up")
        await wait_for(lambda: registry_has(redis, ex, sym, set(TIMEFRAMES) | {"30m"}), "registry restored")
    for tf in [*TIMEFRAMES, "30m"]:  # nothing lost or counted twice across the pause, in-progress candles included
        check_against_pandas(await read_candles(redis, ex, sym, tf), path, tf)
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, kx, ks, tf), kpath, tf)


async def registry_has(redis, exchange: str, symbol: str, tfs: set[str]) -> bool:
    return await registry(redis, exchange, symbol) == tfs
