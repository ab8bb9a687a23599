"""The trades stream's msgpack encoding: ``encode_trades``, ``encode_gap`` and ``encode_watermark`` write its three
kinds (``shared.schemas``: ``TradeBatch``, ``GapMarker``, ``Watermark``), ``decode_feed`` reads them back: the one
decoder and validation of trades every reader uses. Also the two column forms of many trades: ``TextColumns`` (a
recording's, text as it is) and ``TradeColumns`` (a large decoded entry's).

The trades stream of one (exchange, symbol) carries the three kinds in exchange order:

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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from itertools import repeat
from operator import is_ as _is
from typing import Any, cast

import msgpack

from shared.errors import DecodeError
from shared.schemas import (SCHEMA_VERSION, FeedMessage, GapMarker, Trade, TradeBatch, TradeText, Watermark,
                            check_header, int_field, str_field)

_packb = msgpack.Packer(use_bin_type=True).pack  # (shared.schemas.pack's packing, without its call per entry)
_unpackb = msgpack.unpackb

#: Trades per entry from which ``encode_trades`` writes columns: one array per field unpacks in about half the time
#: of one array per trade (5 arrays instead of n), and the decoder needs no transposing.
COLUMNS_FROM = 8


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
    """Encode a ``GapMarker`` for the trades stream."""
    return _packb({"v": SCHEMA_VERSION, "k": "gap", "x": gap.exchange, "s": gap.symbol,
                   "from": gap.start, "to": gap.end, "reason": gap.reason})


def encode_watermark(mark: Watermark) -> bytes:
    """Encode a ``Watermark`` for the trades stream."""
    return _packb({"v": SCHEMA_VERSION, "k": "watermark", "x": mark.exchange, "s": mark.symbol,
                   "ts": mark.ts, "final": mark.final})


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


def decode_rows(rows: Any) -> list[Trade] | TradeColumns:
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
    """The trades of an entry written as columns (``c``), every one validated as ``decode_rows`` does."""
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
            return TradeBatch(exchange, symbol, decode_rows(rows))
    kind = check_header(msg, ("trades", "gap", "watermark"))
    exchange = str_field(msg, "x")
    # a watermark with symbol "" speaks for every pair of its exchange in the partition (market_feed writes one per
    # partition, not one per pair); every other message names its pair
    symbol = "" if kind == "watermark" and msg.get("s") == "" else str_field(msg, "s")
    if kind == "trades":
        if "c" in msg:
            return TradeBatch(exchange, symbol, _decode_columns(msg["c"]))
        return TradeBatch(exchange, symbol, decode_rows(msg.get("t")))
    if kind == "gap":
        return GapMarker(exchange, symbol, int_field(msg, "from"), int_field(msg, "to"), str(msg.get("reason", "")))
    return Watermark(exchange, symbol, int_field(msg, "ts"), bool(msg.get("final", False)))
