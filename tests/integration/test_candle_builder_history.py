"""Seeding from history: a stand-in for market_feed's history service answers from pandas' candles of the recording;
the builder starts mid-recording, and every candle — history, seam bucket, live — equals pandas' over the whole file."""

from __future__ import annotations

import asyncio
import contextlib

from shared import history, streams
from shared.bus import FIELD
from tests.support.candles import trades_stream
from tests.conftest import shared_data
from tests.support.candles import (
    RECORDINGS,
    TIMEFRAMES,
    check_against_pandas,
    pandas_candles,
    publish,
    read_candles,
    read_trades,
    run_until_caught_up,
    settings_for,
)

SEAM = 1_723_161_720_000  # 2024-08-09 00:02:00 UTC: the builder's first trade is here, mid 5m/15m/1h bucket


async def serve_history(redis, path, requests: list[history.HistoryRequest]) -> None:
    """Answer history requests the way market_feed would, from pandas' candles of the whole recording."""
    last = "0"
    while True:
        for _, entries in await redis.xread({streams.history_requests("binance"): last}, block=50, count=10) or []:
            for entry_id, fields in entries:
                last = entry_id
                req = history.decode_request(fields[FIELD])
                requests.append(req)
                df = pandas_candles(path, req.timeframe)
                rows = [(ts, r["open"], r["high"], r["low"], r["close"], r["volume"], r["buy_volume"], r["trades"],
                         r["quote_volume"]) for ts, r in df.iterrows()
                        if req.since <= ts < req.until and r["trades"]]
                await redis.rpush(req.reply_to, history.encode_reply(req.id, rows))
                await redis.expire(req.reply_to, 60)


async def test_history_seeds_the_series_and_the_seam_bucket_is_exact(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = [t for t in read_trades(path) if t.ts >= SEAM]
    assert trades[0].ts - SEAM < 1000
    await publish(redis, exchange, symbol, trades, per_entry=50)
    requests: list[history.HistoryRequest] = []
    server = asyncio.create_task(serve_history(redis, path, requests))
    try:
        await run_until_caught_up(redis, settings_for(redis_url, history_bars=30), [trades_stream(exchange, symbol)])
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
    assert {r.timeframe for r in requests} == set(TIMEFRAMES)
    for tf in TIMEFRAMES:
        candles = await read_candles(redis, exchange, symbol, tf)
        assert [c.ts for c in candles] == sorted(c.ts for c in candles), f"{tf}: history after live candles"
        check_against_pandas(candles, path, tf)  # every bucket of the whole file, the seam bucket included
        assert any(c.ts < SEAM for c in candles)


async def test_without_a_history_reply_the_builder_starts_cleanly(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = [t for t in read_trades(path) if t.ts >= SEAM]
    await publish(redis, exchange, symbol, trades, per_entry=50)
    await run_until_caught_up(redis, settings_for(redis_url, history_bars=30, history_timeout_s=0.2),
                              [trades_stream(exchange, symbol)])
    for tf in ("5m", "15m"):
        candles = await read_candles(redis, exchange, symbol, tf)
        # the bucket under way at the first trade would be partial: skipped, never published half-built
        assert all(c.ts >= SEAM for c in candles)
        expected = pandas_candles(path, tf)
        for c in candles:
            assert (c.open, c.close, c.volume) == tuple(expected.loc[c.ts, ["open", "close", "volume"]])
