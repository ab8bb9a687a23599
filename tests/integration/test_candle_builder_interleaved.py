"""candle_builder reading one trade per entry, three pairs interleaved in one partition's stream, with watermarks for
every pair of an exchange (symbol ""): each read is split into per-pair runs in stream order; every closed candle
still equals pandas' resample of its recording (computed independently: tests/support/candles.py)."""

from __future__ import annotations

import random
from decimal import Decimal

from shared import streams
from shared.bus import Bus
from shared.feed_codec import encode_trades, encode_watermark
from shared.schemas import Trade, Watermark
from tests.conftest import shared_data
from tests.support.candles import RECORDINGS, TIMEFRAMES, check_against_pandas, read_candles, read_trades
from tests.support.candles import run_until_caught_up, settings_for


async def test_one_trade_entries_of_interleaved_pairs_with_exchange_watermarks_equal_pandas(redis, redis_url):
    names = ["btcusdt", "kraken", "xrpeth"]  # two binance pairs (an exchange watermark speaks for both) and kraken
    pending = {name: read_trades(shared_data(RECORDINGS[name][2])) for name in names}
    at = dict.fromkeys(names, 0)
    for name in names:
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(*RECORDINGS[name][:2]))
    rng = random.Random(20)
    entries: list[bytes] = []
    poisoned = False
    while any(at[name] < len(pending[name]) for name in names):
        # runs of 1-3 entries of one pair, then another: the pair changes within most reads
        name = rng.choice([n for n in names if at[n] < len(pending[n])])
        for _ in range(rng.randint(1, 3)):
            if at[name] < len(pending[name]):
                exchange, symbol, _ = RECORDINGS[name]
                entries.append(encode_trades(exchange, symbol, [pending[name][at[name]]]))
                at[name] += 1
        binance = [pending[n][at[n]].ts for n in ("btcusdt", "xrpeth") if at[n] < len(pending[n])]
        if len(binance) == 2 and rng.random() < 0.01:  # binance's time for both: before the next trade of either
            entries.append(encode_watermark(Watermark("binance", "", min(binance) - 1)))
        if len(entries) >= 5_000 and not poisoned:  # a poison entry of one pair costs only itself
            poisoned = True
            entries.append(encode_trades("kraken", "BTC/USD", [Trade(-1, 1, Decimal("NaN"), Decimal(1), True)]))
    # (the older recording's last time: a final watermark closes everything, and flat candles fill up to its time)
    last = min(pending["btcusdt"][-1].ts, pending["xrpeth"][-1].ts)
    entries.append(encode_watermark(Watermark("binance", "", last, final=True)))
    entries.append(encode_watermark(Watermark("kraken", "BTC/USD", pending["kraken"][-1].ts, final=True)))
    bus, stream = Bus(redis), streams.part_trades(0)
    for i in range(0, len(entries), 1_000):
        await bus.publish_many((stream, e) for e in entries[i:i + 1_000])

    # a COUNT that is no divisor of anything here: runs of a pair span reads
    app = await run_until_caught_up(redis, settings_for(redis_url, partitions=1, read_count=97))

    assert app.trades_in == sum(len(t) for t in pending.values())
    assert len(await redis.xrange(streams.DEAD_LETTER)) == 1
    for name in names:
        exchange, symbol, rel = RECORDINGS[name]
        for tf in TIMEFRAMES:
            check_against_pandas(await read_candles(redis, exchange, symbol, tf, partitions=1), shared_data(rel), tf)
