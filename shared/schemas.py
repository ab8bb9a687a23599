"""Message types that travel on the bus, and their msgpack encoding.

Every message is one msgpack map in the stream entry's single field ``d`` (see ``shared.bus``). Each map carries
``v`` (schema version) and ``k`` (kind). Prices and amounts travel as decimal strings and are ``Decimal`` in
Python, so nothing that is summed or compared with a threshold drifts.

The trades stream of one (exchange, symbol) carries three kinds, in exchange order:

- ``trades``: a batch (typically one websocket frame) of trades. Compact rows, because this is the hot path::

      {"v": 1, "k": "trades", "x": "binance", "s": "BTC/USDT",
       "t": [[3735683259, 1723161255342, "61837.63", "0.02", 0], ...]}   # id, ts ms, price, amount, taker buy?

  or, from ``COLUMNS_FROM`` (8) trades on (a replay's chunks), the same fields as columns, which unpack in about half
  the time (one array per field instead of one per trade)::

      {"v": 1, "k": "trades", "x": "binance", "s": "BTC/USDT",
       "c": [[3735683259, ...], [1723161255342, ...], ["61837.63", ...], ["0.02", ...], [0, ...]]}

  A price is parsed once, by the reader that computes with it (``decode_feed``): a replay publishes the text of its
  file as it is (``TradeText``, ``shared.recordings.read_trade_texts``).

- ``gap``: market_feed could not recover trades between ``from`` and ``to`` (ms): candles there are incomplete.
- ``watermark``: exchange time has reached ``ts``; no trade at or before it will follow except late ones. Replay and
  the live feed publish it so candles close on exchange time in quiet markets; ``final`` marks the end of a recording.

Idempotency: a trade is identified by (exchange, symbol, id); an alert by its ``id``; a candle by
(exchange, symbol, timeframe, ts, revision).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import repeat
from operator import is_ as _is
from typing import Any, ClassVar, Literal, NamedTuple, Self, cast

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import streams
from shared.errors import DecodeError

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


class TextColumns:
    """Trades of one symbol in file order as columns, as a recording holds them (``shared.trade_blocks``): ids, ms
    timestamps, prices and amounts as their exact text (like ``TradeText``), sides 1 (the taker bought) or 0. A replay
    batches and publishes them as slices (``encode_trades`` writes the columns as they are), no object per trade."""

    __slots__ = ("ids", "tss", "prices", "amounts", "sides")

    def __init__(self, ids: list[Any], tss: list[int], prices: list[str], amounts: list[str], sides: list[int]) -> None:
        self.ids, self.tss, self.prices, self.amounts, self.sides = ids, tss, prices, amounts, sides

    def __len__(self) -> int:
        return len(self.tss)

    def __getitem__(self, i: int) -> TradeText:
        return TradeText(self.ids[i], self.tss[i], self.prices[i], self.amounts[i], self.sides[i] == 1)

    def __iter__(self) -> Iterator[TradeText]:
        return map(TradeText, self.ids, self.tss, self.prices, self.amounts, map((1).__eq__, self.sides))

    def slice(self, start: int, end: int) -> TextColumns:
        return TextColumns(self.ids[start:end], self.tss[start:end], self.prices[start:end],
                           self.amounts[start:end], self.sides[start:end])


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
#: Trades per entry from which ``encode_trades`` writes columns: one array per field unpacks in about half the time
#: of one array per trade (5 arrays instead of n), and the decoder needs no transposing.
COLUMNS_FROM = 8


def encode_trades(exchange: str, symbol: str,
                  trades: list[Trade] | list[TradeText] | list[tuple[Any, ...]] | TextColumns) -> bytes:
    """Encode a batch of trades (Trade, TradeText or equivalent tuples, or ``TextColumns``) for the trades stream:
    prices and amounts as decimal text (a TradeText's text as it is). A batch of ``COLUMNS_FROM`` trades or more is
    written as columns (``c``: ids, timestamps, prices, amounts, sides; ``TextColumns`` as they are), a smaller one
    as rows (``t``)."""
    if type(trades) is TextColumns and len(trades) >= COLUMNS_FROM:
        cols: Any = (trades.ids, trades.tss, trades.prices, trades.amounts, trades.sides)
        return _packb({"v": SCHEMA_VERSION, "k": "trades", "x": exchange, "s": symbol, "c": cols})
    if len(trades) >= COLUMNS_FROM:
        ids, tss, prices, amounts, sides = zip(*trades)
        cols = (ids, tss, list(map(str, prices)), list(map(str, amounts)), [1 if b else 0 for b in sides])
        return _packb({"v": SCHEMA_VERSION, "k": "trades", "x": exchange, "s": symbol, "c": cols})
    rows = [(t[0], t[1], str(t[2]), str(t[3]), 1 if t[4] else 0) for t in trades]  # (packed as arrays)
    return _packb({"v": SCHEMA_VERSION, "k": "trades", "x": exchange, "s": symbol, "t": rows})


def encode_gap(gap: GapMarker) -> bytes:
    return _packb({"v": SCHEMA_VERSION, "k": "gap", "x": gap.exchange, "s": gap.symbol,
                   "from": gap.start, "to": gap.end, "reason": gap.reason})


def encode_watermark(mark: Watermark) -> bytes:
    return _packb({"v": SCHEMA_VERSION, "k": "watermark", "x": mark.exchange, "s": mark.symbol,
                   "ts": mark.ts, "final": mark.final})


def _header(msg: Any, kinds: tuple[str, ...]) -> str:
    if not isinstance(msg, dict):
        raise DecodeError(f"expected a map, got {type(msg).__name__}")
    version = msg.get("v")
    if version != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {version!r} (this build reads {SCHEMA_VERSION})")
    kind = msg.get("k")
    if kind not in kinds:
        raise DecodeError(f"unexpected message kind {kind!r}; expected one of {', '.join(kinds)}")
    return str(kind)


def _str_field(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _int_field(msg: dict[str, Any], key: str) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"field {key!r} must be an integer, got {value!r}")
    return value


class TradeColumns:
    """The trades of one large entry as columns: iterates (and indexes) like a list of ``Trade``. ``rows()`` gives
    them as plain ``(id, ts, price, amount, side)`` rows with no object per trade (CPython reuses zip's result tuple
    when the loop unpacks it), so the builder's pass over a batch of 100,000 trades leaves nothing for the garbage
    collector to scan."""

    __slots__ = ("ids", "tss", "prices", "amounts", "sides")

    def __init__(self, ids: tuple[Any, ...], tss: tuple[int, ...], prices: list[Decimal], amounts: list[Decimal],
                 sides: tuple[int, ...]) -> None:
        self.ids, self.tss, self.prices, self.amounts, self.sides = ids, tss, prices, amounts, sides

    def __len__(self) -> int:
        return len(self.tss)

    def __iter__(self) -> Iterator[Trade]:
        return map(Trade, self.ids, self.tss, self.prices, self.amounts, map((1).__eq__, self.sides))

    def rows(self) -> Iterator[tuple[Any, int, Decimal, Decimal, int]]:
        return zip(self.ids, self.tss, self.prices, self.amounts, self.sides)

    def __getitem__(self, i: int) -> Trade:
        return Trade(self.ids[i], self.tss[i], self.prices[i], self.amounts[i], self.sides[i] == 1)


_INF = Decimal("Infinity")
_ARRAY = frozenset((list, tuple))  # a msgpack array: tuples from decode_feed, lists from a caller's unpack
_SIDE_TYPES = frozenset((int, bool))
# Decimal of each price / amount text already seen and checked (with one trade per entry, Decimal() and its checks are
# a third of the decode): real markets repeat a few thousand prices and many more amounts. One table each, so the
# amounts' long tail does not flush the prices out. Bounded: cleared when full.
_PRICES: dict[str, Decimal] = {}
_AMOUNTS: dict[str, Decimal] = {}
_CACHES = {"price": _PRICES, "amount": _AMOUNTS}
_CACHE_MAX = 100_000


def _value(text: Any, what: str, n: int, row: Any) -> Decimal:
    """A price or amount: exact decimal text or an integer, finite and > 0; DecodeError naming the trade otherwise.
    A float is refused: its binary value is not the decimal the exchange sent (61000.5 may be 61000.499999...)."""
    if type(text) is str:
        cache = _CACHES[what]
        cached = cache.get(text)
        if cached is not None:
            return cached
        try:
            value = Decimal(text)
            ok = 0 < value < _INF
        except ArithmeticError:  # not a number, or NaN compared
            ok = False
        if ok:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[text] = value
            return value
    elif type(text) is int and text > 0:
        return Decimal(text)
    kind = f"a float ({text!r})" if isinstance(text, float) else repr(text)
    raise DecodeError(f"trade {n} (id {row[0]!r}): {what} must be exact decimal text or an integer, finite and > 0; "
                      f"got {kind}")


def _values(texts: tuple[Any, ...] | list[Any], what: str, ids: tuple[Any, ...] | list[Any]) -> list[Decimal]:
    """``_value`` of a column of one entry, the loops in C: values seen before are one dict lookup each (``map``), the
    others are converted together and checked with one ``min``/``max`` (a NaN raises on comparing), and only a column
    holding something wrong goes value by value, for the reason naming the trade."""
    cache = _CACHES[what]
    try:  # every value seen (and checked) before, the common case: one pass, no search for a miss after it
        return list(map(cache.__getitem__, texts))
    except (KeyError, TypeError):  # one not seen yet, or something unhashable (a list)
        pass
    try:
        got: list[Any] = list(map(cache.get, texts))
    except TypeError:  # something unhashable: value by value, for the reason
        return [_value(text, what, n, (ids[n],)) for n, text in enumerate(texts)]
    if not any(map(_is, got, repeat(None))):  # (not ``None in got``: it compares each Decimal with None, ~0.2 us each)
        return got
    where = [n for n, value in enumerate(got) if value is None]
    missing = [texts[n] for n in where]
    fresh: list[Decimal] = []
    if set(map(type, missing)) == {str}:  # (a float would convert silently: it takes the checked way)
        try:
            fresh = list(map(Decimal, missing))
            if not (min(fresh) > 0 and max(fresh) < _INF):
                fresh = []
        except ArithmeticError:  # not a number, or a NaN compared
            fresh = []
    if not fresh:
        for n in where:
            got[n] = _value(texts[n], what, n, (ids[n],))
        return got
    for n, value in zip(where, fresh):
        got[n] = value
    if len(cache) + len(missing) > _CACHE_MAX:
        cache.clear()
    cache.update(zip(missing, fresh))
    return got


def trade_rows(trades: list[Trade] | TradeColumns | list[TradeText] | TextColumns
               ) -> Iterable[tuple[Any, int, Decimal, Decimal, Any]]:
    """The trades of a ``TradeBatch`` as ``(id, ts, price, amount, taker_is_buy)`` rows with Decimal values, the
    cheapest way there is (a batch of ``TradeText`` or ``TextColumns`` handed over without Redis, as tests do, is
    converted)."""
    if type(trades) is TradeColumns:
        return trades.rows()
    if trades and type(trades[0]) is TradeText:
        return [Trade(t[0], t[1], Decimal(t[2]), Decimal(t[3]), bool(t[4])) for t in trades]
    return cast(list[Trade], trades)


def _decode_row(n: int, row: Any) -> Trade:
    if type(row) not in _ARRAY or len(row) != 5:
        raise DecodeError(f"trade {n} is malformed (expected [id, ts, price, amount, side]): {row!r}")
    tid, ts, price, amount, side = row
    if type(ts) is not int:
        raise DecodeError(f"trade {n} is malformed (ts must be an integer): {row!r}")
    if side != 0 and side != 1:
        raise DecodeError(f"trade {n} is malformed (side must be 1 for a taker buy or 0): {row!r}")
    return Trade(tid, ts, _value(price, "price", n, row), _value(amount, "amount", n, row), side == 1)


def _decode_rows(rows: Any) -> list[Trade] | TradeColumns:
    """The trades of an entry, every one validated (``_value``): rows for small batches, columns for large ones."""
    if type(rows) not in _ARRAY:
        raise DecodeError("field 't' must be a list of trades")
    if len(rows) >= 8 and len(kinds := set(map(type, rows))) == 1 and kinds <= _ARRAY and set(map(len, rows)) == {5}:
        ids, tss, prices, amounts, sides = zip(*rows)
        if set(map(type, tss)) == {int} and set(map(type, sides)) <= _SIDE_TYPES and set(sides) <= {0, 1}:
            return TradeColumns(ids, tss, _values(prices, "price", ids), _values(amounts, "amount", ids), sides)
    out: list[Trade] = []
    price_of, amount_of = _PRICES, _AMOUNTS
    for n, row in enumerate(rows):
        # the usual row, with values seen (and checked) before: no call but the dict lookups
        if type(row) in _ARRAY and len(row) == 5:
            tid, ts, price, amount, side = row
            if type(ts) is int and type(price) is str and type(amount) is str and (side == 1 or side == 0):
                p, a = price_of.get(price), amount_of.get(amount)
                if p is not None and a is not None:
                    out.append(_new_tuple(Trade, (tid, ts, p, a, side == 1)))
                    continue
        out.append(_decode_row(n, row))  # every check, and the reason when one fails
    return out


def _decode_columns(cols: Any) -> TradeColumns:
    """The trades of an entry written as columns (``c``), every one validated as ``_decode_rows`` does."""
    if type(cols) not in _ARRAY or len(cols) != 5 or not set(map(type, cols)) <= _ARRAY:
        raise DecodeError("field 'c' must be five columns: ids, timestamps, prices, amounts, sides")
    ids, tss, prices, amounts, sides = cols
    if not len(ids) == len(tss) == len(prices) == len(amounts) == len(sides):
        raise DecodeError("field 'c' has columns of different lengths")
    if tss and set(map(type, tss)) != {int}:
        n = next(n for n, ts in enumerate(tss) if type(ts) is not int)
        raise DecodeError(f"trade {n} is malformed (ts must be an integer): {tss[n]!r}")
    if not (set(map(type, sides)) <= _SIDE_TYPES and set(sides) <= {0, 1}):
        n = next(n for n, side in enumerate(sides) if type(side) not in _SIDE_TYPES or (side != 0 and side != 1))
        raise DecodeError(f"trade {n} is malformed (side must be 1 for a taker buy or 0): {sides[n]!r}")
    return TradeColumns(tuple(ids), tuple(tss), _values(prices, "price", ids), _values(amounts, "amount", ids),
                        tuple(sides))


_new_tuple = tuple.__new__  # a Trade without NamedTuple's Python-level __new__


def decode_feed(raw: bytes) -> FeedMessage:
    """Decode one entry of a trades stream into TradeBatch, GapMarker or Watermark: the one decoder and validation of
    trades every reader uses. DecodeError (the entry is dead-lettered with it) for anything malformed, and for a
    price or amount that is not exact decimal text or an integer (a float), or not finite and > 0 (NaN, Infinity,
    zero, negative)."""
    try:  # arrays as tuples: an entry's rows unpack ~4x faster than as lists (the garbage collector runs far less)
        msg = _unpackb(raw, raw=False, strict_map_key=False, use_list=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"not msgpack: {exc}") from exc
    return feed_from_msg(msg)


#: What ``decode_feed_runs`` gives per item: (index of its first entry, index of its last entry, the message or the
#: DecodeError of that entry).
FeedRun = tuple[int, int, "FeedMessage | DecodeError"]


def _row_at(raw: bytes) -> int | None:
    """Where the only row of a one-trade entry written as rows (``t``: one row, the map's last key) starts in
    ``raw``, or None for any other entry. Everything before it (the map's header, ``v``, ``k``, ``x``, ``s`` and
    ``t``'s one-item array header) is the entry's *head*: an entry with the same head bytes is the same message up to
    that row (msgpack reads bytes in order, with no lookahead)."""
    reader = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False)
    reader.feed(raw)
    try:
        keys = reader.read_map_header()
        for n in range(keys):
            key = reader.unpack()
            if n == keys - 1:
                return reader.tell() if key == "t" and reader.read_array_header() == 1 else None
            reader.skip()
    except Exception:  # (decode_feed decoded it: only an odd shape lands here)
        return None
    return None


def decode_feed_runs(raws: list[bytes]) -> list[FeedRun]:
    """``decode_feed`` of each entry of one read, with the one-trade entries of a pair in ONE ``TradeBatch`` (in
    entry order; ``TradeColumns`` from 8 trades on): ``[(first, last, message or DecodeError), ...]``, where ``first``
    and ``last`` are the indexes in ``raws`` of the first and last entry it holds. The messages of each pair come in
    entry order; messages of different pairs may come in another order than their entries (a batch is listed at its
    first entry), which is why only a reader that handles each pair on its own (candle_builder) takes this. Any other
    message (a gap, a watermark, a larger batch) ends every batch still being filled, so nothing moves across it.

    The same decoding and validation as ``decode_feed``: an entry whose bytes start with the *head* (``_row_at``) of a
    one-trade entry ``decode_feed`` decoded earlier in the read is the same map with another row, so only its row is
    unpacked; the rows of a batch are then checked together as ``decode_feed`` checks the rows of one entry
    (``_decode_rows``: column-wise, each price and amount text seen before one dict lookup). A batch holding anything
    those checks refuse is decoded again entry by entry with ``decode_feed``, for each bad entry's own reason. This is
    a live feed's commonest entry (one trade per websocket frame): the map, its strings, a ``TradeBatch`` and a
    ``Trade`` per entry were ~60% of decoding it."""
    out: list[Any] = []  # FeedRun, or a batch being filled: [first, last, rows, entry indexes, (exchange, symbol)]
    heads: dict[bytes, list[Any] | None] = {}  # head -> its batch being filled, or None
    pairs: dict[bytes, tuple[str, str]] = {}  # head -> (exchange, symbol)
    sizes: list[int] = []  # the lengths of the heads seen
    n, i = len(raws), 0
    while i < n:
        raw = raws[i]
        head = b""
        for size in sizes:
            if raw[:size] in heads:
                head = raw[:size]
                break
        if head:  # this entry and the ones right after it with the same head
            size, batch = len(head), heads[head]
            if batch is None:
                batch = heads[head] = [i, i, [], [], pairs[head]]
                out.append(batch)
            add_row, add_index = batch[2].append, batch[3].append
            while True:
                try:
                    add_row(_unpackb(raw[size:], raw=False, strict_map_key=False, use_list=False))
                except Exception:  # (decode_feed says why)
                    add_row(None)
                add_index(i)
                i += 1
                if i == n:
                    break
                raw = raws[i]
                if not raw.startswith(head):
                    break
            batch[1] = i - 1
            continue
        try:
            msg = decode_feed(raw)
        except DecodeError as exc:
            out.append((i, i, exc))
            i += 1
            continue
        if type(msg) is TradeBatch and type(msg.trades) is list and len(msg.trades) == 1:
            at = _row_at(raw)
            if at is not None:  # a new head: this entry is read again, the way above
                heads[raw[:at]] = None
                pairs[raw[:at]] = (msg.exchange, msg.symbol)
                if at not in sizes:
                    sizes.append(at)
                continue
        for key in heads:  # nothing moves across this message
            heads[key] = None
        out.append((i, i, msg))
        i += 1
    runs: list[FeedRun] = []
    for item in out:
        if type(item) is tuple:
            runs.append(item)
        else:
            runs += _batch_runs(raws, *item)
    return runs


def _batch_runs(raws: list[bytes], first: int, last: int, rows: list[Any], indexes: list[int],
                pair: tuple[str, str]) -> list[FeedRun]:
    """The one-trade entries ``indexes`` of a pair as one batch (their ``rows``, checked as one entry's rows), or, when
    something in them is refused, each decoded by ``decode_feed``: the good ones in one batch, each bad one with its
    DecodeError."""
    try:
        return [(first, last, TradeBatch(*pair, _decode_rows(rows)))]
    except DecodeError:
        pass
    out: list[FeedRun] = []
    good: list[Trade] = []
    where: list[int] = []
    for i in indexes:
        try:
            good.append(cast(list[Trade], cast(TradeBatch, decode_feed(raws[i])).trades)[0])
            where.append(i)
        except DecodeError as exc:
            out.append((i, i, exc))
    if good:
        out.insert(0, (where[0], where[-1], TradeBatch(*pair, good)))
    return out


def feed_from_msg(msg: Any) -> FeedMessage:
    """``decode_feed`` of an already unpacked map (for a reader that looked at ``k`` first)."""
    if type(msg) is dict and msg.get("k") == "trades" and msg.get("v") == SCHEMA_VERSION:  # the hot path
        exchange, symbol = msg.get("x"), msg.get("s")
        if type(exchange) is str and type(symbol) is str and exchange and symbol:
            if "c" in msg:
                return TradeBatch(exchange, symbol, _decode_columns(msg["c"]))
            rows = msg.get("t")
            if (type(rows) is tuple or type(rows) is list) and len(rows) == 1:  # one trade per entry: the commonest entry of a live feed
                row = rows[0]
                if type(row) in _ARRAY and len(row) == 5:
                    tid, ts, price, amount, side = row
                    if type(ts) is int and type(price) is str and type(amount) is str and (side == 1 or side == 0):
                        p, a = _PRICES.get(price), _AMOUNTS.get(amount)
                        if p is not None and a is not None:
                            return TradeBatch(exchange, symbol, [_new_tuple(Trade, (tid, ts, p, a, side == 1))])
            return TradeBatch(exchange, symbol, _decode_rows(rows))
    kind = _header(msg, ("trades", "gap", "watermark"))
    exchange = _str_field(msg, "x")
    # a watermark with symbol "" speaks for every pair of its exchange in the partition (market_feed writes one per
    # partition, not one per pair); every other message names its pair
    symbol = "" if kind == "watermark" and msg.get("s") == "" else _str_field(msg, "s")
    if kind == "trades":
        if "c" in msg:
            return TradeBatch(exchange, symbol, _decode_columns(msg["c"]))
        return TradeBatch(exchange, symbol, _decode_rows(msg.get("t")))
    if kind == "gap":
        return GapMarker(exchange, symbol, _int_field(msg, "from"), _int_field(msg, "to"), str(msg.get("reason", "")))
    return Watermark(exchange, symbol, _int_field(msg, "ts"), bool(msg.get("final", False)))


# --------------------------------------------------------------------------------------------------------------------
# Tickers, candles, alerts (low rate: pydantic models, exact decimals)


class _Message(BaseModel):
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
        kind = _header(msg, (kind,))
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


class Ticker(_Message):
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


class Candle(_Message):
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


class Alert(_Message):
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
        """The bytes of ``_Message.encode`` (``test_schemas.py`` holds them equal), packed from the fields directly:
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
                  tickers: Iterable[tuple[str, str]]) -> dict[str, tuple[str, type[_Message]]]:
    """Redis pub/sub channel → (event kind, message class) for a live subscription (the contract in docs/channels.md):
    alerts; closed and in-progress candles of each (exchange, symbol, timeframe); tickers of each (exchange, symbol)."""
    out: dict[str, tuple[str, type[_Message]]] = {}
    if alerts:
        out[streams.CHANNEL_ALERTS] = ("alert", Alert)
    for ex, sym, tf in series:
        out[streams.channel_candles(ex, sym, tf)] = ("candle", Candle)
        out[streams.channel_candles_live(ex, sym, tf)] = ("candle_live", Candle)
    for ex, sym in tickers:
        out[streams.channel_tickers(ex, sym)] = ("ticker", Ticker)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Order books and derivatives (append-only additions; issue 24). Definitions of the book figures:
# shared/orderbook/metrics.py and shared/orderbook/walls.py.


class BookBand(BaseModel):
    """Depth figures within ``bps`` basis points of the mid (``shared.orderbook.metrics.Band``); walls flattened."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    bps: Decimal
    bid_base: Decimal
    ask_base: Decimal
    bid_quote: Decimal
    ask_quote: Decimal
    imbalance: Decimal | None = None
    bid_levels: int = 0
    ask_levels: int = 0
    bid_wall_price: Decimal | None = None
    bid_wall_size: Decimal | None = None
    bid_wall_ratio: Decimal | None = None
    ask_wall_price: Decimal | None = None
    ask_wall_size: Decimal | None = None
    ask_wall_ratio: Decimal | None = None
    complete: bool = True


class BookWallEvent(BaseModel):
    """A wall appeared, was pulled or was eaten (``shared.orderbook.walls.WallEvent``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    kind: Literal["appeared", "pulled", "eaten"]
    side: Literal["bid", "ask"]
    price: Decimal
    size: Decimal
    remaining: Decimal
    traded: Decimal
    ts: int | None = None


class BookSnapshot(_Message):
    """The top of one order book with its metrics, published throttled (``streams.part_books``). ``ts`` is the exchange
    time of the last update in it, ``update_id`` the exchange's sequence number of that state (Binance ``u``).
    ``bids``/``asks``: the best ``N`` levels, best first, as [price, size]. ``walls``: wall events since the previous
    snapshot. ``resyncs``: how many times the book was rebuilt from a new snapshot since the feed started.
    ``bid_floor`` / ``ask_ceiling``: the edges of the part of the book known level by level (None: unbounded); a
    figure computed from ``bids``/``asks`` past them is unknown."""

    kind: Literal["book"] = "book"
    exchange: str
    symbol: str
    ts: int
    update_id: int | None = None
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    mid: Decimal | None = None
    spread: Decimal | None = None
    spread_bps: Decimal | None = None
    microprice: Decimal | None = None
    bands: list[BookBand] = Field(default_factory=list)
    walls: list[BookWallEvent] = Field(default_factory=list)
    resyncs: int = 0
    bid_floor: Decimal | None = None
    ask_ceiling: Decimal | None = None


class FundingRate(_Message):
    """A perpetual's mark and index price and funding (``streams.part_derivs``). ``funding_rate`` is the rate of the
    next funding (paid at ``next_funding_ts``, ms); ``basis_bps`` = (mark - index) / index * 10_000."""

    kind: Literal["funding"] = "funding"
    exchange: str
    symbol: str
    ts: int
    mark_price: Decimal
    index_price: Decimal | None = None
    funding_rate: Decimal | None = None
    next_funding_ts: int | None = None

    @property
    def basis_bps(self) -> Decimal | None:
        if not self.index_price:
            return None
        return (self.mark_price - self.index_price) * 10_000 / self.index_price


class OpenInterest(_Message):
    """Open interest of a contract at exchange time ``ts`` (``streams.part_derivs``): ``amount`` in contracts
    (base units on Binance USD-M), ``value`` in quote units where the exchange gives it."""

    kind: Literal["open_interest"] = "open_interest"
    exchange: str
    symbol: str
    ts: int
    amount: Decimal
    value: Decimal | None = None


class Liquidation(_Message):
    """A forced order (``streams.part_derivs``): ``side`` of the liquidation order itself (``sell`` = a long was
    liquidated), ``amount`` filled at average ``price``; ``order_price`` its limit (bankruptcy) price."""

    kind: Literal["liquidation"] = "liquidation"
    exchange: str
    symbol: str
    ts: int
    side: Literal["buy", "sell"]
    price: Decimal
    amount: Decimal
    order_price: Decimal | None = None


DerivsMessage = FundingRate | OpenInterest | Liquidation
_DERIVS: dict[str, type[FundingRate] | type[OpenInterest] | type[Liquidation]] = {
    "funding": FundingRate, "open_interest": OpenInterest, "liquidation": Liquidation}


def decode_derivs(raw: bytes) -> DerivsMessage:
    """An entry of ``streams.part_derivs`` (or its channel): funding, open interest or a liquidation, by its kind."""
    msg = unpack(raw)
    cls = _DERIVS.get(msg.get("k") if isinstance(msg, dict) else None)  # type: ignore[arg-type]
    if cls is None:
        kind = msg.get("k") if isinstance(msg, dict) else msg
        raise DecodeError(f"expected funding, open interest or a liquidation, got {kind!r}")
    return cls.from_msg(msg)
