"""Message types that travel on the bus, and their msgpack encoding.

Every message is one msgpack map in the stream entry's single field ``d`` (see ``shared.bus``). Each map carries
``v`` (schema version) and ``k`` (kind). Prices and amounts travel as decimal strings and are ``Decimal`` in
Python, so nothing that is summed or compared with a threshold drifts.

Here: the trades stream's three kinds as Python values (``TradeBatch`` of ``Trade``, ``GapMarker``, ``Watermark``:
their wire format, encoders and the one decoder are in ``shared.feed_codec``), and tickers, candles and alerts as
pydantic models (``Message``: ``encode``, ``decode``). Order books are in ``shared.book_messages``; funding, open
interest and liquidations in ``shared.derivs_messages``.

Idempotency: a trade is identified by (exchange, symbol, id); an alert by its ``id``; a candle by
(exchange, symbol, timeframe, ts, revision).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Self

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import streams
from shared.errors import DecodeError

if TYPE_CHECKING:
    from shared.feed_codec import TextColumns, TradeColumns

SCHEMA_VERSION = 1

_packer = msgpack.Packer(use_bin_type=True)
_packb = _packer.pack
_unpackb = msgpack.unpackb


def pack(obj: Any) -> bytes:
    """msgpack-encode a plain structure (dicts, lists, str, int, bool, None)."""
    return _packb(obj)


def pack_array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items: followed by the items' own bytes, the bytes ``pack`` gives
    the list of them."""
    return _packer.pack_array_header(n)


def unpack_tuples(raw: bytes) -> Any:
    """``unpack`` with arrays as tuples (fewer objects for the garbage collector to track: a book snapshot's ~100
    levels unpack ~3x faster); DecodeError if the bytes are not msgpack."""
    try:
        return _unpackb(raw, raw=False, strict_map_key=False, use_list=False)
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise DecodeError(f"not msgpack: {exc}") from exc


def unpack(raw: bytes) -> Any:
    """msgpack-decode; DecodeError if the bytes are not msgpack."""
    try:
        return _unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"not msgpack: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------------
# Trades (hot path: plain tuples, no pydantic)


class Trade(NamedTuple):
    """One trade. ``id`` is the exchange's trade id (int where numeric); ``ts`` is the exchange time in ms."""

    id: int | str | None
    ts: int
    price: Decimal
    amount: Decimal
    is_buy: bool  # taker side: True when the taker bought


class TradeText(NamedTuple):
    """A trade as a recording holds it: ``price`` and ``amount`` are their exact decimal text, checked (a positive
    finite decimal) but not parsed. A replay publishes them as they are (``encode_trades`` writes a str unchanged), so
    a price becomes a number once, where it is used: in its consumer's ``decode_feed``."""

    id: int | str | None
    ts: int
    price: str
    amount: str
    is_buy: bool


def decimal_text(text: str) -> str | None:
    """``text`` if it is a plain positive decimal (ASCII digits with at most one point, not all zeros:
    ``"61837.63000000"``, ``"0.02"``, ``"5"``), else None: anything else (a sign, an exponent, spaces, NaN) is for
    ``Decimal`` to judge."""
    if text.isascii() and text.replace(".", "", 1).isdigit() and text.strip("0."):
        return text
    return None


@dataclass(slots=True)
class TradeBatch:
    """Trades of one (exchange, symbol), in exchange order (decoded: a list of ``Trade``, or ``TradeColumns`` for a
    large entry; both iterate as ``(id, ts, price, amount, side)``; a publisher's batch of a replay holds
    ``TradeText``)."""

    exchange: str
    symbol: str
    trades: list[Trade] | TradeColumns | list[TradeText] | TextColumns


@dataclass(slots=True)
class GapMarker:
    """Trades between ``start`` and ``end`` (ms, inclusive) could not be recovered."""

    exchange: str
    symbol: str
    start: int
    end: int
    reason: str = ""


@dataclass(slots=True)
class Watermark:
    """Exchange time reached ``ts`` (ms) for (exchange, symbol); ``final`` when the source has ended."""

    exchange: str
    symbol: str
    ts: int
    final: bool = False


FeedMessage = TradeBatch | GapMarker | Watermark


def check_header(msg: Any, kinds: tuple[str, ...]) -> str:
    """The kind of an unpacked message (one of ``kinds``) after checking it is a map of this schema version;
    DecodeError saying what is wrong otherwise."""
    if not isinstance(msg, dict):
        raise DecodeError(f"expected a map, got {type(msg).__name__}")
    version = msg.get("v")
    if version != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {version!r} (this build reads {SCHEMA_VERSION})")
    kind = msg.get("k")
    if kind not in kinds:
        raise DecodeError(f"unexpected message kind {kind!r}; expected one of {', '.join(kinds)}")
    return str(kind)


def str_field(msg: dict[str, Any], key: str) -> str:
    """``msg[key]``, a non-empty string; DecodeError naming the field otherwise."""
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def int_field(msg: dict[str, Any], key: str) -> int:
    """``msg[key]``, an integer (not a bool); DecodeError naming the field otherwise."""
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"field {key!r} must be an integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Tickers, candles, alerts (low rate: pydantic models, exact decimals)


class Message(BaseModel):
    """Base of the pydantic-validated messages: decimals travel as strings."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    kind: str
    #: the ``kind`` of this class' messages (its field's default), set once when the class is made
    message_kind: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.message_kind = cls.model_fields["kind"].default

    def encode(self) -> bytes:
        data = self.model_dump(mode="json")
        data["v"] = SCHEMA_VERSION
        data["k"] = data.pop("kind")
        return _packb(data)

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        return cls.from_msg(unpack(raw))

    @classmethod
    def from_msg(cls, msg: Any) -> Self:
        """The message from its unpacked map (``decode`` without the msgpack step, for a reader that looked at
        ``k`` first); DecodeError naming what is wrong.

        A flat map of this kind and version (scalars only: no float) is validated as it is, ``v`` and ``k`` ignored
        as extra keys: the same pydantic validation, without copying the map (a candle decoded in ~half the time).
        Anything else, or a map that fails validation, takes the checked way below, which says why."""
        kind = cls.message_kind
        if (type(msg) is dict and msg.get("k") == kind and msg.get("v") == SCHEMA_VERSION and "kind" not in msg
                and set(map(type, msg.values())) <= _SCALARS):
            try:
                return cls.model_validate(msg)
            except ValidationError:
                pass  # (the reason, below)
        kind = check_header(msg, (kind,))
        data = {k: v for k, v in msg.items() if k not in ("v", "k")}
        where = _float_in(data)
        if where is not None:  # a float's value is not the decimal it prints as: never compared with a threshold
            raise DecodeError(f"invalid {kind}: field {where} is a float; prices and amounts must be exact decimal text "
                              "or integers")
        try:
            return cls.model_validate({**data, "kind": kind})
        except ValidationError as exc:
            # (without the input: an oversized value would make a log line of megabytes)
            raise DecodeError(f"invalid {kind}: {exc.errors(include_url=False, include_input=False)}") from exc


_SCALARS = frozenset((str, int, bool, type(None), bytes))


def _float_in(value: Any, path: str = "") -> str | None:
    """The path of the first float in a decoded message (None if there is none)."""
    if type(value) is dict and set(map(type, value.values())) <= _SCALARS:  # a flat message (a candle): one C pass
        return None
    if isinstance(value, float):
        return repr(path or "(value)")
    if isinstance(value, dict):
        for key, item in value.items():
            found = _float_in(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _float_in(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class Ticker(Message):
    """Best bid/ask and last price of a symbol at exchange time ``ts`` (ms)."""

    kind: Literal["ticker"] = "ticker"
    exchange: str
    symbol: str
    ts: int
    bid: Decimal | None = None
    ask: Decimal | None = None
    bid_size: Decimal | None = None
    ask_size: Decimal | None = None
    last: Decimal | None = None


class Candle(Message):
    """OHLCV of one bucket. ``ts`` is the bucket start (ms UTC).

    ``closed`` is False for an in-progress candle. A closed candle revised by a late trade is published again with
    ``revision`` + 1. ``incomplete`` marks a bucket that overlaps a gap in the trade feed. ``history`` marks a candle
    taken from the exchange's OHLCV history (seeding or backfill), not built from trades here: consumers warm up on it
    but do not alert on it. ``prev_ts`` (in-progress candles): the start of the last closed candle of the series
    before this one, None when unknown — a reader holding it knows every closed bar before this one is in (without
    flat candles the bar before may be several intervals back). ``as_of`` (in-progress candles, since the same schema
    version 1: optional, None from older writers): the exchange time of the newest trade in it, the time a reader
    evaluates it at beside closed candles (which are evaluated at their close).
    """

    kind: Literal["candle"] = "candle"
    exchange: str
    symbol: str
    timeframe: str
    ts: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    quote_volume: Decimal = Decimal(0)
    trades: int = 0
    first_trade_id: int | str | None = None
    last_trade_id: int | str | None = None
    closed: bool = True
    revision: int = 0
    incomplete: bool = False
    history: bool = False
    prev_ts: int | None = None
    as_of: int | None = None

    @property
    def vwap(self) -> Decimal | None:
        """Volume-weighted average price, None for an empty candle."""
        return self.quote_volume / self.volume if self.volume else None

    @property
    def delta(self) -> Decimal:
        """Taker buy minus taker sell volume: the candle's contribution to CVD."""
        return self.buy_volume - self.sell_volume


class Alert(Message):
    """An alert fired (or resolved) by a rule. ``id`` is deterministic, so a replay produces the same id."""

    kind: Literal["alert"] = "alert"
    id: str
    rule: str
    exchange: str
    symbol: str
    timeframe: str | None = None
    ts: int  # exchange time of the data that fired it (candle start for candle rules)
    fired_at: int  # exchange time of the evaluation (candle close for candle rules)
    price: Decimal | None = None
    value: Decimal | None = None
    condition: str = ""
    message: str = ""
    severity: Literal["info", "warning", "critical"] = "info"
    labels: dict[str, str] = Field(default_factory=dict)
    channels: list[str] = Field(default_factory=list)
    state: Literal["firing", "resolved"] = "firing"

    def encode(self) -> bytes:
        """The bytes of ``Message.encode`` (``test_schemas.py`` holds them equal), packed from the fields directly:
        on the engine's hot path, run cold once per closed candle, pydantic's dump cost ~3x this."""
        d = self.__dict__
        price, value = d["price"], d["value"]
        return _packb({"id": d["id"], "rule": d["rule"], "exchange": d["exchange"], "symbol": d["symbol"],
                       "timeframe": d["timeframe"], "ts": d["ts"], "fired_at": d["fired_at"],
                       "price": None if price is None else str(price), "value": None if value is None else str(value),
                       "condition": d["condition"], "message": d["message"], "severity": d["severity"],
                       "labels": dict(d["labels"]), "channels": list(d["channels"]), "state": d["state"],
                       "v": SCHEMA_VERSION, "k": "alert"})


def live_channels(alerts: bool, series: Iterable[tuple[str, str, str]],
                  tickers: Iterable[tuple[str, str]]) -> dict[str, tuple[str, type[Message]]]:
    """Redis pub/sub channel → (event kind, message class) for a live subscription (the contract in docs/channels.md):
    alerts; closed and in-progress candles of each (exchange, symbol, timeframe); tickers of each (exchange, symbol)."""
    out: dict[str, tuple[str, type[Message]]] = {}
    if alerts:
        out[streams.CHANNEL_ALERTS] = ("alert", Alert)
    for ex, sym, tf in series:
        out[streams.channel_candles(ex, sym, tf)] = ("candle", Candle)
        out[streams.channel_candles_live(ex, sym, tf)] = ("candle_live", Candle)
    for ex, sym in tickers:
        out[streams.channel_tickers(ex, sym)] = ("ticker", Ticker)
    return out
