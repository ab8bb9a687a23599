"""The builder's decoder of trades-stream entries: ``shared.schemas.decode_feed`` semantics, built for speed."""

from __future__ import annotations

from decimal import Decimal

from msgpack import unpackb as _unpackb

from shared.errors import DecodeError
from shared.schemas import SCHEMA_VERSION, FeedMessage, TradeBatch, decode_feed, feed_from_msg

_INF = Decimal("Infinity")


class TradeColumns:
    """The trades of one entry as columns: iterates (and indexes) like a list of ``(id, ts, price, amount, side)``.

    Kept as columns because iterating ``zip`` over them allocates no tuple per trade (CPython reuses zip's result
    tuple when the loop unpacks it), so a batch of 100,000 trades leaves nothing for the garbage collector to scan.
    """

    __slots__ = ("ids", "tss", "prices", "amounts", "sides")

    def __init__(self, ids: tuple, tss: tuple, prices: list[Decimal], amounts: list[Decimal], sides: tuple) -> None:
        self.ids, self.tss, self.prices, self.amounts, self.sides = ids, tss, prices, amounts, sides

    def __len__(self) -> int:
        return len(self.tss)

    def __iter__(self):
        return zip(self.ids, self.tss, self.prices, self.amounts, self.sides)

    def __getitem__(self, i: int) -> tuple:
        return self.ids[i], self.tss[i], self.prices[i], self.amounts[i], self.sides[i]


def decode_feed_fast(raw: bytes) -> FeedMessage:
    """``shared.schemas.decode_feed`` for the hot path: trades rows become plain tuples, converted column-wise.

    Same result for valid input (rows ``(id, ts, Decimal price, Decimal amount, side)``, side 1/0); anything unusual
    is handed to ``decode_feed`` itself, so its errors read the same. Stricter in one way: a price that is not a
    positive finite number, or an amount that is negative or not finite (``NaN``, ``Infinity``), is a DecodeError — it
    would poison every candle it touched — so the entry goes to the dead-letter stream instead.
    """
    try:
        msg = _unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - the reference decoder reports the problem precisely
        return _checked_reference(decode_feed(raw))
    return decode_feed_msg(msg)


def decode_feed_msg(msg: object) -> FeedMessage:
    """``decode_feed_fast`` of an already unpacked map (for a reader that looked at ``k`` first): the same result,
    the same entries refused. The alert engine decodes trades with it, so the bars it closes from them (``fastclose``)
    are built from exactly the entries candle_builder builds from."""
    fast = _fast(msg)
    if fast is not None:
        return fast  # checked on the way
    return _checked_reference(feed_from_msg(msg))


def _checked_reference(msg: FeedMessage) -> FeedMessage:
    if type(msg) is TradeBatch and msg.trades:
        trades = msg.trades
        if not _values_ok([t[2] for t in trades], [t[3] for t in trades]):
            bad = next(t for t in trades if not _values_ok([t[2]], [t[3]]))
            raise DecodeError(f"trade {bad[0]!r}: price must be positive and finite, amount >= 0 and finite, "
                              f"got price {bad[2]} amount {bad[3]}")
    return msg


def _values_ok(prices: list[Decimal], amounts: list[Decimal]) -> bool:
    try:  # comparisons with NaN raise InvalidOperation (an ArithmeticError); Infinity fails the bounds
        return min(prices) > 0 and max(prices) < _INF and min(amounts) >= 0 and max(amounts) < _INF
    except ArithmeticError:
        return False


# Decimal of each price / amount text already seen and checked (one entry per trade makes Decimal() and its bounds
# checks a third of the decode): real markets repeat a few thousand prices and amounts. Bounded: cleared when full.
_PRICES: dict[str, Decimal] = {}
_AMOUNTS: dict[str, Decimal] = {}
_CACHE_MAX = 50_000


def _checked(cache: dict[str, Decimal], text: object, positive: bool) -> Decimal | None:
    """Decimal(text) when it is a valid price (``positive``) or amount, remembered; None otherwise."""
    if type(text) is not str:
        return None  # numbers are left to the reference decoder
    try:
        value = Decimal(text)
        ok = (0 < value < _INF) if positive else (0 <= value < _INF)
    except ArithmeticError:  # NaN compared
        return None
    if not ok:
        return None
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[text] = value
    return value


def _fast(msg: object) -> TradeBatch | None:
    """The trades of a well-formed entry, or None to let the reference decoder handle (and report) it."""
    try:
        if type(msg) is dict and msg.get("k") == "trades" and msg.get("v") == SCHEMA_VERSION:
            exchange, symbol, rows = msg["x"], msg["s"], msg["t"]
            if type(exchange) is str and type(symbol) is str and exchange and symbol and type(rows) is list:
                if len(rows) < 8:  # small batches: row by row is cheaper than building columns
                    trades = []
                    prices, amounts = _PRICES, _AMOUNTS
                    for tid, ts, price, amount, side in rows:
                        p = prices.get(price)
                        if p is None:
                            p = _checked(prices, price, True)
                        a = amounts.get(amount)
                        if a is None:
                            a = _checked(amounts, amount, False)
                        if type(ts) is not int or not (side == 0 or side == 1) or p is None or a is None:
                            return None
                        trades.append((tid, ts, p, a, side))
                    return TradeBatch(exchange, symbol, trades)
                if set(map(len, rows)) == {5}:
                    ids, tss, prices, amounts, sides = zip(*rows)
                    if set(map(type, tss)) == {int} and set(sides) <= {0, 1}:
                        dec_prices, dec_amounts = list(map(Decimal, prices)), list(map(Decimal, amounts))
                        if _values_ok(dec_prices, dec_amounts):
                            return TradeBatch(exchange, symbol, TradeColumns(  # type: ignore[arg-type]
                                ids, tss, dec_prices, dec_amounts, sides))
    except Exception:  # noqa: BLE001 - the reference decoder reports the problem precisely
        return None
    return None
