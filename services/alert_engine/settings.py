"""alert_engine settings (section ``alert_engine`` of the settings file, or ``SENTINEL_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from shared.config import ServiceSettings
from shared.consumer import ClaimIdleMs

#: The rules file shipped with the package, written for the simulated market (``sentinel demo``).
SAMPLE_RULES = Path(__file__).with_name("sample_rules.yaml")


class Settings(ServiceSettings):
    section: ClassVar[str] = "alert_engine"

    rules_file: Path = Field(default=SAMPLE_RULES, description="YAML rules file (docs/rules.md).")
    reload_every_s: float = Field(default=2.0, gt=0, description="How often the rules file is checked for changes.")
    registry_poll_s: float = Field(default=2.0, gt=0, description="How often symbol patterns are re-resolved.")
    warmup_bars: int = Field(default=300, ge=0, description="Closed candles read back per series on start or when "
                             "it is first needed, at least: more when a rule's look-back needs more (up to "
                             "shared.history.MAX_HISTORY_BARS); the same number is asked of candle_builder "
                             "(its subscription's look-back).")
    keep_bars: int = Field(default=600, ge=10, description="Closed candles kept per series for the rules (at "
                           "least: more when a rule's look-back needs more).")
    intrabar: bool = Field(default=True, description="Read in-progress candles for rules whose frequency allows it.")
    clock: Literal["wall", "exchange"] = Field(
        default="wall", description="What snooze_until is compared with: wall time (live), or exchange time (a "
        "deterministic backtest / replay; `sentinel backtest` sets it).")
    cross_series_wait_ms: int = Field(
        default=2_000, ge=0, description="Live (clock wall): how long a closed bar of a rule reading another series "
        "(or tickers) waits for that series' bar of the same close (a ticker past the close) before it is evaluated "
        "with what is there. With clock exchange (a backtest) bars wait until that data arrives or the engine stops.")
    block_ms: int = Field(default=200, ge=1)
    offsets_every_ms: int = Field(
        default=1_000, ge=0, description="A partition's read that fires nothing saves its offsets at most this "
        "often (with the next commit that has alerts, or when the partition goes quiet, if sooner), not a Redis "
        "round trip per read; a crash re-reads at most this much, and the alert ids keep that exact. 0: every read.")
    state_every_ms: int = Field(
        default=2_000, ge=0, description="How often a partition's worker writes the rule states (the API's "
        "/alerts/status rows) that changed since it last wrote them, with its next commit (or when the partition "
        "goes quiet); a fire writes its own row at once. 0: with every commit.")
    batch: int = Field(default=500, ge=1)
    alerts_maxlen: int = Field(default=100_000, ge=100, description="Unused since alerts are written per partition "
                               "(streams.part_alerts, retention alert_history_maxlen); kept so settings files that "
                               "set it still load.")
    alert_history_maxlen: int = Field(default=1_000_000, ge=100, description="Retention of the alerts (entries), "
                                      "shared by the partitions' alerts streams (each keeps its share, at least 100)"
                                      ": what the notifier reads and the API's history.")
    claim_idle_ms: ClaimIdleMs = Field(default=5_000, description="Entries pending this long at another (dead) "
                                       "engine replica are claimed (a restarted replica re-reads its own at once).")
    fired_ttl_s: int = Field(default=30 * 86_400, ge=60, description="How long alert ids are remembered (replay).")
