"""Building and serving the local exchange from its settings."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

from services.exchange_sim.books_server import BookExchangeSim
from services.exchange_sim.kraken import KrakenSim
from services.exchange_sim.server import ExchangeSim
from services.exchange_sim.settings import Settings
from shared.recordings import guess_symbol, read_trades
from shared.simulated import SimulatedMarket, spec_for
from shared.errors import ConfigError

logger = logging.getLogger(__name__)


def build(settings: Settings) -> ExchangeSim:
    """An ExchangeSim fed by the simulated market or a recording, per ``settings`` (not started)."""
    if settings.source == "replay":
        path = settings.replay_file
        symbol = settings.symbol or guess_symbol(path)  # type: ignore[arg-type]
        if not symbol:
            raise ConfigError(f"exchange_sim.symbol — cannot guess the symbol from {str(path)!r}; set it")
        source = ((symbol, t) for t in read_trades(path))  # type: ignore[arg-type]
        grids = {symbol: (Decimal("0.00000001"), Decimal("0.00000001"))}
    else:
        start = settings.start_ms if settings.start_ms is not None else int(time.time() * 1000)
        market = SimulatedMarket(settings.symbols, seed=settings.seed, start_ms=start,
                                 duration_s=settings.duration_s)
        source = market.trades()
        grids = {s: (spec_for(s).tick, spec_for(s).lot) for s in settings.symbols}
    common = dict(host=settings.host, port=settings.port, speed=settings.speed, retention=settings.retention,
                  ticker_every_ms=settings.ticker_every_ms, start_on_subscribe=settings.wait_for_client)
    if settings.protocol == "kraken":
        return KrakenSim(source, grids, **common)
    return BookExchangeSim(source, grids, depth=settings.depth, depth_files=settings.depth_files,
                           depth_symbol=settings.depth_symbol, futures=settings.futures, seed=settings.seed,
                           liquidation_rate=settings.liquidation_rate, **common)


async def serve(settings: Settings, stop: asyncio.Event | None = None,
                ready: asyncio.Future[ExchangeSim] | None = None) -> None:
    """Run the local exchange until ``stop`` is set; ``ready`` gets the started server (for its URLs)."""
    stop = stop or asyncio.Event()
    sim = build(settings)
    await sim.start()
    if ready is not None and not ready.done():
        ready.set_result(sim)
    try:
        await stop.wait()
    finally:
        await sim.stop()
