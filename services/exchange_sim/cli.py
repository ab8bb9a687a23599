"""``sentinel exchange-sim``: the local Binance-protocol exchange as a command."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from services.exchange_sim.app import serve
from services.exchange_sim.books_server import BookExchangeSim
from services.exchange_sim.settings import Settings
from shared.logs import setup_logging
from shared.runtime import install_signal_handlers


def exchange_sim_command(
    trades: Annotated[Optional[Path], typer.Option(help="Replay this recording instead of the simulated market.")] = None,
    symbol: Annotated[Optional[str], typer.Option(help="Symbol of --trades (guessed from the file name).")] = None,
    symbols: Annotated[Optional[str], typer.Option(help="Simulated symbols, comma-separated.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (0 = any free one).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Interface to listen on.")] = None,
    speed: Annotated[Optional[float], typer.Option(help="Real time × speed; 0 = as fast as possible.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the simulated market.")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="binance (default) or kraken.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Settings file (section exchange_sim).")] = None,
) -> None:
    """Run a local exchange speaking Binance spot's protocol (websocket /stream, REST /api/v3), or Kraken's."""
    overrides: dict = {}
    if trades is not None:
        overrides.update(source="replay", replay_file=trades)
    for key, value in (("symbol", symbol), ("port", port), ("host", host), ("speed", speed), ("seed", seed),
                         ("protocol", protocol)):
        if value is not None:
            overrides[key] = value
    if symbols:
        overrides["symbols"] = [s.strip() for s in symbols.split(",") if s.strip()]
    settings = Settings.load(config, **overrides)
    setup_logging(settings.log_level)
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, ready))
    sim = await asyncio.wait_for(asyncio.shield(ready), timeout=30) if not task.done() else task.result()
    exchange_id = settings.protocol
    typer.echo(f"exchange simulator ({exchange_id} protocol) for {', '.join(sim.books)}\n"
               f"  websocket: {sim.ws_url}\n  REST:      {sim.rest_url}\n"
               f"  market_feed settings:\n    exchanges:\n      - id: {exchange_id}\n"
               f"        symbols: [{', '.join(sim.books)}]\n        ws_url: {sim.ws_url}\n"
               f"        rest_url: {sim.rest_url}\n{_books_lines(sim)}  Ctrl-C to stop.")
    await task


def _books_lines(sim: object) -> str:
    """What a BookExchangeSim serves beside trades: depth, and the perpetuals' URLs for ccxt binanceusdm."""
    if not isinstance(sim, BookExchangeSim):
        return ""
    lines = f"  depth: {sim.depth_source} (<sym>@depth@100ms, GET /api/v3/depth; POST /_sim/gap makes a gap)\n"
    if sim.perps:
        lines += (f"  USD-M perpetuals (ccxt binanceusdm): urls['api']['ws']['linear'] = {sim.futures_ws_url}\n"
                  f"                                      urls['api']['fapiPublic'] = {sim.futures_rest_url}\n")
    return lines
