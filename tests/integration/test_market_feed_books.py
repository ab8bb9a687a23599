"""End to end: the local exchange replaying Binance's real depth diffs → ccxt.pro → BookFeed → a real Redis stream.

Every published snapshot's best bid and ask equal the exchange's own book at the snapshot's update id, and where
Binance's bookTicker of the capture has the same update id, they equal that too. A withheld diff (gap mode) is
resynced, logged and counted, and the books after it agree again.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from decimal import Decimal

import pytest

from services.market_feed.adapters.ccxt_book import BookFeed
from services.market_feed.book_settings import BookFeedSettings
from shared import streams
from shared.book_messages import BookSnapshot
from shared.bus import FIELD
from shared.orderbook.book import L2Book
from shared.orderbook.metrics import book_metrics
from shared.partitions import partition_of
from tests.conftest import shared_data
from tests.integration.market_feed.book_sim import CAPTURE, capture_exchange

pytestmark = pytest.mark.timeout(120)


def _book_tickers() -> dict[int, dict]:
    with gzip.open(shared_data(CAPTURE), "rt") as f:
        frames = (json.loads(line.split(" ", 1)[1]) for line in f)
        return {m["data"]["u"]: m["data"] for m in frames if m.get("stream") == "btcusdt@bookTicker"}


async def _snapshots(redis) -> list[BookSnapshot]:
    """The pair's snapshots in its partition's stream (the feed's default 16 partitions)."""
    entries = await redis.xrange(streams.part_books(partition_of("binance", "BTC/USDT", 16)))
    snaps = [BookSnapshot.decode(fields[FIELD]) for _, fields in entries]
    return [s for s in snaps if (s.exchange, s.symbol) == ("binance", "BTC/USDT")]


async def test_books_from_ccxt_equal_the_exchange_book_and_resync_after_a_gap(redis, caplog):
    caplog.set_level(logging.WARNING, logger="services.market_feed.adapters.ccxt_book")
    async with capture_exchange(speed=15) as sim:  # the capture lasts ~45 s: room for a loaded machine
        settings = BookFeedSettings(symbols=["BTC/USDT"], ws_url=sim.ws_url, rest_url=sim.rest_url,
                                    publish_every_ms=100, top_n=10, bands_bps=[5, 10, 25])
        feed = BookFeed(settings, redis)
        pubsub = redis.pubsub()
        await pubsub.subscribe(streams.channel_books("binance", "BTC/USDT"))
        stop = asyncio.Event()
        task = asyncio.create_task(feed.run(stop))
        try:
            health = feed.health["BTC/USDT"]
            await _until(lambda: health.published >= 25, task, 40, "25 snapshots")
            sim.make_gap("BTC/USDT")
            await _until(lambda: health.resyncs > 0 and health.published >= 60, task, 40,
                         "a resync and 60 snapshots")
        finally:
            stop.set()
            await task
        live = None
        for _ in range(3):  # the first read may be the subscription's confirmation
            live = live or await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        await pubsub.aclose()
        state = sim.depth["BTC/USDT"]

    snaps = await _snapshots(redis)
    assert len(snaps) >= 60
    tickers = _book_tickers()
    at_ticker = 0
    for snap in snaps:
        bid, ask = state.best_at(snap.update_id)
        assert (snap.bids[0], snap.asks[0]) == (tuple(bid), tuple(ask)), snap.update_id
        assert len(snap.bids) == len(snap.asks) == 10
        t = tickers.get(snap.update_id)
        if t is not None:
            at_ticker += 1
            assert snap.bids[0] == (Decimal(t["b"]), Decimal(t["B"])) and snap.asks[0] == (Decimal(t["a"]),
                                                                                            Decimal(t["A"]))
        # the published figures are those of the published levels (top 10 covers the 5 bps band of BTCUSDT here)
        top = L2Book()
        top.load(snap.bids, snap.asks)
        m = book_metrics(top, [5])
        assert (snap.mid, snap.spread, snap.microprice) == (m.mid, m.spread, m.microprice)
        if snap.bands[0].bid_levels < 10 and snap.bands[0].ask_levels < 10:
            assert snap.bands[0].imbalance == m.bands[0].imbalance
    assert [s.update_id for s in snaps] == sorted(s.update_id for s in snaps)  # never a book from before
    health = feed.health["BTC/USDT"]
    assert (health.resyncs, health.errors, health.timeouts, sim.depth["BTC/USDT"].dropped) == (1, 0, 0, 1), health
    assert snaps[0].resyncs == 0 and snaps[-1].resyncs == 1 and sum(s.resyncs == 1 for s in snaps) >= 30
    assert any("gap, resyncing" in r.message for r in caplog.records)
    assert live is not None and BookSnapshot.decode(live["data"]).symbol == "BTC/USDT"
    assert at_ticker > 0, "no snapshot fell on a bookTicker id"


async def _until(condition, task: asyncio.Task, seconds: float, what: str) -> None:
    """Wait for ``condition`` while the feed runs; fail naming ``what`` instead of hanging to the test timeout."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert not task.done(), f"the feed stopped before {what}: {task.exception() if not task.cancelled() else ''}"
        assert asyncio.get_running_loop().time() < deadline, f"no {what} within {seconds}s"
        await asyncio.sleep(0.05)


async def test_funding_open_interest_and_liquidations_to_redis(redis):
    import pandas as pd

    from services.market_feed.adapters.ccxt_derivs import DerivsFeed
    from services.market_feed.book_settings import DerivsFeedSettings
    from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
    from shared.schemas import unpack
    from tests.integration.market_feed.book_sim import TRADES

    trades = pd.read_csv(shared_data(TRADES), dtype={"price": str, "amount": str})
    symbol = "BTC/USDT:USDT"
    stream = streams.part_derivs(partition_of("binanceusdm", symbol, 16))
    decoders = {"funding": FundingRate, "open_interest": OpenInterest, "liquidation": Liquidation}

    async def read() -> list:
        msgs = [unpack(f[FIELD]) for _, f in await redis.xrange(stream)]
        return [decoders[m["k"]].from_msg(m) for m in msgs if m.get("symbol") == symbol]

    async with capture_exchange(speed=30) as sim:
        settings = DerivsFeedSettings(exchange="binanceusdm", symbols=[symbol], ws_url=sim.futures_ws_url,
                                      rest_url=sim.futures_rest_url, open_interest_every_s=0.2)
        feed = DerivsFeed(settings, redis)
        stop = asyncio.Event()
        task = asyncio.create_task(feed.run(stop))
        try:
            for _ in range(400):
                kinds = [m.kind for m in await read()]
                if min(kinds.count(k) for k in ("funding", "open_interest", "liquidation")) >= 3:
                    break
                assert not task.done()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task

    msgs = await read()
    funding = [m for m in msgs if isinstance(m, FundingRate)]
    ois = [m for m in msgs if isinstance(m, OpenInterest)]
    liqs = [m for m in msgs if isinstance(m, Liquidation)]
    assert len(funding) >= 3 and len(ois) >= 3 and len(liqs) >= 3
    for f in funding:
        before = trades[trades["timestamp"] <= f.ts]
        assert f.index_price == Decimal(before["price"].iloc[-1])  # exact, from the exchange's strings
        assert f.next_funding_ts == f.ts - f.ts % 28_800_000 + 28_800_000
        assert f.basis_bps == (f.mark_price - f.index_price) * 10_000 / f.index_price
        assert abs(f.basis_bps) <= 30 and f.funding_rate is not None
    assert all(o.amount > 0 for o in ois) and len({(o.ts, o.amount) for o in ois}) == len(ois)  # changes only
    by_ts = trades.set_index("timestamp")
    for liq in liqs:
        at = by_ts.loc[[liq.ts]]
        assert str(liq.price) in set(at["price"]) and liq.side in set(at["side"])
        assert (liq.order_price < liq.price) if liq.side == "sell" else (liq.order_price > liq.price)
    assert feed.health_fields()[f"binanceusdm|{symbol}|funding.errors"] == 0
