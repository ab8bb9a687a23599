"""Live mode against a second protocol: real ccxt.pro kraken (websocket v2, REST /0/public) on the local exchange
replaying the real Kraken BTC/USD recording (no ids in the file: rows numbered 1..n, as the exchange's trade_id)."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pandas as pd

from services.exchange_sim.kraken import KrakenSim
from shared.recordings import read_trades
from services.market_feed.settings import Settings
from tests.conftest import shared_data
from tests.integration.market_feed.helpers import published, running_feed, wait_last_id

RECORDING = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"  # 2,672 trades in one hour


def _expected() -> list[tuple]:
    df = pd.read_csv(shared_data(RECORDING), dtype=str, keep_default_na=False)
    return [(n, int(ts), Decimal(p), Decimal(a), s == "buy")
            for n, (ts, p, a, s) in enumerate(df[["timestamp", "price", "amount", "side"]].itertuples(index=False),
                                              start=1)]


@contextlib.asynccontextmanager
async def kraken(speed: float = 2400.0):
    sim = KrakenSim((("BTC/USD", t) for t in read_trades(shared_data(RECORDING))),
                    {"BTC/USD": (Decimal("0.1"), Decimal("0.00000001"))}, speed=speed, start_on_subscribe=True)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def _settings(sim: KrakenSim) -> Settings:
    return Settings(mode="live", silence_timeout_s=1.0, backoff_base_s=0.05, backoff_cap_s=0.5, exchanges=[
        {"id": "kraken", "symbols": ["BTC/USD"], "ws_url": sim.ws_url, "rest_url": sim.rest_url}])


async def test_kraken_every_trade_once_in_order_exact(redis):
    expected = _expected()
    async with kraken() as sim, running_feed(_settings(sim), redis) as app:
        await wait_last_id(redis, expected[-1][0], exchange="kraken", symbol="BTC/USD")
        trades, gaps = await published(redis, "kraken", "BTC/USD")
        assert trades == expected and gaps == []
        assert app.live.health["kraken|BTC/USD|ticker"].messages > 0


async def test_kraken_drops_are_backfilled_by_time_exactly_once(redis):
    expected = _expected()
    async with kraken() as sim, running_feed(_settings(sim), redis) as app:
        for at in (500, 1200, 1900):
            await sim.wait_released(at)
            await sim.drop_connections()
        await wait_last_id(redis, expected[-1][0], exchange="kraken", symbol="BTC/USD")
        trades, gaps = await published(redis, "kraken", "BTC/USD")
        assert trades == expected and gaps == []
        health = app.live.health["kraken|BTC/USD|trades"]
        # trades and ticker share one Kraken connection; a drop during a reconnect is one reconnect
        assert health.reconnects + health.timeouts >= 2 and health.backfilled > 0
