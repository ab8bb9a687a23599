"""Live mode with the real ccxt.pro against the local Binance-protocol exchange replaying a real recording."""

from __future__ import annotations

import asyncio

import pytest

from services.market_feed.app import MarketFeedApp
from services.market_feed.settings import ExchangeFeed, Settings
from shared import streams
from shared.partitions import partition_of
from shared.bus import FIELD
from shared.embedded_redis import free_port
from shared.errors import UnknownExchangeError, UnknownSymbolError
from shared.feed_codec import decode_feed
from shared.schemas import Ticker, Watermark
from tests.support.candles import trades_stream, tickers_stream
from tests.conftest import shared_data
from tests.integration.market_feed.helpers import (RECORDING, expected_trades, live_settings, local_exchange,
                                                   published, running_feed, wait_last_id)


async def test_every_recorded_trade_arrives_once_in_order_exact(redis):
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    async with local_exchange(path) as sim, running_feed(live_settings(sim, tickers=True), redis) as app:
        await wait_last_id(redis, expected[-1][0])
        trades, gaps = await published(redis)
        assert trades == expected and gaps == []
        assert app.trades_published == len(expected)
        tickers = [Ticker.decode(f[FIELD]) for _, f in await redis.xrange(tickers_stream("binance", "BTC/USDT"))]
        assert tickers and all(t.bid < t.ask for t in tickers)
        # a ticker's last price is the price of a trade of the recording
        assert {t.last for t in tickers} <= {e[2] for e in expected}
        assert await redis.sismember(streams.FEED_REGISTRY, streams.registry_member("binance", "BTC/USDT"))


async def test_dropped_connections_are_backfilled_exactly_once(redis):
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    async with local_exchange(path) as sim, running_feed(live_settings(sim), redis) as app:
        for at in (300, 800, 1300):
            await sim.wait_released(at)
            assert await sim.drop_connections() >= 1
        await wait_last_id(redis, expected[-1][0])
        trades, gaps = await published(redis)
        assert trades == expected and gaps == []
        health = app.live.health["binance|BTC/USDT|trades"]
        assert health.reconnects >= 3 and health.backfilled > 0


async def test_stall_and_garbage_are_counted_and_recovered(redis):
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    async with local_exchange(path) as sim, running_feed(live_settings(sim, silence_timeout_s=0.5), redis) as app:
        await sim.wait_released(400)
        sim.stall(2.0)
        await sim.wait_released(1000)
        await asyncio.sleep(1.5)
        await sim.send_garbage()
        await wait_last_id(redis, expected[-1][0])
        trades, gaps = await published(redis)
        assert trades == expected and gaps == []
        health = app.live.health["binance|BTC/USDT|trades"]
        assert health.timeouts >= 1 and health.backfilled > 0
        status = app.status()
        assert status["binance|BTC/USDT|trades.timeouts"] == health.timeouts


@pytest.mark.parametrize("paging", ["id", "time"])
async def test_restart_mid_replay_neither_duplicates_nor_misses(redis, paging):
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    async with local_exchange(path, speed=40) as sim:
        settings = live_settings(sim)
        settings.exchanges[0].backfill_paging = paging
        async with running_feed(settings, redis) as app:
            while app.trades_published < 300:
                await asyncio.sleep(0.01)
        stopped_at = sim.released
        await sim.wait_released(stopped_at + 400)  # trades go by while market_feed is down
        async with running_feed(settings, redis) as app2:
            await wait_last_id(redis, expected[-1][0])
            assert app2.live.health["binance|BTC/USDT|trades"].backfilled >= 400
        trades, gaps = await published(redis)
        assert trades == expected and gaps == []


async def test_trades_the_exchange_no_longer_serves_become_a_gap_marker(redis):
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    async with local_exchange(path, speed=40, retention=200) as sim:
        async with running_feed(live_settings(sim), redis) as app:
            while app.trades_published < 300:
                await asyncio.sleep(0.01)
        await sim.wait_released(sim.released + 600)  # more than the exchange keeps
        async with running_feed(live_settings(sim), redis):
            await wait_last_id(redis, expected[-1][0])
        trades, gaps = await published(redis)
    ids = [t[0] for t in trades]
    assert ids == sorted(set(ids)), [(a, b) for a, b in zip(ids, ids[1:]) if b <= a]  # nothing twice, in order
    missing = [e for e in expected if e[0] not in set(ids)]
    assert missing and [t for t in trades] == [e for e in expected if e[0] in set(ids)]
    assert gaps
    # never a silent hole: every missing trade lies inside a gap marker
    assert all(any(g.start <= m[1] <= g.end for g in gaps) for m in missing)


async def test_unknown_symbol_and_exchange_stop_start_up_with_suggestions(redis):
    path = shared_data(RECORDING)
    async with local_exchange(path) as sim:
        settings = live_settings(sim)
        settings.exchanges[0].symbols = ["BTC/USDX"]
        with pytest.raises(UnknownSymbolError, match=r"'BTC/USDX' is not listed by binance; closest listed: BTC/USDT"):
            await asyncio.wait_for(MarketFeedApp(settings, redis).run(asyncio.Event()), timeout=20)
    bad = Settings(mode="live", exchanges=[{"id": "binanse", "symbols": ["BTC/USDT"]}])
    with pytest.raises(UnknownExchangeError, match=r"unknown exchange id 'binanse'; did you mean binance"):
        MarketFeedApp(bad, redis)


async def test_history_requests_are_answered_with_exchange_klines(redis):
    import pandas as pd

    from services.market_feed.history import request_history
    from shared.errors import ExchangeError
    from shared.schemas import pack

    path = shared_data(RECORDING)
    expected = expected_trades(path)
    async with local_exchange(path, speed=40) as sim, running_feed(live_settings(sim), redis):
        await wait_last_id(redis, expected[-1][0])
        # malformed requests (a reply key that is not the request's own, an unknown timeframe) are dead-lettered
        good = {"v": 1, "k": "history_request", "id": "x1", "x": "binance", "s": "BTC/USDT", "tf": "1s", "since": 0}
        for bad in ({**good, "reply_to": "sentinel:feed:state:binance:BTC/USDT"}, {**good, "tf": "7m"}):
            await redis.xadd(streams.history_requests("binance"), {FIELD: pack(bad)})
        reply = await request_history(redis, "binance", "BTC/USDT", "1s", since=expected[0][1] - 5000,
                                      until=expected[-1][1], timeout=10)
        cut = await request_history(redis, "binance", "BTC/USDT", "1s", since=expected[0][1] - 5000,
                                    until=expected[-1][1], limit=5, timeout=10)
        with pytest.raises(ExchangeError, match="not listed"):
            await request_history(redis, "binance", "NOPE/USDT", "1m", since=0, timeout=10)
        # requests go to their exchange's stream: no feed serves kraken here, so nobody answers
        with pytest.raises(TimeoutError, match="serving kraken"):
            await request_history(redis, "kraken", "BTC/USD", "1m", since=0, timeout=1)
    # independent: pandas over the recording, closed 1s buckets only
    df = pd.DataFrame(expected, columns=["id", "ts", "price", "amount", "buy"])
    df["b"] = df["ts"] // 1000 * 1000
    df = df[df["b"] + 1000 <= expected[-1][1]]
    g = df.groupby("b")
    zero = type(expected[0][3])(0)
    want = [(b, grp["price"].iloc[0], grp["price"].max(), grp["price"].min(), grp["price"].iloc[-1],
             sum(grp["amount"], start=zero), sum(grp["amount"][grp["buy"]], start=zero), len(grp),
             sum((p * a for p, a in zip(grp["price"], grp["amount"])), start=zero)) for b, grp in g]
    assert reply.ok and reply.complete
    assert reply.rows == want
    assert not cut.complete and cut.rows == want[:5]
    dead = [f for _, f in await redis.xrange(streams.DEAD_LETTER)]
    assert [f[b"source"] for f in dead] == [streams.history_requests("binance").encode()] * 2, dead
    assert b"'reply_to'" in dead[0][b"reason"] and b"'tf'" in dead[1][b"reason"]


@pytest.mark.parametrize("watch", ["multi", "per_symbol"])
async def test_simulated_exchange_through_ccxt_equals_the_simulated_market(redis, watch):
    """The demo's path: exchange_sim (simulated market) → ccxt.pro → market_feed, two symbols, with tickers, the
    connections dropped twice; trades watched with one watch_trades_for_symbols or one watch_trades per symbol."""
    from services.exchange_sim.app import serve
    from services.exchange_sim.settings import Settings as SimSettings
    from shared.simulated import SimulatedMarket

    symbols = ["BTC/USDT", "ETH/USDT"]
    sim_settings = SimSettings(port=0, symbols=symbols, seed=5, start_ms=1_700_000_000_000, duration_s=90,
                               speed=60, wait_for_client=True)
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(sim_settings, stop, ready))
    sim = await asyncio.wait_for(ready, 10)
    expected: dict[str, list] = {s: [] for s in symbols}
    for s, t in SimulatedMarket(symbols, seed=5, start_ms=1_700_000_000_000, duration_s=90).trades():
        expected[s].append(tuple(t))
    settings = Settings(mode="live", silence_timeout_s=1.0, backoff_base_s=0.05,
                        exchanges=[{**sim.feed_config(), "trades_watch": watch}])
    try:
        async with running_feed(settings, redis) as app:
            total = sum(len(v) for v in expected.values())
            def trade_sockets() -> int:
                return len([c for c in app.live.exchanges["binance"].clients.values()
                            if any(str(k).startswith("trade::") for k in c.subscriptions)])

            most_sockets = 0
            for share in (0.2, 0.3, 0.5, 0.6):
                await sim.wait_released(int(total * share))
                most_sockets = max(most_sockets, trade_sockets())
                if share in (0.3, 0.6):
                    await sim.drop_connections()
            for s in symbols:
                await wait_last_id(redis, expected[s][-1][0], symbol=s)
            await sim.finished.wait()
            # ccxt gives each watch_trades / watch_trades_for_symbols call its own socket
            # (sampled while trades flow: once the finite market ends, silence timeouts close sockets)
            # (multi: one subscription per partition held; the two symbols are in partitions 3 and 9)
            assert {partition_of("binance", s, 16) for s in symbols} == {3, 9}
            assert most_sockets == 2
            assert app.live.last_ids() == {("binance", s): i for s, i in sim.last_ids().items()}
        await app.live.publish_final_watermarks()
    finally:
        stop.set()
        await server
    for s in symbols:
        trades, gaps = await published(redis, symbol=s)
        assert not gaps
        # the feed subscribed after the first symbol's first trades may have gone by: a contiguous, exact suffix
        assert trades and trades == expected[s][len(expected[s]) - len(trades):]
        assert len(trades) >= 0.9 * len(expected[s])
        tickers = [Ticker.decode(f[FIELD]) for _, f in await redis.xrange(tickers_stream("binance", s))]
        assert tickers and all(t.bid < t.last < t.ask for t in tickers)
        last = decode_feed((await redis.xrevrange(trades_stream("binance", s), count=1))[0][1][FIELD])
        assert last == Watermark("binance", s, expected[s][-1][1], final=True)


async def test_malformed_frame_stall_is_reconnected_within_seconds(redis):
    """Defect 10: a truncated trade frame (sent through exchange-sim's control endpoint) kills ccxt's reader inside
    its own callback ("Exception in callback") and nothing more is delivered. With the default 60 s silence timeout
    the busy pair is still reconnected within seconds (a few expected intervals, at least ``stall_min_s``), and the
    trade lost in the frame and those after it are backfilled by REST: every trade once, no gap."""
    import httpx

    path = shared_data(RECORDING)
    expected = expected_trades(path)
    loop = asyncio.get_running_loop()
    async with local_exchange(path, speed=4) as sim, running_feed(live_settings(sim, silence_timeout_s=60), redis) as app:
        await sim.wait_released(500)
        async with httpx.AsyncClient(base_url=f"http://{sim.host}:{sim.port}") as client:
            response = await client.post("/_sim/malformed", params={"count": 1})
        assert response.status_code == 200, response.text
        sent = loop.time()
        health = app.live.health["binance|BTC/USDT|trades"]
        while health.timeouts == 0:
            assert loop.time() - sent < 30, "the stalled socket was not noticed"
            await asyncio.sleep(0.05)
        noticed = loop.time() - sent
        await wait_last_id(redis, expected[-1][0], timeout=30)
        trades, gaps = await published(redis)
    assert trades == expected and gaps == []
    assert health.backfilled >= 1
    assert noticed < 20  # the 60 s silence timeout did not decide it (stall_min_s is 5 s by default)


async def test_unreachable_exchange_is_retried_with_its_cause_while_the_other_streams(redis):
    """Issue 23 point 4, in-process: kraken's REST address accepts connections and never answers (ccxt's timeout
    0.3 s) while binance streams; kraken is retried with backoff and its state says it timed out; a refused
    address says so."""
    path = shared_data(RECORDING)
    expected = expected_trades(path)
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    silent_port = silent.sockets[0].getsockname()[1]
    refused_port = free_port()
    try:
        async with local_exchange(path) as sim:
            settings = live_settings(sim)
            settings.exchanges.append(ExchangeFeed(id="kraken", symbols=["BTC/USD"], timeout_s=0.3, tickers=False,
                                                   ws_url=f"ws://127.0.0.1:{silent_port}/v2",
                                                   rest_url=f"http://127.0.0.1:{silent_port}"))
            settings.exchanges.append(ExchangeFeed(id="binanceus", symbols=["BTC/USD"], tickers=False,
                                                   ws_url=f"ws://127.0.0.1:{refused_port}/stream",
                                                   rest_url=f"http://127.0.0.1:{refused_port}/api/v3"))
            async with running_feed(settings, redis) as app:
                await wait_last_id(redis, expected[-1][0])
                kraken, refused = app.live.connections["kraken"], app.live.connections["binanceus"]
                assert kraken.state == "retrying" and kraken.attempts >= 2
                assert kraken.error.startswith("kraken: cannot load markets: timed out"), kraken.error
                assert refused.state == "retrying" and "connection refused" in refused.error, refused.error
                status = app.status()
                assert status["kraken.state"] == "retrying" and status["binance.state"] == "up"
                assert "timed out" in status["kraken.error"]
            trades, gaps = await published(redis)
            assert trades == expected and gaps == []
    finally:
        silent.close()
