"""market_feed settings (section ``market_feed`` of the settings file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.market_feed.book_settings import BookFeedSettings, DerivsFeedSettings
from shared.recordings import guess_exchange, guess_symbol
from shared.config import ServiceSettings
from shared.errors import ConfigError


class ExchangeFeed(BaseModel):
    """One exchange of live mode: its symbols and optional URL overrides (mirrors, proxies, the local simulator)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="ccxt exchange id, e.g. binance, coinbase, kraken")
    name: str = Field(default="", description="the exchange name of what this entry publishes (streams, registries, "
                                              "partitions, alerts); default: id. Two entries may share an id (e.g. "
                                              "a local simulator speaking Binance's protocol, named sim)")
    symbols: list[str] = Field(min_length=1, description="unified symbols, e.g. BTC/USDT")
    tickers: bool = True
    trades_watch: Literal["auto", "multi", "per_symbol"] = Field(
        default="auto", description="multi = one watch_trades_for_symbols subscription for the symbols of each "
                                    "partition this replica holds; per_symbol = one watch_trades task each; "
                                    "auto = multi where ccxt has it (2+ symbols)")
    backfill_paging: Literal["auto", "id", "time"] = Field(
        default="auto", description="REST backfill pages by trade id (Binance fromId) or by time (since); "
                                    "auto = id on the Binance family, time elsewhere")
    ws_url: str | None = Field(default=None, description="websocket base URL override (Binance spot: must contain "
                                                         "'/stream', e.g. ws://127.0.0.1:9443/stream)")
    rest_url: str | None = Field(default=None, description="REST base URL override, e.g. http://127.0.0.1:9443/api/v3")
    timeout_s: float = Field(default=10.0, gt=0, description="REST request timeout (ccxt's timeout)")

    @model_validator(mode="after")
    def _default_name(self) -> ExchangeFeed:
        self.name = self.name or self.id
        return self


class Settings(ServiceSettings):
    section = "market_feed"

    mode: Literal["replay", "simulated", "live"] = "simulated"

    # ---- replay
    replay_file: Path | None = Field(default=None, description="recorded trades CSV (.gz ok) for mode=replay")
    exchange: str | None = Field(default=None, description="exchange name of the replay/simulated streams; "
                                                           "default: guessed from the replay path, else binance")
    symbol: str | None = Field(default=None, description="symbol of the replay file; guessed from its name if unset")
    speed: float = Field(default=0.0, ge=0.0, description="0 = as fast as possible; else real time × speed")
    resume: bool = Field(default=True, description="skip trades with an id at or below the last one already "
                                                   "published for the stream (restart safety)")

    # ---- publishing
    batch_size: int = Field(default=200, ge=1, le=10_000, description="max trades per stream entry")
    batch_window_ms: int = Field(default=50, ge=0, description="trades within this many ms share an entry")
    watermark_every_ms: int = Field(default=1_000, ge=1, description="exchange-time interval between watermarks")
    pipeline_entries: int = Field(default=100, ge=1, description="entries per Redis round trip when replaying fast")
    max_lag_entries: int = Field(default=50_000, ge=100, description="replay pauses while the candle_builder group "
                                                                     "lags more than this (stream trimming safety)")
    stream_maxlen: int = Field(default=1_000_000, ge=1_000, description="approximate MAXLEN of the trades streams")

    # ---- simulated
    sim_symbols: list[str] = Field(default_factory=lambda: ["BTC/USDT", "ETH/USDT"])
    sim_seed: int = 42
    sim_duration_s: float | None = Field(default=1800.0, description="simulated seconds; null (in the environment "
                                         "also 'unbounded') = run until stopped")
    sim_minutes: float | None = Field(default=None, gt=0, description="shorthand: sim_duration_s = minutes × 60")
    sim_start_ms: int = Field(default=1_704_067_200_000, description="exchange time of the first simulated trade")
    ticker_every_ms: int = Field(default=1_000, ge=10, description="simulated tickers: exchange-time interval")

    # ---- live
    exchanges: list[ExchangeFeed] = Field(default_factory=list, description="live mode: exchanges and symbols")
    books: list[BookFeedSettings] = Field(default_factory=list, description="order books of one exchange per entry "
                                          "(snapshots + metrics to streams.part_books): services/market_feed/books.py")
    derivatives: list[DerivsFeedSettings] = Field(default_factory=list, description="funding, open interest and "
                                                  "liquidations of one futures exchange per entry (streams.part_derivs)")
    silence_timeout_s: float = Field(default=60.0, gt=0, description="a stream silent this long (per symbol, "
                                                                     "scaled by its usual rate) is reconnected")
    stall_intervals: float = Field(default=20.0, gt=1, description="a symbol that has been delivering is taken for "
                                                                   "stalled after this many of its usual gaps "
                                                                   "between frames without one (reconnect + REST "
                                                                   "backfill)")
    stall_min_s: float = Field(default=5.0, gt=0, description="... but never sooner than this")
    backoff_base_s: float = Field(default=0.5, gt=0, description="first retry delay: exchange reconnects, markets "
                                                                 "that would not load, Redis unavailable")
    backoff_cap_s: float = Field(default=30.0, gt=0, description="longest retry delay (jittered)")
    backfill_max_pages: int = Field(default=200, ge=1, description="REST pages per gap before a gap marker")
    ccxt_trades_limit: int = Field(default=10_000, ge=1_000, description="ccxt's per-symbol trade cache: headroom "
                                                                         "for bursts before trades must be backfilled")
    dedup_window: int = Field(default=100_000, ge=1_000, description="recent trade ids remembered per stream")

    @field_validator("exchanges", "books", "derivatives")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [entry.name for entry in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"exchange names must be unique: {', '.join(map(repr, twice))} more than once; give "
                             "entries that share a ccxt id each their own name")
        return value

    @field_validator("sim_duration_s", mode="before")
    @classmethod
    def _unbounded(cls, value: Any) -> Any:
        """The environment has no null: SENTINEL_SIM_DURATION_S=unbounded (or null, none) runs until stopped."""
        if isinstance(value, str) and value.strip().lower() in ("unbounded", "null", "none"):
            return None
        return value

    def resolved_exchange(self) -> str:
        if self.exchange:
            return self.exchange
        if self.mode == "replay" and self.replay_file is not None:
            return guess_exchange(self.replay_file) or "binance"
        return "binance"

    def resolved_symbol(self) -> str:
        """The replay file's symbol: ``symbol`` or a guess from the file name (ConfigError if neither)."""
        if self.symbol:
            return self.symbol
        guess = guess_symbol(self.replay_file) if self.replay_file else None
        if not guess:
            raise ConfigError(f"market_feed.symbol — cannot guess the symbol from the file name "
                              f"{str(self.replay_file)!r}; set market_feed.symbol (e.g. BTC/USDT)")
        return guess

    @model_validator(mode="after")
    def _mode_needs(self) -> Settings:
        if self.mode == "replay" and self.replay_file is None:
            raise ValueError("mode=replay needs replay_file")
        if self.sim_minutes is not None:
            self.sim_duration_s = self.sim_minutes * 60
        if self.mode == "live" and not self.exchanges:
            raise ValueError("mode=live needs at least one entry in exchanges")
        return self
