"""Operands of the rule language: numbers, candle and ticker fields, indicators (their parameters), durations, and
the order-book and futures operands (``FEEDS``, ``BOOK_FIELDS``, ``DERIVS_FIELDS``: docs/rules.md defines them)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    model_validator,
)

from shared.timeframes import SUPPORTED

CANDLE_FIELDS = ("open", "high", "low", "close", "price", "volume", "buy_volume", "sell_volume", "quote_volume",
                 "delta", "trades", "vwap")
TICKER_FIELDS = ("bid", "ask", "mid", "spread", "spread_bps", "last")
#: fields of the pair's latest order-book snapshot (``streams.part_books``)
BOOK_FIELDS = ("microprice", "book_mid", "book_spread", "book_spread_bps")
#: fields of the contract's latest funding / open-interest reading (``streams.part_derivs``)
FUNDING_FIELDS = ("funding_rate", "basis_bps", "mark_price", "index_price")
DERIVS_FIELDS = (*FUNDING_FIELDS, "open_interest")
FieldName = Literal["open", "high", "low", "close", "price", "volume", "buy_volume", "sell_volume", "quote_volume",
                    "delta", "trades", "vwap", "bid", "ask", "mid", "spread", "spread_bps", "last",
                    "microprice", "book_mid", "book_spread", "book_spread_bps",
                    "funding_rate", "basis_bps", "mark_price", "index_price", "open_interest"]
Source = Literal["open", "high", "low", "close", "hl2", "hlc3", "ohlc4", "volume"]
Timeframe = Literal[SUPPORTED]  # type: ignore[valid-type]

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


class StrictModel(BaseModel):
    """Frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

class MappingOperand(StrictModel):
    """An operand written ``{key: value}`` (its short parameter) or ``{key: {param: value, ...}}``."""

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

    def spec(self) -> tuple[Any, ...]:
        """Hashable identity: equal specs share one incremental indicator per series."""
        return (self.key, *sorted(self.model_dump().items()))

    def label(self) -> str:
        params = ",".join(str(v) for k, v in self.model_dump().items() if k not in ("source", "output") or
                          v not in ("close", "line", "middle"))
        return f"{self.key}({params})"


class IndicatorSpec(MappingOperand):
    """An indicator of the rule's candles, written ``{key: period}`` or ``{key: {param: value, ...}}``."""


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
    period: int = Field(default=14, ge=2, le=10_000)  # (one change has no average gain and loss to smooth)
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


INDICATORS: dict[str, type[IndicatorSpec]] = {
    c.key: c for c in (SMA, EMA, RSI, MACD, BBands, ATR, VWAP, VolumeSMA, CVD)}


# ---- order-book and futures operands (evaluated on each book / derivatives update: docs/rules.md) ------------------

Bps = Annotated[Decimal, Field(gt=0, lt=10_000)]


def _window_ms(value: Any) -> int:
    ms = parse_duration_ms(value)
    if ms <= 0:
        raise ValueError("a window must be longer than 0")
    return ms


def duration_text(ms: int) -> str:
    """Milliseconds in the largest unit that divides them (``300000`` -> ``"5m"``): what ``parse_duration_ms`` reads
    back."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _DURATION_MS[unit] == 0:
            return f"{ms // _DURATION_MS[unit]}{unit}"
    return f"{ms}ms"


#: a time window (``5m``), held in milliseconds, written back as a duration
WindowMs = Annotated[int, BeforeValidator(_window_ms), PlainSerializer(duration_text, when_used="json")]


class FeedSpec(MappingOperand):
    """An operand read from the pair's order book or futures data, not from its candles. ``kind``: the stream
    update that changes it (the rule is evaluated on those updates)."""

    short_param: ClassVar[str] = "bps"
    kind: ClassVar[str] = "book"

    def label(self) -> str:
        return f"{self.key}({','.join(str(v) for v in self.model_dump(mode='json').values())})"


class DepthBid(FeedSpec):
    """Bid size within ``bps`` of the mid: base units, or quote (sum of price x size)."""

    key: ClassVar[str] = "depth_bid"
    bps: Bps
    unit: Literal["base", "quote"] = "base"


class DepthAsk(FeedSpec):
    key: ClassVar[str] = "depth_ask"
    bps: Bps
    unit: Literal["base", "quote"] = "base"


class Imbalance(FeedSpec):
    """(bid depth - ask depth) / (bid depth + ask depth) within ``bps`` of the mid, base units, in [-1, 1]."""

    key: ClassVar[str] = "imbalance"
    bps: Bps


class WallRatioBid(FeedSpec):
    """Size of the largest bid level within ``bps`` / the median size of the bid levels there."""

    key: ClassVar[str] = "wall_ratio_bid"
    bps: Bps


class WallRatioAsk(FeedSpec):
    key: ClassVar[str] = "wall_ratio_ask"
    bps: Bps


class WallEventSpec(FeedSpec):
    """Summed size (before the event) of the walls that appeared / were pulled / were eaten on ``side`` since the
    previous book snapshot; 0 when none."""

    short_param: ClassVar[str] = "side"
    event: ClassVar[str] = ""
    side: Literal["bid", "ask", "any"] = "any"


class WallAppeared(WallEventSpec):
    key: ClassVar[str] = "wall_appeared"
    event: ClassVar[str] = "appeared"


class WallPulled(WallEventSpec):
    key: ClassVar[str] = "wall_pulled"
    event: ClassVar[str] = "pulled"


class WallEaten(WallEventSpec):
    key: ClassVar[str] = "wall_eaten"
    event: ClassVar[str] = "eaten"


class OpenInterestChange(FeedSpec):
    """Open interest now minus the last reading at or before ``window`` ago (``percent``: relative to it, x100)."""

    key: ClassVar[str] = "open_interest_change"
    short_param: ClassVar[str] = "window"
    kind: ClassVar[str] = "open_interest"
    window: WindowMs
    unit: Literal["amount", "percent"] = "amount"


class Liquidations(FeedSpec):
    """Liquidations of ``side`` (the liquidation order's: sell = longs liquidated) with a time in the last
    ``window``: their summed amount (``volume``), amount x price (``quote``) or number (``count``)."""

    key: ClassVar[str] = "liquidations"
    short_param: ClassVar[str] = "window"
    kind: ClassVar[str] = "liquidations"
    window: WindowMs
    side: Literal["buy", "sell", "any"] = "any"
    measure: Literal["volume", "quote", "count"] = "volume"


FEEDS: dict[str, type[FeedSpec]] = {
    c.key: c for c in (DepthBid, DepthAsk, Imbalance, WallRatioBid, WallRatioAsk, WallAppeared, WallPulled, WallEaten,
                       OpenInterestChange, Liquidations)}


def feed_kind(operand: Any) -> str | None:
    """The stream update that changes ``operand`` (``book``, ``funding``, ``open_interest``, ``liquidations``);
    None for an operand of candles and tickers."""
    if isinstance(operand, FeedSpec):
        return operand.kind
    if isinstance(operand, str):
        if operand in BOOK_FIELDS:
            return "book"
        if operand in FUNDING_FIELDS:
            return "funding"
        if operand == "open_interest":
            return "open_interest"
    return None


class UnknownIndicator(StrictModel):
    """A one-key mapping whose key is no indicator: refused, naming the key and the indicators there are."""

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        key = next(iter(data)) if isinstance(data, dict) and data else data
        raise ValueError(f"unknown indicator {key!r}; the indicators are {', '.join(INDICATORS)}, the book and "
                         f"futures operands {', '.join(FEEDS)}")


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
        if isinstance(key, str) and (key in INDICATORS or key in FEEDS):
            return key
        return "_unknown"
    if isinstance(value, MappingOperand):
        return str(value.key)
    return None


_OPERAND_ERROR = ("expected a number, a field name (" + ", ".join(CANDLE_FIELDS + TICKER_FIELDS + BOOK_FIELDS
                                                                 + DERIVS_FIELDS)
                  + ") or a one-key indicator or book/futures mapping (" + ", ".join((*INDICATORS, *FEEDS)) + ")")
if TYPE_CHECKING:  # what an operand is, for the type checker; pydantic reads the tagged union below
    Operand = Decimal | FieldName | IndicatorSpec | FeedSpec
else:
    Operand = Annotated[
        Union[(Annotated[Decimal, Tag("_const")], Annotated[FieldName, Tag("_field")],
               *(Annotated[cls, Tag(key)] for key, cls in INDICATORS.items()),
               *(Annotated[fcls, Tag(key)] for key, fcls in FEEDS.items()),
               Annotated[UnknownIndicator, Tag("_unknown")])],
        Discriminator(_operand_tag, custom_error_type="operand", custom_error_message=_OPERAND_ERROR),
    ]


_QUOTED = re.compile(r"^[^/\s]+/[^/\s:]+(:[^/\s:]+)?$")  # BASE/QUOTE, or BASE/QUOTE:SETTLE (derivatives)
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BTC", "ETH", "BNB")


def is_pattern(symbol: str) -> bool:
    """A glob (``*/USDT``) rather than one symbol."""
    return any(c in symbol for c in "*?[")


def _quoted(symbol: str) -> str:
    if is_pattern(symbol) or _QUOTED.match(symbol):
        return symbol
    hint = next((f" ({symbol[:-len(q)]}/{q}?)" for q in _QUOTES if symbol.endswith(q) and len(symbol) > len(q)), "")
    raise ValueError(f"{symbol!r} has no quote currency{hint}: symbols are written BASE/QUOTE, e.g. BTC/USDT, or a "
                     "pattern such as */USDT")


#: A symbol of a rule: ``BASE/QUOTE`` as exchanges list them (ccxt's unified form), or a glob pattern.
Symbol = Annotated[str, AfterValidator(_quoted)]


def operand_label(operand: Any) -> str:
    return operand.label() if isinstance(operand, MappingOperand) else str(operand)
