"""Helpers for market_feed live tests: the local Binance-protocol exchange on a recording, and a feed runner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.exchange_sim.server import ExchangeSim
from services.market_feed.app import MarketFeedApp
from shared.recordings import read_trades
from services.market_feed.settings import Settings
from shared import streams
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.bus import FIELD
from shared.feed_codec import decode_feed
from shared.schemas import GapMarker, TradeBatch
from tests.support.candles import trades_stream

RECORDING = "binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv"  # 2,001 trades in 46 s
GRID = {"BTC/USDT": (Decimal("0.01"), Decimal("0.000001"))}


def expected_trades(path: Path) -> list[tuple]:
    """The recording read independently with pandas (exact strings)."""
    df = pd.read_csv(path, dtype=str)
    return [(int(i), int(ts), Decimal(p), Decimal(a), s == "buy")
            for ts, p, a, s, i in df[["timestamp", "price", "amount", "side", "id"]].itertuples(index=False)]


@contextlib.asynccontextmanager
async def local_exchange(path: Path, *, speed: float = 25.0, retention: int = 1_000_000) -> AsyncIterator[ExchangeSim]:
    sim = ExchangeSim((("BTC/USDT", t) for t in read_trades(path)), GRID, speed=speed, retention=retention,
                      start_on_subscribe=True)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def live_settings(sim: ExchangeSim, **kw) -> Settings:
    base = dict(mode="live", silence_timeout_s=1.0, backoff_base_s=0.05, backoff_cap_s=0.5,
                exchanges=[{"id": "binance", "symbols": ["BTC/USDT"], "ws_url": sim.ws_url, "rest_url": sim.rest_url,
                            "tickers": kw.pop("tickers", False)}])
    base.update(kw)
    return Settings(**base)


@contextlib.asynccontextmanager
async def running_feed(settings: Settings, redis) -> AsyncIterator[MarketFeedApp]:
    app = MarketFeedApp(settings, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        # start-up errors surface at once
        for _ in range(50):
            if task.done() or (app.live is not None and app.live.streams):
                break
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def published(redis, exchange: str = "binance", symbol: str = "BTC/USDT") -> tuple[list[tuple], list[GapMarker]]:
    trades: list[tuple] = []
    gaps: list[GapMarker] = []
    for _, fields in await redis.xrange(trades_stream(exchange, symbol)):
        msg = decode_feed(fields[FIELD])
        if (msg.exchange, msg.symbol) != (exchange, symbol):
            continue  # another pair of the partition
        if isinstance(msg, TradeBatch):
            trades.extend(tuple(t) for t in msg.trades)
        elif isinstance(msg, GapMarker):
            gaps.append(msg)
    return trades, gaps


async def wait_last_id(redis, last_id: int, timeout: float = 30.0, exchange: str = "binance",
                       symbol: str = "BTC/USDT") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    key = streams.part_state(partition_of(exchange, symbol, DEFAULT_PARTITIONS), streams.feed_group(exchange))
    while True:
        try:
            raw = await redis.hget(key, f"last_id:{symbol}")
        except RedisConnectionError:  # tests that kill Redis poll through the outage
            raw = None
        if raw is not None and int(raw) >= last_id:
            return
        if loop.time() > deadline:
            pytest.fail(f"feed did not reach trade id {last_id} (at {raw!r})")
        await asyncio.sleep(0.05)
