"""A rule and a rule set of the rule language."""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared.rules.conditions import Condition
from shared.rules.operands import StrictModel, Symbol, Timeframe, is_pattern, parse_duration_ms
from shared.timeframes import timeframe_ms

Frequency = Literal["once", "once_per_bar", "once_per_bar_close", "every_time"]


class Rule(StrictModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    exchange: str | None = None
    symbols: list[Symbol] = Field(min_length=1)
    timeframe: Timeframe = "1m"
    condition: Condition
    frequency: Frequency = "once_per_bar_close"
    cooldown_ms: int = Field(default=0, alias="cooldown", ge=0)
    message: str = "{rule}: {symbol} {timeframe} {condition} (close {close})"
    severity: Literal["info", "warning", "critical"] = "info"
    labels: dict[str, str] = Field(default_factory=dict)
    channels: list[str] = Field(default_factory=list)
    enabled: bool = True
    expires_at: datetime | None = None
    snooze_until: datetime | None = None
    for_ms: int = Field(default=0, alias="for", ge=0)
    notify_on_resolve: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("symbols", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cooldown_ms", "for_ms", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration_ms(value)

    @field_validator("expires_at", "snooze_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-01T00:00:00Z)")
        return value

    @field_validator("message")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        unknown = sorted(set(re.findall(r"{(\w+)", value)) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholder(s) {', '.join(unknown)}; known: {', '.join(PLACEHOLDERS)}")
        try:
            value.format(**{k: "" for k in PLACEHOLDERS})
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"not a valid template: {exc}") from exc
        return value

    @property
    def timeframe_ms(self) -> int:
        return timeframe_ms(self.timeframe)

    @property
    def patterns(self) -> bool:
        return any(is_pattern(s) for s in self.symbols)

    def matches(self, exchange: str, symbol: str) -> bool:
        if self.exchange is not None and exchange != self.exchange:
            return False
        return any(fnmatch.fnmatchcase(symbol, s) if is_pattern(s) else symbol == s for s in self.symbols)

    def expires_ms(self) -> int | None:
        return int(self.expires_at.timestamp() * 1000) if self.expires_at else None

    def snooze_ms(self) -> int | None:
        return int(self.snooze_until.timestamp() * 1000) if self.snooze_until else None


PLACEHOLDERS = ("rule", "exchange", "symbol", "timeframe", "price", "value", "open", "high", "low", "close", "volume",
                "buy_volume", "sell_volume", "delta", "cvd", "time", "ts", "condition", "severity", "state")


class RuleSet(StrictModel):
    rules: list[Rule] = Field(default_factory=list)
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:  # (a file's duplicates are reported at their own lines by the loader)
                raise PydanticCustomError("duplicate_name", "rule name {name!r} is used twice; names must be unique",
                                          {"name": rule.name})
            seen.add(rule.name)
        return self

    @property
    def enabled(self) -> list[Rule]:
        return [r for r in self.rules if r.enabled]

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}
