"""The history seam end to end: the real market_feed in live mode (ccxt.pro against the local Binance-protocol exchange
replaying a real recording) answers a real candle_builder's history requests with the exchange's klines; the builder,
starting mid-recording, seeds its series from them, and every candle — history, seam bucket, live — equals pandas'
over the replayed recording, taker split and quote volume included."""

from __future__ import annotations

from decimal import Decimal

import aiohttp

from shared.schemas import Trade
from tests.support.candles import trades_stream
from tests.conftest import shared_data
from tests.integration.market_feed.helpers import (expected_trades, live_settings, local_exchange, published,
                                                   running_feed, wait_last_id)
from tests.support.candles import (
    RECORDINGS,
    TIMEFRAMES,
    check_against_pandas,
    publish,
    read_candles,
    run_until_caught_up,
    settings_for,
)

SEAM = 1_723_161_720_000  # 2024-08-09 00:02:00 UTC: the builder's first trade is here, mid 5m/15m/1h bucket
# The part of the recording replayed (6,671 trades in 200 s, at 100x: ~2 s): from 23:59:00, so 1m/5m/15m/1h all have
# history candles before their seam bucket, to 00:02:20. (At speed=0 the replay through ccxt.pro takes 1-18 s.)
WINDOW = (1_723_161_540_000, 1_723_161_740_000)


async def test_market_feed_seeds_candle_builder_and_the_seam_is_exact(redis, redis_url, tmp_path):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    lines = shared_data(rel).read_text().splitlines(keepends=True)
    path = tmp_path / "window.csv"
    path.write_text(lines[0] + "".join(ln for ln in lines[1:] if WINDOW[0] <= int(ln.split(",", 1)[0]) < WINDOW[1]))
    stream = trades_stream(exchange, symbol)
    async with local_exchange(path, speed=100) as sim:
        async with running_feed(live_settings(sim), redis) as feed:
            # the exchange has released the whole recording once market_feed has published its last trade
            await wait_last_id(redis, expected_trades(path)[-1][0])
            trades, gaps = await published(redis)
            assert trades == expected_trades(path) and not gaps
            async with aiohttp.ClientSession() as http:  # the exchange's own 1m klines, straight from its REST API
                async with http.get(f"{sim.rest_url}/klines", params={
                        "symbol": "BTCUSDT", "interval": "1m", "startTime": WINDOW[0], "limit": 1000}) as resp:
                    klines = await resp.json()
            # The builder starts at SEAM: market_feed's own trades from there on are all its stream holds.
            await redis.delete(stream)
            await publish(redis, exchange, symbol, [Trade(*t) for t in trades if t[1] >= SEAM], per_entry=50)
            served = feed.live.history.served
            await run_until_caught_up(redis, settings_for(redis_url, history_bars=30, history_timeout_s=10),
                                      [stream])
            assert feed.live.history.served - served == len(TIMEFRAMES)  # one request per timeframe, all answered
    for tf in TIMEFRAMES:
        candles = await read_candles(redis, exchange, symbol, tf)
        check_against_pandas(candles, path, tf)  # every bucket of the replayed file, the seam bucket included
        seeded = [c for c in candles if c.ts < SEAM]
        assert seeded, f"{tf}: nothing came from history"
        # Binance klines carry the taker split, trade count and quote volume: no seeded candle is incomplete
        assert not any(c.incomplete for c in candles)
        assert all(c.buy_volume + c.sell_volume == c.volume and c.buy_volume > Decimal(0) for c in seeded if c.trades)
    # the 1m history candles are the exchange's klines, column for column
    seeded_1m = [c for c in await read_candles(redis, exchange, symbol, "1m") if c.ts < SEAM]
    assert [(c.ts, c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades, c.buy_volume)
            for c in seeded_1m] == [(k[0], *(Decimal(x) for x in k[1:6]), Decimal(k[7]), k[8], Decimal(k[9]))
                                    for k in klines if k[0] < SEAM]
