"""market_feed replay and simulated modes against a real redis-server: every trade once, in order, exact."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import Settings
from shared.simulated import SimulatedMarket
from shared import streams
from shared.bus import FIELD
from shared.feed_codec import decode_feed
from shared.schemas import Ticker, TradeBatch, Watermark
from tests.support.candles import trades_stream, tickers_stream
from tests.conftest import shared_data

RECORDINGS = {
    "binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv": ("binance", "BTC/USDT"),
    "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv": ("binance", "BTC/USDT"),
    "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv": ("binance", "XRP/ETH"),
    "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv": ("kraken", "BTC/USD"),
    "binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv": ("binance", "BTC/USDT"),
}


def _expected(path: Path) -> list[tuple]:
    """Independent read: pandas, strings kept exact."""
    first = path.read_text().split("\n", 1)[0]
    if first.startswith("timestamp"):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        ids = [int(x) for x in df["id"]] if (df["id"] != "").all() else list(range(1, len(df) + 1))
        return [(i, int(ts), Decimal(p), Decimal(a), s == "buy")
                for i, ts, p, a, s in zip(ids, df["timestamp"], df["price"], df["amount"], df["side"], strict=True)]
    df = pd.read_csv(path, header=None, dtype=str)
    return [(int(r[0]), int(r[4]), Decimal(r[1]), Decimal(r[2]), r[5] == "false") for r in df.itertuples(False)]


async def _stream(redis, exchange: str, symbol: str) -> list:
    return [decode_feed(fields[FIELD]) for _, fields in await redis.xrange(trades_stream(exchange, symbol))]


async def _run(redis, **kw) -> MarketFeedApp:
    app = MarketFeedApp(Settings(**kw), redis)
    await asyncio.wait_for(app.run(asyncio.Event()), timeout=60)
    return app


@pytest.mark.parametrize("rel", list(RECORDINGS))
async def test_every_trade_of_a_recording_arrives_once_in_order_exact(redis, rel):
    path = shared_data(rel)
    exchange, symbol = RECORDINGS[rel]
    app = await _run(redis, mode="replay", replay_file=path, batch_size=100)  # exchange and symbol guessed
    messages = await _stream(redis, exchange, symbol)
    got = [tuple(t) for m in messages if isinstance(m, TradeBatch) for t in m.trades]
    assert got == _expected(path)
    assert app.done and app.trades_published == len(got)
    batches = [m for m in messages if isinstance(m, TradeBatch)]
    assert len(batches) < len(got)  # several trades per entry
    marks = [m for m in messages if isinstance(m, Watermark)]
    assert marks[-1].final and messages[-1] is marks[-1] and marks[-1].ts == got[-1][1]
    assert await redis.sismember(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))


async def test_a_restarted_replay_publishes_nothing_twice(redis):
    path = shared_data("binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv")
    stop = asyncio.Event()
    app = MarketFeedApp(Settings(mode="replay", replay_file=path, speed=20.0, symbol="BTC/USDT"), redis)
    task = asyncio.create_task(app.run(stop))
    while app.trades_published < 300:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert not app.done
    second = await _run(redis, mode="replay", replay_file=path, symbol="BTC/USDT")
    assert second.trades_skipped > 0 and second.done
    got = [tuple(t) for m in await _stream(redis, "binance", "BTC/USDT") if isinstance(m, TradeBatch)
           for t in m.trades]
    assert got == _expected(path)


async def test_speed_paces_replay_in_exchange_time(redis):
    path = shared_data("binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv")
    trades = _expected(path)
    span_s = (trades[-1][1] - trades[0][1]) / 1000
    loop = asyncio.get_running_loop()
    start = loop.time()
    await _run(redis, mode="replay", replay_file=path, speed=span_s / 1.0)  # the 46 s recording in ~1 s
    assert 0.9 <= loop.time() - start < 5.0


async def test_unreadable_row_stops_with_file_and_line(redis, tmp_path):
    path = tmp_path / "BTCUSDT-trades.csv"
    path.write_text("timestamp,price,amount,side,id\n1,2,3,buy,1\n2,2,x,buy,2\n")
    with pytest.raises(ValueError, match=r"BTCUSDT-trades\.csv:3: field 'amount'"):
        await _run(redis, mode="replay", replay_file=path)


async def test_simulated_market_publishes_trades_tickers_and_final_watermarks(redis):
    symbols = ["BTC/USDT", "ETH/USDT"]
    app = await _run(redis, mode="simulated", sim_symbols=symbols, sim_seed=3, sim_duration_s=120,
                     sim_start_ms=1_700_000_000_000, exchange="sim")
    market = SimulatedMarket(symbols, seed=3, start_ms=1_700_000_000_000, duration_s=120)
    expected: dict[str, list] = {s: [] for s in symbols}
    for s, t in market.trades():
        expected[s].append(tuple(t))
    for s in symbols:
        messages = await _stream(redis, "sim", s)
        assert [tuple(t) for m in messages if isinstance(m, TradeBatch) for t in m.trades] == expected[s]
        assert messages[-1] == Watermark("sim", s, 1_700_000_000_000 + 120_000 - 1, final=True)
        tickers = [Ticker.decode(f[FIELD]) for _, f in await redis.xrange(tickers_stream("sim", s))]
        assert len(tickers) >= 100
        for tk in tickers:
            assert tk.bid < tk.last < tk.ask
            # the ticker shows the last trade before its time
            last = [t for t in expected[s] if t[1] < tk.ts][-1]
            assert tk.last == last[2]
    assert app.done and app.trades_published == sum(len(v) for v in expected.values())


async def test_two_replicas_replaying_one_recording_publish_each_trade_once(redis):
    """Two market_feed replicas of one replay (same file, same feed group): only the lease holder publishes; when it
    stops part-way the other takes the partition over and resumes after the last id the first one published. Each
    trade id is in the partition stream exactly once, in order, exact."""
    path = shared_data("binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv")
    expected = _expected(path)
    apps = [MarketFeedApp(Settings(mode="replay", replay_file=path, speed=20.0, symbol="BTC/USDT",
                                   consumer_name=f"feed-{n}"), redis) for n in "ab"]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(app.run(stop)) for app, stop in zip(apps, stops)]
    try:
        while sum(app.trades_published for app in apps) < len(expected) // 3:
            await asyncio.sleep(0.01)
        first = next(n for n, app in enumerate(apps) if app.trades_published)
        assert not apps[1 - first].trades_published  # the other one waits for the partition
        stops[first].set()  # the publisher stops part-way (its lease is handed back)
        await asyncio.wait_for(tasks[first], 10)
        await asyncio.wait_for(tasks[1 - first], 60)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    other = apps[1 - first]
    assert other.done and other.trades_published > 0 and other.trades_skipped > 0
    assert apps[first].trades_published + other.trades_published == len(expected)
    got = [tuple(t) for m in await _stream(redis, "binance", "BTC/USDT") if isinstance(m, TradeBatch)
           for t in m.trades]
    assert got == expected  # each id once, in order: nothing doubled at the takeover
