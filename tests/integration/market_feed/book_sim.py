"""The local exchange replaying Binance's real BTCUSDT capture: trades, depth diffs (from the REST snapshot on)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt.pro as ccxtpro

from services.exchange_sim.books_server import BookExchangeSim
from shared.recordings import read_trades
from tests.conftest import shared_data

DIR = "binance_spot_btcusdt"
TRADES = f"{DIR}/BTCUSDT-trades-20240808T2354-20240809T0005.csv"  # the trades of the same capture
CAPTURE = f"{DIR}/raw_ws_btcusdt_20240808.gz"
GRID = {"BTC/USDT": (Decimal("0.01"), Decimal("0.00001"))}


@contextlib.asynccontextmanager
async def capture_exchange(speed: float = 20.0, **kw: Any) -> AsyncIterator[BookExchangeSim]:
    sim = BookExchangeSim((("BTC/USDT", t) for t in read_trades(shared_data(TRADES))), GRID, speed=speed,
                          depth="recorded", depth_files=[shared_data(CAPTURE)], **kw)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def ccxt_clients(sim: BookExchangeSim) -> AsyncIterator[tuple[Any, Any]]:
    """(spot binance, binanceusdm) ccxt.pro instances pointed at ``sim`` (URLs: services/market_feed/NOTES.md)."""
    spot = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False}})
    spot.urls["api"]["ws"]["spot"] = sim.ws_url
    spot.urls["api"]["public"] = sim.rest_url
    perp = ccxtpro.binanceusdm({"options": {"fetchCurrencies": False}})
    perp.urls["api"]["ws"]["linear"] = sim.futures_ws_url
    perp.urls["api"]["fapiPublic"] = sim.futures_rest_url
    try:
        await spot.load_markets()
        await perp.load_markets()
        yield spot, perp
    finally:
        await spot.close()
        await perp.close()
