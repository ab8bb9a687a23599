"""Order-book and futures state of one pair, and the values of the book / futures operands (docs/rules.md).

``PairFeeds`` keeps what the operands read: the last two book snapshots (a crossing compares with the previous one),
the last two funding readings, and the open interest readings and liquidations of the longest window a rule asks for
(plus the reading just before it). ``value(operand, offset)`` is the operand at the pair's latest update (``offset``
0) or the update of the same kind before it (1). Every value is an exact ``Decimal`` (None where it is unknown).

Book figures come from the snapshot market_feed published (``BookSnapshot``), decoded into ``BookFigures``: what the
operands read, parsed from the message map with exact ``Decimal`` and its types checked, without building the
pydantic model (~2,000 snapshots a second reach an engine; the model's validation of every level and wall event cost
~5x more). A band whose width the feed publishes
(``books.bands_bps``) is computed over the whole local book; another width is computed here from the snapshot's top
levels, and is unknown (None) when those levels do not reach the band's edge (or it passes the snapshot's
``bid_floor`` / ``ask_ceiling``). A band the snapshot marks incomplete
(past the part of the book known level by level) is unknown too: its depth would only be a lower bound.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, NamedTuple

from shared import rules as r
from shared.book_messages import BookSnapshot
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.errors import DecodeError
from shared.orderbook.book import L2Book
from shared.orderbook.metrics import EXACT, QUOTIENTS, book_metrics
from shared.schemas import SCHEMA_VERSION, unpack

logger = logging.getLogger(__name__)

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_BPS = Decimal(10_000)


class BandFigures(NamedTuple):
    """The figures of one band a snapshot carries (``BookBand``) that operands read."""

    bid_base: Decimal
    ask_base: Decimal
    bid_quote: Decimal
    ask_quote: Decimal
    imbalance: Decimal | None
    bid_wall_ratio: Decimal | None
    ask_wall_ratio: Decimal | None
    complete: bool


_BAND_FIELDS = ("bid_base", "ask_base", "bid_quote", "ask_quote")
_BAND_OPTIONAL = ("imbalance", "bid_wall_ratio", "ask_wall_ratio")


def _checked_band(b: Any) -> Any:
    """A band's message map, its figures' types checked (exact decimal text or integers; None where optional); the
    text is parsed by ``band_figures`` when a rule first reads the band (~2,000 snapshots a second, three bands of
    seven figures each, and rules read one or two)."""
    for name in _BAND_FIELDS:
        value = b[name]
        if type(value) is not str and type(value) is not int:
            _dec(value, f"bands.{name}")  # (raises, naming the field)
    for name in _BAND_OPTIONAL:
        value = b.get(name)
        if value is not None and type(value) is not str and type(value) is not int:
            _dec(value, f"bands.{name}")
    return b


def band_figures(b: Any) -> BandFigures:
    """The figures of a band's message map (``BookFigures.bands``); DecodeError for text that is not a decimal."""
    return BandFigures(_dec(b["bid_base"], "bands.bid_base"), _dec(b["ask_base"], "bands.ask_base"),
                       _dec(b["bid_quote"], "bands.bid_quote"), _dec(b["ask_quote"], "bands.ask_quote"),
                       _opt(b.get("imbalance"), "bands.imbalance"), _opt(b.get("bid_wall_ratio"), "bands.bid_wall_ratio"),
                       _opt(b.get("ask_wall_ratio"), "bands.ask_wall_ratio"), b.get("complete", True) is True)


class MessageBand:
    """A band of a snapshot as the operands read it (the fields of ``BandFigures``), each figure parsed from the
    message's text when first read: a rule reads one or two of a snapshot's ~20 band figures. Text that is not a
    decimal (the types were checked on decoding) reads as unknown (None), with a warning."""

    def __init__(self, m: Any, where: str) -> None:
        self._m = m
        self._where = where

    @property
    def complete(self) -> bool:
        return self._m.get("complete", True) is True

    def __getattr__(self, name: str) -> Decimal | None:  # (called once per figure: the value is kept after)
        if name not in _BAND_FIELDS and name not in _BAND_OPTIONAL:
            raise AttributeError(name)
        try:
            value = _opt(self._m.get(name), f"bands.{name}")
        except DecodeError as exc:
            logger.warning("%s: %s unknown: %s", self._where, name, exc)
            value = None
        self.__dict__[name] = value
        return value


class BookFigures(NamedTuple):
    """One ``BookSnapshot`` as the book operands read it: ``bands`` by width (each the band's message map, its types
    checked, its figures parsed by ``band_figures`` when first read), ``walls`` as (kind, side, size), the levels as
    the message's [price, size] text rows (parsed only for a band the snapshot does not carry)."""

    exchange: str
    symbol: str
    ts: int
    update_id: int | None
    mid: Decimal | None
    spread: Decimal | None
    spread_bps: Decimal | None
    microprice: Decimal | None
    bands: dict[Decimal, Any]
    walls: tuple[tuple[str, str, Decimal], ...]
    bids: Sequence[Sequence[Any]]
    asks: Sequence[Sequence[Any]]
    bid_floor: Decimal | None
    ask_ceiling: Decimal | None

    @classmethod
    def from_msg(cls, m: Any) -> BookFigures:
        """From a ``book`` message map (``unpack`` of a ``part_books`` entry); DecodeError naming what is wrong."""
        if not isinstance(m, dict) or m.get("v") != SCHEMA_VERSION or m.get("k") != "book":
            raise DecodeError(f"expected a book message of schema version {SCHEMA_VERSION}")
        try:
            bands = {_dec(b["bps"], "bands.bps"): _checked_band(b) for b in m.get("bands") or ()}
            walls = tuple((_choice(w["kind"], _KINDS, "walls.kind"), _choice(w["side"], ("bid", "ask"), "walls.side"),
                           _dec(w["size"], "walls.size")) for w in m.get("walls") or ())
            bids, asks = m["bids"], m["asks"]
            if not isinstance(bids, (list, tuple)) or not isinstance(asks, (list, tuple)):
                raise DecodeError("invalid book: bids and asks must be lists of [price, size]")
            update_id = m.get("update_id")
            return cls(_text(m["exchange"], "exchange"), _text(m["symbol"], "symbol"), _int(m["ts"], "ts"),
                       None if update_id is None else _int(update_id, "update_id"), _opt(m.get("mid"), "mid"),
                       _opt(m.get("spread"), "spread"), _opt(m.get("spread_bps"), "spread_bps"),
                       _opt(m.get("microprice"), "microprice"), bands, walls, bids, asks,
                       _opt(m.get("bid_floor"), "bid_floor"), _opt(m.get("ask_ceiling"), "ask_ceiling"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise DecodeError(f"invalid book: {type(exc).__name__} {exc}") from exc

    @classmethod
    def of(cls, snap: BookSnapshot) -> BookFigures:
        """A snapshot built in this process (tests, a backtest): through its message, as the engine reads it."""
        return cls.from_msg(unpack(snap.encode()))


_KINDS = ("appeared", "pulled", "eaten")


def _dec(value: Any, field: str) -> Decimal:
    """Exact decimal text or an integer (never a float: its value is not the decimal it prints as)."""
    if type(value) is str or type(value) is int:
        try:
            d = Decimal(value)
        except InvalidOperation:
            d = Decimal("NaN")
        if d.is_finite():
            return d
    raise DecodeError(f"invalid book: field {field} must be exact decimal text or an integer, got {value!r}")


def _opt(value: Any, field: str) -> Decimal | None:
    return None if value is None else _dec(value, field)


def _int(value: Any, field: str) -> int:
    if type(value) is not int:
        raise DecodeError(f"invalid book: field {field} must be an integer, got {value!r}")
    return value


def _text(value: Any, field: str) -> str:
    if type(value) is not str or not value:
        raise DecodeError(f"invalid book: field {field} must be a non-empty string, got {value!r}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise DecodeError(f"invalid book: field {field} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


class PairFeeds:
    """What the book and futures operands of one pair read. ``horizon_ms``: the longest window kept."""

    __slots__ = ("books", "funding", "open_interest", "liquidations", "horizon_ms", "_bands")

    def __init__(self, horizon_ms: int = 0) -> None:
        self.books: deque[BookFigures] = deque(maxlen=2)
        self.funding: deque[FundingRate] = deque(maxlen=2)
        self.open_interest: deque[OpenInterest] = deque()
        self.liquidations: deque[Liquidation] = deque()
        self.horizon_ms = horizon_ms
        #: (id of snapshot, bps) -> band, once
        self._bands: dict[tuple[int, Decimal], BandFigures | MessageBand | None] = {}

    # ---- input (each returns False for an update older than the last one of its kind: ignored) ---------------------

    def add_book(self, snap: BookFigures) -> bool:
        if self.books and snap.ts < self.books[-1].ts:
            return False
        if len(self.books) == 2:
            old = id(self.books[0])
            self._bands = {k: v for k, v in self._bands.items() if k[0] != old}
        self.books.append(snap)
        return True

    def add_funding(self, f: FundingRate) -> bool:
        if self.funding and f.ts < self.funding[-1].ts:
            return False
        self.funding.append(f)
        return True

    def add_open_interest(self, oi: OpenInterest) -> bool:
        log = self.open_interest
        if log and oi.ts < log[-1].ts:
            return False
        log.append(oi)
        # keep, for the latest reading and the one before it (offset 1), the readings of the horizon and the last one
        # at or before its start (the "window ago" reading)
        start = log[-2].ts - self.horizon_ms if len(log) > 1 else oi.ts
        while len(log) > 3 and log[1].ts <= start:
            log.popleft()
        return True

    def add_liquidation(self, liq: Liquidation) -> bool:
        """Idempotent: a liquidation equal to one already counted at the same exchange time (the same forced order
        read again, or published again by a feed that took the pair over) is ignored. Binance pushes at most one
        liquidation a second per symbol, so two distinct ones never share time, side, price and amount."""
        log = self.liquidations
        if log and liq.ts < log[-1].ts:
            return False
        for seen in reversed(log):
            if seen.ts != liq.ts:
                break
            if seen == liq:
                return False
        log.append(liq)
        start = log[-2].ts - self.horizon_ms if len(log) > 1 else liq.ts  # (offset 1 reads from the one before)
        while len(log) > 2 and log[0].ts <= start:
            log.popleft()
        return True

    # ---- values -----------------------------------------------------------------------------------------------------

    def value(self, operand: Any, offset: int = 0) -> Decimal | None:
        """``operand`` at the pair's latest update of its kind (``offset`` 1: the one before)."""
        if isinstance(operand, str):
            if operand in r.BOOK_FIELDS:
                snap = _nth(self.books, offset)
                return None if snap is None else _book_field(snap, operand)
            if operand == "open_interest":
                oi = _nth(self.open_interest, offset)
                return None if oi is None else oi.amount
            f = _nth(self.funding, offset)
            return None if f is None else _funding_field(f, operand)
        if isinstance(operand, r.OpenInterestChange):
            return self._oi_change(operand, offset)
        if isinstance(operand, r.Liquidations):
            return self._liquidations(operand, offset)
        snap = _nth(self.books, offset)
        if snap is None:
            return None
        if isinstance(operand, r.WallEventSpec):
            event, side = operand.event, operand.side
            return sum((size for kind, s, size in snap.walls if kind == event and side in ("any", s)), _ZERO)
        band = self.band(snap, operand.bps)
        if band is None:
            return None
        if isinstance(operand, r.Imbalance):
            return band.imbalance
        if isinstance(operand, r.DepthBid):
            return band.bid_base if operand.unit == "base" else band.bid_quote
        if isinstance(operand, r.DepthAsk):
            return band.ask_base if operand.unit == "base" else band.ask_quote
        if isinstance(operand, r.WallRatioBid):
            return band.bid_wall_ratio
        if isinstance(operand, r.WallRatioAsk):
            return band.ask_wall_ratio
        raise TypeError(f"not a book or futures operand: {operand!r}")

    def band(self, snap: BookFigures, bps: Decimal) -> BandFigures | MessageBand | None:
        """The figures of the band of ``bps`` around the snapshot's mid (module docstring); None when unknown."""
        key = (id(snap), bps)
        if key in self._bands:
            return self._bands[key]
        raw = snap.bands.get(bps)
        band: BandFigures | MessageBand | None
        if raw is None:
            band = _band_from_levels(snap, bps)
        elif raw.get("complete", True) is not True:
            band = None
        else:
            band = MessageBand(raw, f"{snap.exchange} {snap.symbol} book at {snap.ts}, band {bps}")
        self._bands[key] = band
        return band

    def _oi_change(self, spec: r.OpenInterestChange, offset: int) -> Decimal | None:
        log = self.open_interest
        i = len(log) - 1 - offset
        if i < 0:
            return None
        now = log[i]
        start = now.ts - spec.window
        then = next((log[j] for j in range(i - 1, -1, -1) if log[j].ts <= start), None)
        if then is None:
            return None
        change = now.amount - then.amount
        if spec.unit == "amount":
            return change
        return QUOTIENTS.divide(change * _HUNDRED, then.amount) if then.amount else None

    def _liquidations(self, spec: r.Liquidations, offset: int) -> Decimal | None:
        log = self.liquidations
        i = len(log) - 1 - offset
        if i < 0:
            return _ZERO if offset == 0 else None
        end = log[i].ts
        chosen = [liq for j in range(i, -1, -1) if (liq := log[j]).ts > end - spec.window
                  and spec.side in ("any", liq.side)]
        if spec.measure == "count":
            return Decimal(len(chosen))
        with localcontext(EXACT):
            if spec.measure == "volume":
                return sum((liq.amount for liq in chosen), _ZERO)
            return sum((liq.amount * liq.price for liq in chosen), _ZERO)

    def price(self, kind: str) -> Decimal | None:
        """The price an alert of an update of ``kind`` carries: the book's mid, the mark price, the liquidation's."""
        if kind == "book":
            snap = _nth(self.books, 0)
            return snap.mid if snap is not None else None
        if kind == "liquidations":
            return self.liquidations[-1].price if self.liquidations else None
        f = _nth(self.funding, 0)
        return f.mark_price if f is not None else None


def _nth(log: deque[Any], offset: int) -> Any:
    return log[-1 - offset] if offset < len(log) else None


def _book_field(snap: BookFigures, name: str) -> Decimal | None:
    if name == "microprice":
        return snap.microprice
    if name == "book_mid":
        return snap.mid
    if name == "book_spread":
        return snap.spread
    return snap.spread_bps


def _funding_field(f: FundingRate, name: str) -> Decimal | None:
    if name == "funding_rate":
        return f.funding_rate
    if name == "mark_price":
        return f.mark_price
    if name == "index_price":
        return f.index_price
    if not f.index_price:  # basis_bps
        return None
    return QUOTIENTS.divide((f.mark_price - f.index_price) * _BPS, f.index_price)


def _band_from_levels(snap: BookFigures, bps: Decimal) -> BandFigures | None:
    """A band the snapshot does not carry, from its top levels: None unless they reach past the band on both sides
    (``book_metrics``' ``complete``, with the last level of each side as the edge of what is known)."""
    if not snap.bids or not snap.asks:
        return None
    try:
        bids = [(_dec(p, "bids"), _dec(q, "bids")) for p, q in snap.bids]
        asks = [(_dec(p, "asks"), _dec(q, "asks")) for p, q in snap.asks]
    except (TypeError, ValueError, DecodeError):
        return None  # (levels are parsed only here: a malformed row makes the band unknown)
    book = L2Book()
    book.load(bids, asks)
    floor, ceiling = bids[-1][0], asks[-1][0]
    if snap.bid_floor is not None:
        floor = max(floor, snap.bid_floor)
    if snap.ask_ceiling is not None:
        ceiling = min(ceiling, snap.ask_ceiling)
    m = book_metrics(book, (bps,), bid_floor=floor, ask_ceiling=ceiling)
    if m is None:
        return None
    b = m.bands[0]
    if not b.complete:
        return None
    return BandFigures(b.bid_base, b.ask_base, b.bid_quote, b.ask_quote, b.imbalance, b.bid_wall_ratio,
                       b.ask_wall_ratio, True)
