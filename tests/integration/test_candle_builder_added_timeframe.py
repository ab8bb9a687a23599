"""A timeframe added to a running replay (a rule asks for it mid-run; issue 19): with no exchange history to backfill
from, candle_builder builds it from the next whole bucket on and rolls the earlier buckets up from the base candles
it published, so the timeframe has every candle from the recording's first trade, exactly pandas'. Real
redis-server, the real CandleBuilderApp, a real recording."""

from __future__ import annotations

import logging

from shared import streams
from shared.subscriptions import Subscriptions
from tests.conftest import shared_data
from tests.integration.test_candle_builder_lookback import running_builder, wait_for
from tests.support.candles import (RECORDINGS, builder_caught_up, pandas_candles, publish, read_candles, read_trades,
                                   settings_for)
from tests.support.candles import history_from_key


async def test_a_timeframe_added_to_a_running_replay_has_every_candle_from_the_first_trade(redis, redis_url, caplog):
    ex, sym, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    half = len(trades) // 2
    caplog.set_level(logging.INFO)
    await publish(redis, ex, sym, trades[:half], per_entry=50, final=False)
    async with running_builder(redis, settings_for(redis_url, timeframes=["1m"], history_bars=0)) as app:
        await wait_for(lambda: builder_caught_up(redis), "the first half built")
        await Subscriptions(redis, ttl_ms=3_600_000).publish("engine-1", {(ex, sym, "5m"): 0})
        await wait_for(lambda: _true("5m" in app.wanted.get((ex, sym), set())), "5m followed")
        await publish(redis, ex, sym, trades[half:], per_entry=50)
        await wait_for(lambda: builder_caught_up(redis), "the rest built")
        await wait_for(lambda: _true(app.backfilled > 0), "the earlier 5m buckets rolled up")
    said = [r.getMessage() for r in caplog.records if "5m added while running" in r.getMessage()]
    assert len(said) == 1 and "rolled up from the 1m candles" in said[0], said
    candles = [c for c in await read_candles(redis, ex, sym, "5m") if c.closed]
    got = {c.ts: c for c in candles}
    assert len(got) == len(candles)  # each bucket once
    want = pandas_candles(path, "5m")
    want_ts = [int(t) for t in want.index]  # (bucket start, ms)
    assert sorted(got) == want_ts
    for t, row in zip(want_ts, want.itertuples()):
        c = got[t]
        assert (c.open, c.high, c.low, c.close, c.volume, c.buy_volume, c.quote_volume, c.trades) == (
            row.open, row.high, row.low, row.close, row.volume, row.buy_volume, row.quote_volume, row.trades), t
    assert any(c.history for c in candles) and not all(c.history for c in candles)
    assert int(await redis.hget(history_from_key(ex, sym), streams.registry_member(ex, sym, "5m"))) == want_ts[0]


async def _true(value: bool) -> bool:
    return value
