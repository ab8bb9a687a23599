"""In-progress candles of a replay are throttled in exchange time (issue 22): the same trades give the same
``part_live`` candles however they are chunked into entries, however the builder reads them, and across a restart;
each is the candle as of the first trade of a ``live_throttle_ms`` window of exchange time (pandas, integer units)."""

from __future__ import annotations

import pandas as pd
import pytest

from shared import streams
from shared.bus import FIELD
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Candle, Trade
from tests.conftest import shared_data
from tests.support.candles import RECORDINGS, TIMEFRAMES, live_stream, publish, read_trades, run_until_caught_up
from tests.support.candles import settings_for

SCALE = 10**8  # Binance prices and amounts have at most 8 decimals: integer units, exact sums in pandas
MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


def expected_live(trades: list[Trade], throttle_ms: int) -> dict[str, list[tuple]]:
    """Per timeframe, the in-progress candle as of each throttle point: the first trade (in order) of each
    ``throttle_ms`` window of exchange time; OHLCV of its bucket's trades up to and including it."""
    df = pd.DataFrame({"ts": [t.ts for t in trades], "price": [int(t.price * SCALE) for t in trades],
                       "amount": [int(t.amount * SCALE) for t in trades]})
    window = df["ts"] // throttle_ms
    point = window > window.shift(1).cummax().fillna(-1)
    out = {}
    for tf in TIMEFRAMES:
        bucket = df["ts"] // MS[tf] * MS[tf]
        g = df.groupby(bucket)
        frame = pd.DataFrame({"ts": bucket, "open": g["price"].transform("first"), "high": g["price"].cummax(),
                              "low": g["price"].cummin(), "close": df["price"], "volume": g["amount"].cumsum(),
                              "trades": g.cumcount() + 1})
        out[tf] = [tuple(int(v) for v in row) for row in frame[point].itertuples(index=False)]
    return out


def as_row(c: Candle) -> tuple:
    return (c.ts, int(c.open * SCALE), int(c.high * SCALE), int(c.low * SCALE), int(c.close * SCALE),
            int(c.volume * SCALE), c.trades)


async def live_entries(redis, exchange: str, symbol: str) -> list[bytes]:
    return [f[FIELD] for _, f in await redis.xrange(live_stream(exchange, symbol))]


def by_timeframe(entries: list[bytes]) -> dict[str, list[Candle]]:
    out: dict[str, list[Candle]] = {tf: [] for tf in TIMEFRAMES}
    for data in entries:
        c = Candle.decode(data)
        assert not c.closed
        out[c.timeframe].append(c)
    return out


@pytest.fixture
def btc() -> tuple[str, str, list[Trade]]:
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    return exchange, symbol, read_trades(shared_data(rel))[:6000]


async def test_replay_live_candles_do_not_depend_on_chunking_or_reads_and_equal_pandas(redis, redis_url, btc):
    exchange, symbol, trades = btc
    runs = []
    for per_entry, read_count in ((1, 7), (250, 2000)):
        await redis.flushdb()
        await publish(redis, exchange, symbol, trades, per_entry=per_entry, final=False)
        settings = settings_for(redis_url, read_count=read_count, live_throttle_ms=250, live_throttle_clock="exchange")
        await run_until_caught_up(redis, settings)
        runs.append(await live_entries(redis, exchange, symbol))
    assert runs[0] == runs[1]  # byte for byte, in the same order
    got = by_timeframe(runs[0])
    want = expected_live(trades, 250)
    for tf in TIMEFRAMES:
        assert len(want[tf]) > 500
        assert [as_row(c) for c in got[tf]] == want[tf], tf


async def test_replay_live_candles_resume_exactly_after_a_restart(redis, redis_url, btc):
    """The last throttle point is saved with the pair's state: a restarted builder neither repeats nor skips one."""
    exchange, symbol, trades = btc
    settings = settings_for(redis_url, read_count=50, live_throttle_ms=1000, live_throttle_clock="exchange")
    # stopped where the next trade is no throttle point (its window already had one)
    cut = next(i for i in range(2500, 3000) if trades[i].ts // 1000 == trades[i - 1].ts // 1000)
    await publish(redis, exchange, symbol, trades[:cut], per_entry=20, final=False)
    await run_until_caught_up(redis, settings)
    await publish(redis, exchange, symbol, trades[cut:], per_entry=20, final=False)
    await run_until_caught_up(redis, settings)
    got = by_timeframe(await live_entries(redis, exchange, symbol))
    want = expected_live(trades, 1000)
    for tf in TIMEFRAMES:
        assert [as_row(c) for c in got[tf]] == want[tf], tf
    p = partition_of(exchange, symbol, DEFAULT_PARTITIONS)
    for tf in TIMEFRAMES:  # the newest of each series is the API's
        latest = await redis.hget(streams.part_live_latest(p), streams.registry_member(exchange, symbol, tf))
        assert as_row(Candle.decode(latest)) == want[tf][-1]


async def test_wall_clock_throttle_publishes_the_state_after_a_read(redis, redis_url, btc):
    """``live_throttle_clock: wall`` (the default): one in-progress candle per series per read
    at most, the newest state: a backlog read at once is one candle, not one per throttle window."""
    exchange, symbol, trades = btc
    await publish(redis, exchange, symbol, trades, per_entry=6000, final=False)
    await run_until_caught_up(redis, settings_for(redis_url, live_throttle_clock="wall", live_throttle_ms=250))
    got = by_timeframe(await live_entries(redis, exchange, symbol))
    want = expected_live(trades, 250)
    for tf in TIMEFRAMES:
        assert len(got[tf]) == 1
        assert got[tf][0].trades == sum(1 for t in trades if t.ts // MS[tf] * MS[tf] == got[tf][0].ts)
        assert len(want[tf]) > 1
