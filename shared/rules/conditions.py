"""Conditions of the rule language: comparisons, channels, moves, volume spikes, and ``all``/``any`` of them."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from shared.rules.operands import (
    Operand,
    StrictModel,
    Symbol,
    Timeframe,
    feed_kind,
    operand_label,
    parse_duration_ms,
)

COMPARE_OPS = ("greater_than", "above", "less_than", "below", "crossing", "crosses", "crosses_up", "crossing_up",
               "crosses_down", "crossing_down")
CHANNEL_OPS = ("entering_channel", "exiting_channel", "inside_channel", "outside_channel")
MOVE_OPS = ("moving_up", "moving_down", "moving_up_pct", "moving_down_pct")
#: Synonyms, normalised on load so the engine knows one name per condition.
OP_ALIASES = {"above": "greater_than", "below": "less_than", "crosses": "crossing", "crossing_up": "crosses_up",
              "crossing_down": "crosses_down"}


class Where(StrictModel):
    """Where a condition reads its data; unset = the rule's own symbol and timeframe."""

    timeframe: Timeframe | None = None
    symbol: Symbol | None = None

    @model_validator(mode="after")
    def _feeds_own_pair(self) -> Where:
        if (self.symbol is not None or self.timeframe is not None) and any(
                feed_kind(getattr(self, name, None)) for name in ("left", "right", "lower", "upper")):
            raise ValueError("book and futures operands read the rule's own pair: a condition using them takes no "
                             "symbol or timeframe")
        return self


class Compare(Where):
    left: Operand = "close"
    op: Literal[COMPARE_OPS]  # type: ignore[valid-type]
    right: Operand

    @field_validator("op")
    @classmethod
    def _canonical(cls, op: str) -> str:
        return OP_ALIASES.get(op, op)


class Channel(Where):
    left: Operand = "close"
    op: Literal[CHANNEL_OPS]  # type: ignore[valid-type]
    lower: Operand
    upper: Operand


class Moving(Where):
    left: Operand = "close"
    op: Literal[MOVE_OPS]  # type: ignore[valid-type]
    amount: Decimal | None = Field(default=None, gt=0)
    percent: Decimal | None = Field(default=None, gt=0)
    bars: int = Field(default=1, ge=1, le=10_000)
    #: a time window instead of ``bars``: compare with the last bar that started at least this long before this one
    window_ms: int | None = Field(default=None, alias="window", gt=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("window_ms", mode="before")
    @classmethod
    def _window(cls, value: Any) -> int | None:
        return None if value is None else parse_duration_ms(value)

    @model_validator(mode="after")
    def _amount_or_percent(self) -> Moving:
        if feed_kind(self.left):
            raise ValueError(f"{self.op} reads candles: compare book and futures operands with numbers or each other "
                             "(open_interest_change and liquidations take a window)")
        if self.op.endswith("_pct"):
            if self.percent is None or self.amount is not None:
                raise ValueError(f"{self.op} takes percent (and no amount)")
        elif self.amount is None or self.percent is not None:
            raise ValueError(f"{self.op} takes amount (and no percent; use {self.op}_pct for a percentage)")
        return self


class VolumeSpike(Where):
    """Volume of the candle greater than ``factor`` × the SMA of the ``period`` candles before it."""

    op: Literal["volume_spike"]
    factor: Decimal = Field(gt=0)
    period: int = Field(default=20, ge=1, le=10_000)


class All(StrictModel):
    all: list[Condition] = Field(min_length=1)


class AnyOf(StrictModel):
    any: list[Condition] = Field(min_length=1)


def _condition_tag(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return {Compare: "_cmp", Channel: "_channel", Moving: "_move", VolumeSpike: "_spike", All: "_all",
                AnyOf: "_any"}.get(type(value))
    if not isinstance(value, dict):
        return None
    if "all" in value:
        return "_all"
    if "any" in value:
        return "_any"
    op = value.get("op")
    if op in COMPARE_OPS:
        return "_cmp"
    if op in CHANNEL_OPS:
        return "_channel"
    if op in MOVE_OPS:
        return "_move"
    if op == "volume_spike":
        return "_spike"
    return None


Condition = Annotated[
    Union[
        Annotated[Compare, Tag("_cmp")],
        Annotated[Channel, Tag("_channel")],
        Annotated[Moving, Tag("_move")],
        Annotated[VolumeSpike, Tag("_spike")],
        Annotated[All, Tag("_all")],
        Annotated[AnyOf, Tag("_any")],
    ],
    Discriminator(_condition_tag, custom_error_type="condition",
                  custom_error_message="expected a mapping with `op` (one of "
                  + ", ".join((*COMPARE_OPS, *CHANNEL_OPS, *MOVE_OPS, "volume_spike"))
                  + "), or `all: [...]` / `any: [...]`"),
]
All.model_rebuild()
AnyOf.model_rebuild()


def describe(cond: Any) -> str:
    """Human-readable condition, for messages and the API."""
    if isinstance(cond, All):
        return "(" + " and ".join(describe(c) for c in cond.all) + ")"
    if isinstance(cond, AnyOf):
        return "(" + " or ".join(describe(c) for c in cond.any) + ")"
    where = "".join(f" [{p}]" for p in (cond.symbol, cond.timeframe) if p)
    if isinstance(cond, Compare):
        text = f"{operand_label(cond.left)} {cond.op} {operand_label(cond.right)}"
    elif isinstance(cond, Channel):
        text = f"{operand_label(cond.left)} {cond.op} [{operand_label(cond.lower)}, {operand_label(cond.upper)}]"
    elif isinstance(cond, Moving):
        by = f"{cond.percent}%" if cond.op.endswith("_pct") else str(cond.amount)
        within = f"{cond.window_ms // 1000}s" if cond.window_ms is not None else f"{cond.bars} bars"
        text = f"{operand_label(cond.left)} {cond.op.removesuffix('_pct')} {by} within {within}"
    else:
        text = f"volume > {cond.factor} x volume_sma({cond.period})"
    return text + where
