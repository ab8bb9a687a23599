"""History look-back and automatic seeding against the real market_feed history service (ccxt.pro against the local
Binance-protocol exchange replaying a real recording), real redis-server:

- a new series is seeded with max(history_bars, the look-back its subscribers ask for) candles per timeframe;
- a look-back that grows later is backfilled further back: the older candles are appended, nothing published before
  is touched, and every bucket equals pandas' over the replayed recording;
- history_bars unset seeds automatically when the feed is live, and not for a replay (no request at all).
"""

from __future__ import annotations

import asyncio
import contextlib

from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import AUTO_HISTORY_BARS, Settings
from shared import streams
from shared.subscriptions import Subscriptions
from shared.bus import FIELD
from shared.history import decode_request
from shared.schemas import Trade
from tests.conftest import shared_data
from tests.integration.market_feed.helpers import (expected_trades, live_settings, local_exchange, published,
                                                   running_feed, wait_last_id)
from tests.support.candles import (
    RECORDINGS,
    TIMEFRAMES,
    builder_caught_up,
    builder_state,
    check_against_pandas,
    trades_stream,
    publish,
    read_candles,
    read_trades,
    run_until_caught_up,
    settings_for,
)
from tests.support.candles import candles_stream, history_from_key

MIN = 60_000
SEAM = 1_723_161_720_000  # 2024-08-09 00:02:00 UTC: the builder's first trade is here
WINDOW = (1_723_161_240_000, 1_723_161_740_000)  # 23:54 (the recording's start) to 00:02:20


async def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def running_builder(redis, settings: Settings) -> contextlib.AbstractAsyncContextManager[CandleBuilderApp]:
    return running(CandleBuilderApp(settings, redis))


@contextlib.asynccontextmanager
async def running(app):
    """Run a service app (anything with ``run(stop)``) for the block; stopped on exit, its exception re-raised."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    if task.done() and not task.cancelled() and task.exception():
        raise task.exception()


def window_file(tmp_path):
    lines = shared_data(RECORDINGS["btcusdt"][2]).read_text().splitlines(keepends=True)
    path = tmp_path / "window.csv"
    path.write_text(lines[0] + "".join(ln for ln in lines[1:] if WINDOW[0] <= int(ln.split(",", 1)[0]) < WINDOW[1]))
    return path


async def feed_then_restart_at_seam(redis, path) -> None:
    """market_feed publishes the window (the exchange then holds it all for REST); the trades stream is then cut to
    start at SEAM, as if the builder met the pair there."""
    exchange, symbol, _ = RECORDINGS["btcusdt"]
    await wait_last_id(redis, expected_trades(path)[-1][0])
    trades, gaps = await published(redis)
    assert trades == expected_trades(path) and not gaps
    await redis.delete(trades_stream(exchange, symbol))
    await publish(redis, exchange, symbol, [Trade(*t) for t in trades if t[1] >= SEAM], per_entry=50)


async def history_requests(redis) -> list:
    return [decode_request(f[FIELD]) for _, f in await redis.xrange(streams.history_requests("binance"))]


async def test_lookback_seeds_and_a_grown_lookback_backfills_further_back(redis, redis_url, tmp_path):
    exchange, symbol, _ = RECORDINGS["btcusdt"]
    path = window_file(tmp_path)
    member = streams.registry_member(exchange, symbol, "1m")
    subscriptions = Subscriptions(redis, ttl_ms=3_600_000)
    await subscriptions.publish("engine-1", {(exchange, symbol, "1m"): 3})  # 3 closed 1m candles needed; settings 2
    async with local_exchange(path, speed=200) as sim:
        async with running_feed(live_settings(sim), redis) as feed:
            await feed_then_restart_at_seam(redis, path)
            settings = settings_for(redis_url, history_bars=2, history_timeout_s=10)
            async with running_builder(redis, settings) as app:
                await wait_for(lambda: builder_caught_up(redis), "catch-up")
                first = await read_candles(redis, exchange, symbol, "1m")
                assert min(c.ts for c in first) == SEAM - 3 * MIN  # max(2, 3) candles before the seam
                five = await read_candles(redis, exchange, symbol, "5m")
                assert five[0].ts == SEAM - SEAM % (5 * MIN) - 2 * 5 * MIN  # 5m: no look-back, history_bars (2)
                assert int(await redis.hget(history_from_key(exchange, symbol), member)) == SEAM - 3 * MIN
                served = feed.live.history.served

                await subscriptions.publish("engine-1", {(exchange, symbol, "1m"): 10})  # a rule with a longer warm-up
                back_to = SEAM - 10 * MIN  # 10 candles back from the bucket in progress (00:02)

                async def backfilled() -> bool:
                    raw = await redis.hget(history_from_key(exchange, symbol), member)
                    return raw is not None and int(raw) == back_to

                await wait_for(backfilled, "the 1m backfill")
                assert feed.live.history.served == served + 1  # one more request: 1m only
                assert app.backfilled > 0
    candles = await read_candles(redis, exchange, symbol, "1m")
    assert candles[:len(first)] == first, "what was published before the backfill changed"
    older = candles[len(first):]
    assert [c.ts for c in older] == sorted(c.ts for c in older) and max(c.ts for c in older) < SEAM - 3 * MIN
    assert min(c.ts for c in older) == WINDOW[0]  # the exchange has nothing before its first trade (23:54)
    for tf in TIMEFRAMES:  # every bucket of the replayed window, history, backfill and seam included, exactly once
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)


async def test_history_is_seeded_automatically_only_when_the_feed_is_live(redis, redis_url, tmp_path):
    exchange, symbol, _ = RECORDINGS["btcusdt"]
    path = window_file(tmp_path)
    stream = trades_stream(exchange, symbol)
    async with local_exchange(path, speed=200) as sim:
        async with running_feed(live_settings(sim), redis) as feed:
            await feed_then_restart_at_seam(redis, path)
            # market_feed runs live (its heartbeat says so); the recording is from 2024, so its trades are "live" only
            # with a skew allowance of years: the first run allows it, the second (default, 30 s) does not.
            assert (await redis.hget(streams.heartbeat("market_feed"), "mode")) == b"live"
            years = 10 * 365 * 86_400_000
            await run_until_caught_up(redis, settings_for(redis_url, history_timeout_s=10, live_max_skew_ms=years,
                                                          close_on_timer=False), [stream])
            requests = await history_requests(redis)
            assert feed.live.history.served == len(TIMEFRAMES) == len(requests)
            for req in requests:  # AUTO_HISTORY_BARS candles asked per timeframe (the base: at least as many)
                ms = {"1m": MIN, "5m": 5 * MIN, "15m": 15 * MIN, "1h": 60 * MIN}[req.timeframe]
                assert (req.until - req.since) // ms >= AUTO_HISTORY_BARS, req
            for tf in TIMEFRAMES:
                check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)

            # the same pair met afresh by a builder with the default skew allowance: a replay, no history asked
            for tf in TIMEFRAMES:
                await redis.delete(candles_stream(exchange, symbol, tf))
            await redis.delete(builder_state(exchange, symbol))  # the partition's offset and pair state
            await run_until_caught_up(redis, settings_for(redis_url, history_timeout_s=10), [stream])
            assert len(await history_requests(redis)) == len(TIMEFRAMES)
            assert all(c.ts >= SEAM for c in await read_candles(redis, exchange, symbol, "1m"))


async def test_a_replay_asks_for_no_history_even_with_a_lookback(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    trades = [t for t in read_trades(shared_data(rel)) if t.ts >= SEAM]
    await publish(redis, exchange, symbol, trades, per_entry=50)
    await Subscriptions(redis, ttl_ms=3_600_000).publish("engine-1", {(exchange, symbol, "1m"): 200})
    await run_until_caught_up(redis, settings_for(redis_url), [trades_stream(exchange, symbol)])
    assert await redis.xlen(streams.history_requests("binance")) == 0  # no market_feed heartbeat, trades years old
    assert all(c.ts >= SEAM for c in await read_candles(redis, exchange, symbol, "1m"))


async def test_a_timeframe_added_to_a_running_series_gets_its_history_before_its_first_live_candle(
        redis, redis_url, tmp_path):
    """5m subscribed at 00:03:59, mid-bucket: the bucket under way is never built half from trades; once it has ended
    (exchange time reaches 00:05) it and the ones before come whole from history, then live 5m candles follow."""
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = tmp_path / "all.csv"
    path.write_text(shared_data(rel).read_text())
    stream = trades_stream(exchange, symbol)
    five = streams.registry_member(exchange, symbol, "5m")
    cut = SEAM + 2 * MIN - 1  # 00:03:59.999
    async with local_exchange(path, speed=0) as sim:
        async with running_feed(live_settings(sim), redis):
            await wait_last_id(redis, expected_trades(path)[-1][0])
            trades, _ = await published(redis)
            await redis.delete(stream)
            await publish(redis, exchange, symbol, [Trade(*t) for t in trades if SEAM <= t[1] <= cut], per_entry=50,
                          final=False)
            settings = settings_for(redis_url, timeframes=["1m"], history_bars=3, history_timeout_s=10,
                                    close_on_timer=False)
            async with running_builder(redis, settings) as app:
                await wait_for(lambda: builder_caught_up(redis), "catch-up")
                await Subscriptions(redis, ttl_ms=3_600_000).publish("api-1", {(exchange, symbol, "5m"): 0})

                async def added() -> bool:
                    series = app.series.get((exchange, symbol))
                    return series is not None and "5m" in series.builder.timeframes

                await wait_for(added, "5m added")
                await asyncio.sleep(0.2)
                assert await redis.hget(history_from_key(exchange, symbol), five) is None  # 00:00 bucket not ended yet
                await publish(redis, exchange, symbol, [Trade(*t) for t in trades if t[1] > cut], per_entry=50)

                async def backfilled() -> bool:
                    raw = await redis.hget(history_from_key(exchange, symbol), five)
                    return raw is not None and int(raw) == SEAM + 3 * MIN - 3 * 5 * MIN  # 3 before 00:05

                await wait_for(backfilled, "the 5m history")
                await wait_for(lambda: builder_caught_up(redis), "catch-up")
    candles = await read_candles(redis, exchange, symbol, "5m")
    check_against_pandas(candles, path, "5m")  # 23:50, 23:55, 00:00 from history, 00:05 from trades; each once
    assert any(c.ts == SEAM + 3 * MIN for c in candles) and all(c.ts != SEAM + 3 * MIN or c.trades for c in candles)
