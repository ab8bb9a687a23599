"""Settings of candle_builder (section ``candle_builder`` of the settings file).

Example::

    candle_builder:
      timeframes: [1m, 5m, 15m, 1h]   # always built; subscribers add more at run time
      flat_candles: true              # empty intervals give OHLC = previous close, volume 0
      live_throttle_ms: 250           # in-progress candles at most this often per series
      live_throttle_clock: wall       # exchange: time of the trades (sentinel backtest sets it: deterministic)
      lateness_ms: 60000              # late trades this close to the newest exchange time revise closed candles
      candle_retention: {1s: 3600}    # entries kept per series stream by timeframe (others: candles_maxlen, 6000)
      # history_bars: 500             # unset = auto: 500 when the feed is live, off for replays; 0 = off
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from shared.config import ServiceSettings
from shared.errors import ConfigError
from shared.timeframes import sort_timeframes, timeframe_ms


#: Candles of history per timeframe seeded automatically when the feed is live (history_bars unset): a day of 1m
#: candles is 1440; 500 covers the usual indicator warm-ups (EMA 200 and the like) on every timeframe.
AUTO_HISTORY_BARS = 500
#: Most candles of history asked for one timeframe (history_bars or a look-back).
MAX_HISTORY_BARS = 5_000
#: Default ``candle_retention``: entries kept per series stream (~420 B each in Redis: bench/bench_candle_memory.py,
#: docs/scale-out.md). 1s series keep an hour; the others ``candles_maxlen``.
DEFAULT_RETENTION = {"1s": 3_600}


class Settings(ServiceSettings):
    section = "candle_builder"

    timeframes: list[str] = Field(default_factory=lambda: ["1m", "5m", "15m", "1h"],
                                  description="Timeframes built for every traded (exchange, symbol).")
    base_timeframe: str = Field(default="1m", description="Base candle every timeframe is rolled up from "
                                "(1s is used automatically when 1s is wanted).")
    flat_candles: bool = Field(default=True, description="Publish flat candles for intervals without trades.")
    max_flat_candles: int = Field(default=20_000, gt=0, description="Most flat base candles filled in one jump.")
    lateness_ms: int = Field(default=60_000, ge=0, description="Late trades within this many ms of the newest "
                             "exchange time revise closed candles; older ones are counted and logged.")
    live_throttle_ms: int = Field(default=250, ge=0, description="Least time between in-progress candles per series.")
    live_throttle_clock: Literal["wall", "exchange"] = Field(
        default="wall", description="The clock of live_throttle_ms. wall (default): the newest state at most every "
        "live_throttle_ms of wall time (what live views want; a backlog read at once gives one candle, and a replay "
        "at speed x60 no more updates than a live feed); exchange: an in-progress candle as of the first trade of "
        "each live_throttle_ms window of exchange time (the same candles, so the same intrabar alerts, whatever the "
        "speed of a replay or how the stream is read: sentinel backtest uses it).")
    live_candles: bool = Field(default=True, description="Publish in-progress candles to part_live streams.")
    close_on_timer: bool = Field(default=True, description="Close candles of live series on time (bucket end + grace) "
                                 "even when no trade or watermark arrives; replays are closed by exchange time only.")
    close_grace_ms: int = Field(default=1_000, ge=0, description="How long after a bucket's end (in estimated "
                                "exchange time) the timer closes it; late trades after that revise it.")
    timer_every_ms: int = Field(default=100, gt=0, description="How often the closing timer looks at live series.")
    live_max_skew_ms: int = Field(default=30_000, gt=0, description="A series is live (timer-closed) when its trades "
                                  "reach Redis within this many ms of their exchange time.")
    history_bars: int | None = Field(default=None, ge=0, le=MAX_HISTORY_BARS, description="Seed a new series with "
                                     "this many candles of REST history per timeframe (served by market_feed on "
                                     "history_requests(exchange)), or more when a subscriber's look-back "
                                     "(shared.subscriptions) asks; 0 = off. Unset (auto): AUTO_HISTORY_BARS when the "
                                     "pair's feed is live (market_feed's heartbeat says mode live and trades reach "
                                     "Redis within live_max_skew_ms of their exchange time), off for replays.")
    history_timeout_s: float = Field(default=5.0, gt=0, description="How long to wait for a history reply.")
    candle_retention: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_RETENTION),
        description="Approximate MAXLEN of each series' closed-candle stream (series_candles), per timeframe; a "
        "timeframe not listed keeps candles_maxlen. Keep at least the longest look-back a rule or chart reads from "
        "the stream (alert_engine warms up from it), plus room for revisions and backfilled history.")
    candles_maxlen: int = Field(default=MAX_HISTORY_BARS + 1_000, gt=0, description="Approximate MAXLEN of a series' "
                                "closed-candle stream whose timeframe candle_retention does not list: the longest "
                                "look-back (MAX_HISTORY_BARS) and 1,000 entries for revisions and backfill.")
    part_candles_maxlen: int = Field(default=100_000, gt=0, description="Approximate MAXLEN of a partition's "
                                     "closed-candle stream (part_candles: every series of the partition): what a "
                                     "reader of it (alert_engine) may lag behind before it loses entries.")
    live_maxlen: int = Field(default=10_000, gt=0, description="Approximate MAXLEN of a partition's "
                             "in-progress-candle stream (part_live: every series of the partition).")
    read_count: int = Field(default=2_000, gt=0, description="COUNT of each XREAD of a partition's trades stream.")
    block_ms: int = Field(default=200, gt=0, description="BLOCK of each XREAD of a partition's trades stream.")
    discover_every_s: float = Field(default=1.0, gt=0, description="How often FEED_REGISTRY and the subscriptions are read.")
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    @field_validator("timeframes")
    @classmethod
    def _known_timeframes(cls, value: list[str]) -> list[str]:
        for tf in value:
            try:
                timeframe_ms(tf)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return sort_timeframes(value)

    @field_validator("candle_retention")
    @classmethod
    def _retention(cls, value: dict[str, int]) -> dict[str, int]:
        for tf, maxlen in value.items():
            try:
                timeframe_ms(tf)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            if maxlen <= 0:
                raise ValueError(f"{tf}: the candles kept must be > 0, got {maxlen}")
        return value

    def retention(self, timeframe: str) -> int:
        """Approximate MAXLEN of a series' closed-candle stream of ``timeframe``."""
        return self.candle_retention.get(timeframe, self.candles_maxlen)

    @field_validator("base_timeframe")
    @classmethod
    def _known_base(cls, value: str) -> str:
        if value not in ("1s", "1m"):
            raise ValueError("base_timeframe must be 1s or 1m")
        return value
