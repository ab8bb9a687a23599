"""The alert rule language: pydantic models loaded from YAML, refused whole with every problem located.

A rules file::

    rules:
      - name: btc_breakout
        exchange: sim                     # optional: any exchange
        symbols: ["BTC/USDT"]             # a list, or a glob pattern such as "*/USDT"
        timeframe: 1m
        condition:                        # left OP right; operands are numbers, candle fields or indicators
          left: close
          op: crosses_up
          right: {ema: 21}
        frequency: once_per_bar_close     # once | once_per_bar | once_per_bar_close | every_time
        cooldown: 5m
        message: "{symbol} {close} crossed EMA21 {value}"
        severity: warning
        labels: {team: desk}
        channels: [console]

Operands: a number; a field name (``open high low close price volume buy_volume sell_volume quote_volume delta
trades vwap`` of the candle, ``bid ask mid spread spread_bps last`` of the latest ticker); or a one-key mapping naming
an indicator with its parameters — ``{sma: 20}``, ``{ema: {period: 9, source: high}}``, ``{rsi: 14}``,
``{macd: {fast: 12, slow: 26, signal: 9, output: histogram}}``, ``{bbands: {period: 20, k: 2, output: upper}}``,
``{atr: 14}``, ``{vwap: {anchor: 1d}}``, ``{volume_sma: 20}``, ``{cvd: {bars: 20}}`` / ``{cvd: {anchor: 1d}}``.

Conditions: ``left`` with ``op`` one of ``greater_than``/``above``, ``less_than``/``below``, ``crossing``,
``crosses_up``, ``crosses_down`` and ``right``; ``op`` ``entering_channel``/``exiting_channel``/``inside_channel``/
``outside_channel`` with ``lower`` and ``upper``; ``op`` ``moving_up``/``moving_down`` (by ``amount``) or
``moving_up_pct``/``moving_down_pct`` (by ``percent``) within ``bars`` (or a time ``window`` such as 5m);
``op: volume_spike`` with ``factor`` and ``period``; and ``all: [...]`` / ``any: [...]`` of conditions. A condition
may name its own ``timeframe`` and ``symbol`` (multi-timeframe / multi-symbol combinations): it then reads that
series' latest candle closed by the time of the evaluation (never a later one).
"""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import ConfigError
from shared.timeframes import SUPPORTED, timeframe_ms
from shared.yamlfile import describe_errors, load_yaml, load_yaml_file

CANDLE_FIELDS = ("open", "high", "low", "close", "price", "volume", "buy_volume", "sell_volume", "quote_volume",
                 "delta", "trades", "vwap")
TICKER_FIELDS = ("bid", "ask", "mid", "spread", "spread_bps", "last")
FieldName = Literal["open", "high", "low", "close", "price", "volume", "buy_volume", "sell_volume", "quote_volume",
                    "delta", "trades", "vwap", "bid", "ask", "mid", "spread", "spread_bps", "last"]
Source = Literal["open", "high", "low", "close", "hl2", "hlc3", "ohlc4", "volume"]
Timeframe = Literal[SUPPORTED]  # type: ignore[valid-type]

# Parts of pydantic's error paths that are our union tags, not keys of the file.
_TAGS = frozenset({"_const", "_field", "_cmp", "_channel", "_move", "_spike", "_all", "_any"})

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(value: Any) -> int:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"2d"`` or a number of seconds → milliseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return int(value * 1000)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError("expected a duration such as 30s, 5m, 1h, 1d (or a number of seconds)")
    return int(match.group(1)) * _DURATION_MS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- operands -------------------------------------------------------------------------------------------------------


class IndicatorSpec(_Strict):
    """An indicator operand, written ``{key: period}`` or ``{key: {param: value, ...}}``."""

    key: ClassVar[str] = ""
    short_param: ClassVar[str] = "period"

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, data: Any) -> Any:
        if isinstance(data, dict) and len(data) == 1 and cls.key in data:
            inner = data[cls.key]
            if isinstance(inner, dict):
                return inner
            if inner is None:
                return {}
            return {cls.short_param: inner}
        return data

    def spec(self) -> tuple:
        """Hashable identity: equal specs share one incremental indicator per series."""
        return (self.key, *sorted(self.model_dump().items()))

    def label(self) -> str:
        params = ",".join(str(v) for k, v in self.model_dump().items() if k not in ("source", "output") or
                          v not in ("close", "line", "middle"))
        return f"{self.key}({params})"


class SMA(IndicatorSpec):
    key: ClassVar[str] = "sma"
    period: int = Field(ge=1, le=10_000)
    source: Source = "close"


class EMA(IndicatorSpec):
    key: ClassVar[str] = "ema"
    period: int = Field(ge=1, le=10_000)
    source: Source = "close"


class RSI(IndicatorSpec):
    key: ClassVar[str] = "rsi"
    period: int = Field(default=14, ge=1, le=10_000)
    source: Source = "close"


class MACD(IndicatorSpec):
    key: ClassVar[str] = "macd"
    short_param: ClassVar[str] = "output"
    fast: int = Field(default=12, ge=1, le=10_000)
    slow: int = Field(default=26, ge=1, le=10_000)
    signal: int = Field(default=9, ge=1, le=10_000)
    output: Literal["line", "signal", "histogram"] = "line"
    source: Source = "close"

    @model_validator(mode="after")
    def _fast_below_slow(self) -> MACD:
        if self.fast >= self.slow:
            raise ValueError("fast must be smaller than slow")
        return self


class BBands(IndicatorSpec):
    key: ClassVar[str] = "bbands"
    period: int = Field(default=20, ge=2, le=10_000)
    k: Decimal = Field(default=Decimal(2), gt=0)
    output: Literal["upper", "middle", "lower"] = "middle"
    source: Source = "close"


class ATR(IndicatorSpec):
    key: ClassVar[str] = "atr"
    period: int = Field(default=14, ge=1, le=10_000)


class VWAP(IndicatorSpec):
    """Volume-weighted average price since the last ``anchor`` boundary (UTC), from exact quote volumes."""

    key: ClassVar[str] = "vwap"
    short_param: ClassVar[str] = "anchor"
    anchor: Timeframe = "1d"


class VolumeSMA(IndicatorSpec):
    key: ClassVar[str] = "volume_sma"
    period: int = Field(ge=1, le=10_000)


class CVD(IndicatorSpec):
    """Cumulative volume delta: over the last ``bars`` candles, or since the last ``anchor`` boundary (UTC)."""

    key: ClassVar[str] = "cvd"
    short_param: ClassVar[str] = "bars"
    bars: int | None = Field(default=None, ge=1, le=100_000)
    anchor: Timeframe | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CVD:
        if (self.bars is None) == (self.anchor is None):
            raise ValueError("give exactly one of bars (rolling) or anchor (session, e.g. 1d)")
        return self


INDICATORS: dict[str, type[IndicatorSpec]] = {c.key: c for c in (SMA, EMA, RSI, MACD, BBands, ATR, VWAP, VolumeSMA, CVD)}


def _operand_tag(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return "_const"
    if isinstance(value, str):
        try:
            Decimal(value)
            return "_const"
        except ArithmeticError:
            return "_field"
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        if key in INDICATORS:
            return key
    if isinstance(value, IndicatorSpec):
        return value.key
    return None


Operand = Annotated[
    Union[
        Annotated[Decimal, Tag("_const")],
        Annotated[FieldName, Tag("_field")],
        *(Annotated[cls, Tag(key)] for key, cls in INDICATORS.items()),
    ],
    Discriminator(_operand_tag, custom_error_type="operand",
                  custom_error_message="expected a number, a field name (" + ", ".join(CANDLE_FIELDS + TICKER_FIELDS)
                  + ") or a one-key indicator mapping (" + ", ".join(INDICATORS) + ")"),
]


def operand_label(operand: Any) -> str:
    return operand.label() if isinstance(operand, IndicatorSpec) else str(operand)


# ---- conditions -----------------------------------------------------------------------------------------------------

COMPARE_OPS = ("greater_than", "above", "less_than", "below", "crossing", "crosses", "crosses_up", "crossing_up",
               "crosses_down", "crossing_down")
CHANNEL_OPS = ("entering_channel", "exiting_channel", "inside_channel", "outside_channel")
MOVE_OPS = ("moving_up", "moving_down", "moving_up_pct", "moving_down_pct")
#: Synonyms, normalised on load so the engine knows one name per condition.
OP_ALIASES = {"above": "greater_than", "below": "less_than", "crosses": "crossing", "crossing_up": "crosses_up",
              "crossing_down": "crosses_down"}


class _Where(_Strict):
    """Where a condition reads its data; unset = the rule's own symbol and timeframe."""

    timeframe: Timeframe | None = None
    symbol: str | None = None


class Compare(_Where):
    left: Operand = "close"
    op: Literal[COMPARE_OPS]  # type: ignore[valid-type]
    right: Operand

    @field_validator("op")
    @classmethod
    def _canonical(cls, op: str) -> str:
        return OP_ALIASES.get(op, op)


class Channel(_Where):
    left: Operand = "close"
    op: Literal[CHANNEL_OPS]  # type: ignore[valid-type]
    lower: Operand
    upper: Operand


class Moving(_Where):
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
        if self.op.endswith("_pct"):
            if self.percent is None or self.amount is not None:
                raise ValueError(f"{self.op} takes percent (and no amount)")
        elif self.amount is None or self.percent is not None:
            raise ValueError(f"{self.op} takes amount (and no percent; use {self.op}_pct for a percentage)")
        return self


class VolumeSpike(_Where):
    """Volume of the candle greater than ``factor`` × the SMA of the ``period`` candles before it."""

    op: Literal["volume_spike"]
    factor: Decimal = Field(gt=0)
    period: int = Field(default=20, ge=1, le=10_000)


class All(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Strict):
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


# ---- rules ----------------------------------------------------------------------------------------------------------

Frequency = Literal["once", "once_per_bar", "once_per_bar_close", "every_time"]


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    exchange: str | None = None
    symbols: list[str] = Field(min_length=1)
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
        return any(_is_pattern(s) for s in self.symbols)

    def matches(self, exchange: str, symbol: str) -> bool:
        if self.exchange is not None and exchange != self.exchange:
            return False
        return any(fnmatch.fnmatchcase(symbol, s) if _is_pattern(s) else symbol == s for s in self.symbols)

    def expires_ms(self) -> int | None:
        return int(self.expires_at.timestamp() * 1000) if self.expires_at else None

    def snooze_ms(self) -> int | None:
        return int(self.snooze_until.timestamp() * 1000) if self.snooze_until else None


PLACEHOLDERS = ("rule", "exchange", "symbol", "timeframe", "price", "value", "open", "high", "low", "close", "volume",
                "buy_volume", "sell_volume", "delta", "cvd", "time", "ts", "condition", "severity", "state")


def _is_pattern(symbol: str) -> bool:
    return any(c in symbol for c in "*?[")


class RuleSet(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice; names must be unique")
            seen.add(rule.name)
        return self

    @property
    def enabled(self) -> list[Rule]:
        return [r for r in self.rules if r.enabled]

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


# ---- loading --------------------------------------------------------------------------------------------------------


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate a rules document; ConfigError listing every problem as ``source:line: path — expected``."""
    data, lines = load_yaml(text, source)
    return _validate(data, lines, source)


def load_rules_file(path: str | Path) -> RuleSet:
    """Read, parse and validate a rules file (see ``parse_rules``)."""
    data, lines = load_yaml_file(path)
    return _validate(data, lines, str(path))


def parse_rule_text(text: str, source: str) -> Rule:
    """One rule (a mapping, YAML or JSON), e.g. an entry of the API's ``streams.RULES`` hash."""
    data, lines = load_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: (top level) — expected one rule as a mapping")
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source, lines, skip_loc_parts=_TAGS)) from exc


def check_rules_file(path: str | Path) -> list[str]:
    """Every problem of a rules file, one line each; an empty list means the file is valid."""
    try:
        load_rules_file(path)
    except ConfigError as exc:
        return exc.problems
    return []


def _validate(data: Any, lines: dict, source: str) -> RuleSet:
    if data is None:
        data = {"rules": []}
    if isinstance(data, list):  # a bare list of rules is accepted too
        data = {"rules": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: (top level) — expected a mapping with a `rules:` list")
    try:
        ruleset = RuleSet.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source, lines, skip_loc_parts=_TAGS)) from exc
    return ruleset


def dump_rule(rule: Rule) -> dict[str, Any]:
    """A rule as plain data, in the file's own spelling (for the RULES hash and the API)."""
    data = rule.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for key in ("cooldown", "for"):
        if key in data:
            data[key] = f"{data[key]}ms"
    return data


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
