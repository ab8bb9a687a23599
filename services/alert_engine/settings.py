"""alert_engine settings (section ``alert_engine`` of the settings file, or ``SENTINEL_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from shared.config import ServiceSettings

#: The rules file shipped with the package, written for the simulated market (``sentinel demo``).
SAMPLE_RULES = Path(__file__).with_name("sample_rules.yaml")


class Settings(ServiceSettings):
    section: ClassVar[str] = "alert_engine"

    rules_file: Path = Field(default=SAMPLE_RULES, description="YAML rules file (see services/alert_engine/rules.py).")
    reload_every_s: float = Field(default=2.0, gt=0, description="How often the rules file is checked for changes.")
    registry_poll_s: float = Field(default=2.0, gt=0, description="How often symbol patterns are re-resolved.")
    warmup_bars: int = Field(default=300, ge=0, description="Closed candles read back per series on start or when "
                             "it is first needed, at least: more when a rule's look-back needs more (up to "
                             "shared.history.MAX_HISTORY_BARS); the same number is asked of candle_builder "
                             "(SUBSCRIPTION_LOOKBACK).")
    history_bars: int = Field(default=600, ge=10, description="Candles kept per series for indicators.")
    intrabar: bool = Field(default=True, description="Read in-progress candles for rules whose frequency allows it.")
    clock: Literal["wall", "exchange"] = Field(
        default="wall", description="What snooze_until is compared with: wall time (live), or exchange time (a "
        "deterministic backtest / replay; `sentinel backtest` sets it).")
    cross_series_wait_ms: int = Field(
        default=2_000, ge=0, description="Live (clock wall): how long a closed bar of a rule reading another series "
        "(or tickers) waits for that series' bar of the same close (a ticker past the close) before it is evaluated "
        "with what is there. With clock exchange (a backtest) bars wait until that data arrives or the engine stops.")
    fast_close: bool = Field(
        default=True, description="Close bars from the trades stream with a replica of candle_builder's builder "
        "(restored from its saved state) and evaluate them at once, instead of waiting for candle_builder's closed "
        "candle (one hop less; candle_builder's candle is compared and a difference re-syncs the replica). Costs "
        "reading every trade of the watched pairs. Turn off when engine replicas share the consumer group (each "
        "would see only part of the trades).")
    linger_ms: int = Field(
        default=5, ge=0, description="Live (clock wall), fast close, when the engine reads only closed-bar work (no "
        "tick-level, ticker or in-progress-candle rules): between bar closes, wait this long after a read before the "
        "next one, so the trades are read in fewer, larger batches (less CPU, fewer wake-ups); from just before a "
        "bar's close until CLOSE_TAIL_MS after it every trade is read at once. 0: always read at once.")
    speculate_ms: int = Field(
        default=10, ge=0, description="Fast close: after each read of a pair's trades, its bar is evaluated ahead, as "
        "if it had closed, when its close is within this many ms of the exchange's time (as the trades read so far "
        "tell it) and within 3 of the pair's gaps between trades (a busy pair: only its last moments); when the "
        "trade that closes it comes and the bar is unchanged, its alerts are published from that evaluation (the "
        "close costs only the publish). Only for series whose rules read nothing but their own "
        "candles and no wall clock (no other series, tickers or snooze). 0: off.")
    top_up: bool = Field(
        default=True, description="Fast close, live: when a read brings the trade that closes one pair's bar (at most "
        "TOP_UP_MS, 50 ms, after the bar's end) while other pairs' bars of the same close are still open, read once "
        "more at once (no wait) so the closing trades that came together are evaluated and published together, not "
        "the first alone and the others after it. From CLOSE_LEAD_MS before a close until TOP_UP_MS after it, a "
        "read that returned a single entry (a read served at the first of entries written together) is topped up "
        "before that entry is decoded.")
    block_ms: int = Field(default=200, ge=1)
    batch: int = Field(default=500, ge=1)
    alerts_maxlen: int = Field(default=100_000, ge=100)
    history_maxlen: int = Field(default=1_000_000, ge=100, description="Retention of the alert history stream.")
    fired_ttl_s: int = Field(default=30 * 86_400, ge=60, description="How long alert ids are remembered (replay).")
