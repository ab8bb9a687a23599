"""A partition-wide watermark (symbol "": market_feed writes one per partition, not one per pair) closes the open
candles of every pair of its exchange built in that partition, and of no other pair."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from services.candle_builder.app import CandleBuilderApp
from shared import streams
from shared.feed_codec import encode_trades, encode_watermark
from shared.partitioned import caught_up
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Trade, Watermark
from tests.support.candles import publish_feed, read_candles, settings_for

T0 = 1_723_075_200_000  # a minute boundary
M = 60_000


def _pairs() -> tuple[list[tuple[str, str]], tuple[str, str], tuple[str, str]]:
    """Two binance pairs of one partition, a binance pair of another, a kraken pair of the first partition."""
    by_part: dict[int, list[str]] = {}
    for k in range(400):
        by_part.setdefault(partition_of("binance", f"P{k}/USDT", DEFAULT_PARTITIONS), []).append(f"P{k}/USDT")
    part, syms = next((p, s) for p, s in sorted(by_part.items()) if len(s) >= 2)
    other = next(s[0] for p, s in sorted(by_part.items()) if p != part)
    kraken = next(f"K{k}/USD" for k in range(400) if partition_of("kraken", f"K{k}/USD", DEFAULT_PARTITIONS) == part)
    return [("binance", syms[0]), ("binance", syms[1])], ("binance", other), ("kraken", kraken)


async def test_a_partition_wide_watermark_closes_the_candles_of_its_exchange_in_its_partition(redis, redis_url):
    same, other, kraken = _pairs()
    settings = settings_for(redis_url, timeframes=["1m"])
    app = CandleBuilderApp(settings, redis)  # one process throughout: it has loaded the pairs when the mark comes
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))

    async def caught_up_now() -> None:
        for _ in range(1500):
            if app.workers.owned and await caught_up(redis, settings.partitions, streams.GROUP_CANDLE_BUILDER,
                                                      streams.part_trades):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"not caught up: {app.status()}")

    try:
        for i, (ex, sym) in enumerate([*same, other, kraken]):
            trades = [Trade(1, T0 + 10_000, Decimal(100 + i), Decimal(1), True),
                      Trade(2, T0 + 20_000, Decimal(101 + i), Decimal(2), False)]
            await publish_feed(redis, ex, sym, [encode_trades(ex, sym, trades)])
        await caught_up_now()
        # exchange time passed the minute for binance, in the first pair's partition only (written on its stream,
        # as market_feed does): its two binance pairs close 1m; the other partition's pair and kraken's stay open
        await publish_feed(redis, "binance", same[0][1], [encode_watermark(Watermark("binance", "", T0 + M + 5_000))])
        await caught_up_now()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    for i, (ex, sym) in enumerate(same):
        got = await read_candles(redis, ex, sym, "1m")
        assert [(c.ts, c.open, c.close, c.volume, c.trades) for c in got] == [
            (T0, Decimal(100 + i), Decimal(101 + i), Decimal(3), 2)], (ex, sym)
    for ex, sym in (other, kraken):
        assert await read_candles(redis, ex, sym, "1m") == [], (ex, sym)
