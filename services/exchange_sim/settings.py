"""exchange_sim settings (section ``exchange_sim``): the local Binance-protocol exchange."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    section = "exchange_sim"

    protocol: Literal["binance", "kraken"] = Field(default="binance", description="wire protocol to speak")
    host: str = "127.0.0.1"
    port: int = Field(default=9443, ge=0, le=65535, description="0 = any free port")
    source: Literal["simulated", "replay"] = "simulated"
    replay_file: Path | None = None
    symbol: str | None = Field(default=None, description="symbol of replay_file; guessed from its name if unset")
    symbols: list[str] = Field(default_factory=lambda: ["BTC/USDT", "ETH/USDT"], description="simulated symbols")
    seed: int = 42
    speed: float = Field(default=1.0, ge=0.0, description="real time × speed; 0 = as fast as possible")
    start_ms: int | None = Field(default=None, description="exchange time of the first simulated trade "
                                                           "(default: now, so candles are current)")
    duration_s: float | None = Field(default=None, description="simulated seconds; null = unbounded")
    retention: int = Field(default=1_000_000, ge=1, description="trades per symbol served by REST")
    ticker_every_ms: int = Field(default=1_000, ge=10)
    wait_for_client: bool = Field(default=False, description="release no trade before the first SUBSCRIBE")

    # order books and perpetuals (binance protocol; services/exchange_sim/books_server.py)
    depth: Literal["off", "synthetic", "recorded"] = Field(
        default="synthetic", description="order-book diffs: a seeded book around the last price, or a recording")
    depth_files: list[Path] = Field(default_factory=list, description="depth: recorded — Binance raw websocket "
                                                                      "captures (snapshot line first), in order")
    depth_symbol: str | None = Field(default=None, description="symbol the depth recording is of (default: first)")
    futures: bool = Field(default=True, description="serve a USD-M perpetual per symbol (mark, funding, OI, "
                                                    "liquidations)")
    liquidation_rate: float = Field(default=0.002, ge=0.0, le=1.0, description="chance of a liquidation per trade")

    @model_validator(mode="after")
    def _needs_file(self) -> Settings:
        if self.source == "replay" and self.replay_file is None:
            raise ValueError("source=replay needs replay_file")
        if self.depth == "recorded" and not self.depth_files:
            raise ValueError("depth=recorded needs depth_files")
        return self
