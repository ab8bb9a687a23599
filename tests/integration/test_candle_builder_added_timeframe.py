"""A timeframe added to a running replay (a rule asks for it mid-run; issue 19): with no exchange history to backfill
from, candle_builder says from which bucket it builds it, and the candles of that timeframe are exactly pandas' from
that bucket on. Real redis-server, the real CandleBuilderApp, a real recording."""

from __future__ import annotations

import logging
import re

from shared import streams
from shared.subscriptions import Subscriptions
from tests.conftest import shared_data
from tests.integration.test_candle_builder_lookback import running_builder, wait_for
from tests.support.candles import RECORDINGS, pandas_candles, publish, read_candles, read_trades, settings_for


async def test_a_timeframe_added_to_a_running_replay_says_from_when_it_is_built(redis, redis_url, caplog):
    ex, sym, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    half = len(trades) // 2
    stream = streams.trades(ex, sym)
    caplog.set_level(logging.INFO)
    await publish(redis, ex, sym, trades[:half], per_entry=50, final=False)
    async with running_builder(redis, settings_for(redis_url, timeframes=["1m"], history_bars=0)) as app:
        await wait_for(lambda: app.bus.caught_up(stream, streams.GROUP_CANDLE_BUILDER), "the first half built")
        await Subscriptions(redis, ttl_ms=3_600_000).publish("engine-1", {(ex, sym, "5m"): 0})
        await wait_for(lambda: _true("5m" in app.wanted.get((ex, sym), set())), "5m followed")
        await publish(redis, ex, sym, trades[half:], per_entry=50)
        await wait_for(lambda: app.bus.caught_up(stream, streams.GROUP_CANDLE_BUILDER), "the rest built")
    said = [r.getMessage() for r in caplog.records if "5m added while running" in r.getMessage()]
    assert len(said) == 1, said
    start = int(re.search(r"ts (\d+)", said[0]).group(1))
    got = {c.ts: c for c in await read_candles(redis, ex, sym, "5m") if c.closed}
    want = pandas_candles(path, "5m")
    want_ts = [int(t) for t in want.index]  # (bucket start, ms)
    assert start > want_ts[0] and sorted(got) == [t for t in want_ts if t >= start], (start, sorted(got))
    for t, row in zip(want_ts, want.itertuples()):
        if t in got:
            c = got[t]
            assert (c.open, c.high, c.low, c.close, c.volume, c.trades) == (
                row.open, row.high, row.low, row.close, row.volume, row.trades), t


async def _true(value: bool) -> bool:
    return value
