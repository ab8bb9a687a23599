"""Settings of the notifier (section ``notifier`` of the settings file).

Example::

    notifier:
      jsonl_path: .sentinel/alerts.jsonl
      channels:                      # name -> Apprise URL; ${VAR} is taken from the environment at start-up
        ops_hook: json://hooks.example.com/sentinel
        tv_style:                    # or a mapping: url, a body template (TradingView-style), alone
          url: json://hooks.example.com/tv
          body: '{"ticker": "{{ticker}}", "price": {{close}}, "text": "{{message}}"}'
        pager: {url: "json://pager.example.com/in", alone: true}   # each alert in its own message
        telegram: tgram://${TELEGRAM_TOKEN}/${TELEGRAM_CHAT}
        email: mailtos://${SMTP_USER}:${SMTP_PASS}@smtp.example.com?to=ops@example.com
      routes:                        # used when a rule names no channels; every matching route adds its channels
        - severity: [critical]
          channels: [telegram, email]
        - labels: {team: desk}
          channels: [ops_hook]
      default_channels: [console, jsonl]   # when no route matches
      always_channels: [jsonl]             # every alert, whatever its route (the audit log)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.config import ServiceSettings


class RouteSettings(BaseModel):
    """A default route: alerts whose severity is listed (any when empty) and whose labels all match go to channels."""

    model_config = ConfigDict(extra="forbid")
    channels: list[str]
    severity: list[Literal["info", "warning", "critical"]] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class ChannelSettings(BaseModel):
    """A channel with options; a plain URL string is the same with none."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="Apprise URL (json:// for a webhook); ${VAR} expanded from the environment.")
    body: str | None = Field(default=None, description="Body template with {{placeholders}} (services/notifier/"
                             "templates.py); JSON once filled in is sent as application/json. Each alert goes alone.")
    alone: bool = Field(default=False, description="Send each alert in its own message instead of grouping a burst.")


class Settings(ServiceSettings):
    section = "notifier"

    console: bool = Field(default=True, description="Print each alert as one line on stdout (channel 'console').")
    jsonl_path: Path | None = Field(default=Path(".sentinel/alerts.jsonl"),
                                    description="Append each alert as one JSON line (channel 'jsonl'); null = off.")
    channels: dict[str, str | ChannelSettings] = Field(
        default_factory=dict, description="Channel name -> Apprise URL (${ENV} expanded), or {url, body, alone}.")
    routes: list[RouteSettings] = Field(default_factory=list)
    default_channels: list[str] = Field(default_factory=lambda: ["console", "jsonl"])
    always_channels: list[str] = Field(default_factory=lambda: ["jsonl"],
                                       description="Every alert also goes here, whatever its route (audit log).")

    group_window_s: float = Field(default=0.0, ge=0, description="Wait this long to batch a burst into one message.")
    max_group: int = Field(default=50, ge=1, description="At most this many alerts in one grouped message.")
    max_attempts: int = Field(default=5, ge=1, description="Tries per (alert, target) before the dead-letter stream.")
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=30.0, gt=0)
    retry_after_cap_s: float = Field(default=120.0, gt=0, description="Longest Retry-After honoured.")
    timeout_s: float = Field(default=10.0, gt=0, description="Per-request timeout of a remote channel.")
    rate_per_s: float = Field(default=1.0, gt=0, description="Token bucket refill per remote target (messages/s).")
    burst: int = Field(default=5, ge=1, description="Token bucket size per remote target.")
    rate_overrides: dict[str, float] = Field(default_factory=dict, description="Channel name -> messages/s.")
    scheme_rates: dict[str, float] = Field(
        default_factory=lambda: {"tgram": 30.0, "discord": 5.0, "slack": 1.0},
        description="URL scheme -> messages/s shared by every channel of that service (Telegram: ~30/s per bot).")
    sent_ttl_s: int = Field(default=7 * 86400, ge=60, description="How long delivery records are kept.")

    max_inflight: int = Field(default=10_000, ge=1, description="Unacked alerts held at most; reading waits beyond.")
    block_ms: int = Field(default=500, ge=1)
    count: int = Field(default=500, ge=1)
    claim_idle_ms: int = Field(default=5_000, ge=1,
                               description="Claim alerts another notifier left unacked this long (ms): a killed "
                               "replica's alerts move within about this time. A live replica re-claims what it is "
                               "still sending every third of it, so a slow target is never sent twice.")
