"""ccxt.pro (4.5.90) runs its order-book and USD-M futures calls against the local exchange, offline.

The exchange replays Binance's real BTCUSDT capture (trades and depth diffs). Books: every book ccxt hands out, at
its nonce (the update id it reached), has the best levels of the exchange's own book at that id; a withheld diff
makes ccxt raise and the next call resyncs. Futures: the values ccxt parses are checked against the trades of the
recording read with pandas (index = last trade price, next funding at the next 8-hour boundary, liquidations at
real trade prices).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import ccxt
import pandas as pd
import pytest

from tests.conftest import shared_data
from tests.integration.market_feed.book_sim import TRADES, capture_exchange, ccxt_clients

pytestmark = pytest.mark.timeout(120)


def _exact(x: float) -> Decimal:
    return Decimal(repr(x))  # ccxt keeps book levels as floats; repr gives back the exchange's decimal


def _next_funding(ms: int) -> int:
    t = datetime.fromtimestamp(ms / 1000, UTC)
    boundary = t.replace(hour=t.hour - t.hour % 8, minute=0, second=0, microsecond=0) + timedelta(hours=8)
    return int(boundary.timestamp() * 1000)


async def test_watch_order_book_equals_the_exchange_book_and_resyncs_after_a_gap():
    async with capture_exchange(speed=20) as sim, ccxt_clients(sim) as (spot, _):
        state = sim.depth["BTC/USDT"]
        seen, errors, after_gap = 0, 0, 0
        for i in range(80):
            if i == 30:
                sim.make_gap("BTC/USDT")
            try:
                ob = await asyncio.wait_for(spot.watch_order_book("BTC/USDT"), 10)
            except ccxt.InvalidNonce:
                errors += 1
                continue
            bid, ask = state.best_at(ob["nonce"])
            assert (_exact(ob["bids"][0][0]), _exact(ob["bids"][0][1])) == bid
            assert (_exact(ob["asks"][0][0]), _exact(ob["asks"][0][1])) == ask
            seen += 1
            after_gap += errors > 0
        assert errors == 1 and state.dropped == 1
        assert seen == 79 and after_gap > 30


async def test_funding_open_interest_mark_price_and_liquidations_through_ccxt():
    trades = pd.read_csv(shared_data(TRADES), dtype={"price": str, "amount": str})
    async with capture_exchange(speed=20) as sim, ccxt_clients(sim) as (_, perp):
        symbol = "BTC/USDT:USDT"
        mark = await asyncio.wait_for(perp.watch_mark_price(symbol), 10)
        info = mark["info"]
        before = trades[trades["timestamp"] <= info["E"]]
        assert Decimal(info["i"]) == Decimal(before["price"].iloc[-1])  # index = last trade price
        assert info["T"] == _next_funding(info["E"])
        assert mark["markPrice"] == float(info["p"]) and mark["indexPrice"] == float(info["i"])

        funding = await perp.fetch_funding_rate(symbol)
        assert funding["fundingTimestamp"] == _next_funding(funding["timestamp"])
        assert Decimal(funding["info"]["lastFundingRate"]) == Decimal(repr(funding["fundingRate"]))
        assert -Decimal("0.0075") <= Decimal(funding["info"]["lastFundingRate"]) <= Decimal("0.0075")

        oi = await perp.fetch_open_interest(symbol)
        assert oi["openInterestAmount"] > 0 and oi["timestamp"] in set(trades["timestamp"])

        liquidations = []
        while len(liquidations) < 3:
            liquidations += await asyncio.wait_for(perp.watch_liquidations(symbol), 30)
        by_ts = trades.set_index("timestamp")
        for liq in liquidations:
            at = by_ts.loc[[liq["timestamp"]]]
            assert str(Decimal(liq["info"]["ap"])) in set(at["price"])  # filled at a real trade's price
            assert liq["side"] in set(at["side"])  # on that trade's taker side
            assert liq["symbol"] == symbol and liq["contracts"] > 0


async def test_synthetic_depth_of_the_simulated_market_through_ccxt():
    """The default source (``sentinel exchange-sim``): a seeded book around the simulated market's last price."""
    from services.exchange_sim.app import build
    from services.exchange_sim.settings import Settings

    sim = build(Settings(port=0, symbols=["BTC/USDT"], speed=5.0, duration_s=600, start_ms=1_700_000_000_000))
    await sim.start()
    try:
        async with ccxt_clients(sim) as (spot, perp):
            state = sim.depth["BTC/USDT"]
            for _ in range(30):
                ob = await asyncio.wait_for(spot.watch_order_book("BTC/USDT"), 10)
                bid, ask = state.best_at(ob["nonce"])
                assert (_exact(ob["bids"][0][0]), _exact(ob["asks"][0][0])) == (bid.price, ask.price)
                assert len(ob["bids"]) == len(ob["asks"]) == 50
            assert ask.price - bid.price == 2 * Decimal("0.01")  # one tick either side of a trade price
            mark = await asyncio.wait_for(perp.watch_mark_price("BTC/USDT:USDT"), 10)
            assert mark["markPrice"] > 0
    finally:
        await sim.stop()
