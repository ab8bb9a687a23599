"""``Bar``: one candle being built or kept for revision, in exact Decimal arithmetic; history rows to bars."""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_ZERO = Decimal(0)


class Bar:
    """A candle being built or kept for revision. ``first_ts``/``last_ts`` order late trades."""

    __slots__ = ("ts", "end", "open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "quote_volume",
                 "trades", "first_id", "last_id", "first_ts", "last_ts", "revision", "incomplete")

    def __init__(self, ts: int, end: int, price: Decimal) -> None:
        self.ts = ts
        self.end = end
        self.open = self.high = self.low = self.close = price
        self.volume = self.buy_volume = self.sell_volume = self.quote_volume = _ZERO
        self.trades = 0
        self.first_id: Any = None
        self.last_id: Any = None
        self.first_ts = self.last_ts = ts
        self.revision = 0
        self.incomplete = False

    def copy(self, ts: int | None = None, end: int | None = None) -> Bar:
        bar = Bar.__new__(Bar)
        for name in Bar.__slots__:
            setattr(bar, name, getattr(self, name))
        if ts is not None and end is not None:
            bar.ts, bar.end = ts, end
        return bar

    def merge(self, other: Bar) -> None:
        """Roll a later bar of a shorter timeframe into this one. Empty (flat) bars add nothing but a flag."""
        self.incomplete = self.incomplete or other.incomplete
        if not other.trades:
            return
        if not self.trades:  # flat so far: the first real trade decides the open
            self.open, self.high, self.low = other.open, other.high, other.low
            self.first_id, self.first_ts = other.first_id, other.first_ts
        else:
            if other.high > self.high:
                self.high = other.high
            if other.low < self.low:
                self.low = other.low
        self.close = other.close
        self.last_id, self.last_ts = other.last_id, other.last_ts
        add = _CTX.add
        self.volume = add(self.volume, other.volume)
        self.buy_volume = add(self.buy_volume, other.buy_volume)
        self.sell_volume = add(self.sell_volume, other.sell_volume)
        self.quote_volume = add(self.quote_volume, other.quote_volume)
        self.trades += other.trades

    def apply_late(self, tid: Any, ts: int, price: Decimal, amount: Decimal, is_buy: bool) -> None:
        """Add a trade that arrived after later ones: it becomes open/close only if its timestamp says so."""
        if not self.trades:
            self.open = self.high = self.low = self.close = price
            self.first_id = self.last_id = tid
            self.first_ts = self.last_ts = ts
        else:
            if price > self.high:
                self.high = price
            if price < self.low:
                self.low = price
            if ts < self.first_ts:
                self.open, self.first_id, self.first_ts = price, tid, ts
            if ts >= self.last_ts:
                self.close, self.last_id, self.last_ts = price, tid, ts
        add = _CTX.add
        self.volume = add(self.volume, amount)
        if is_buy:
            self.buy_volume = add(self.buy_volume, amount)
        else:
            self.sell_volume = add(self.sell_volume, amount)
        self.quote_volume = add(self.quote_volume, _CTX.multiply(price, amount))
        self.trades += 1

    # ---- persistence -----------------------------------------------------------------------------------------------

    def dump(self) -> list[Any]:
        return [self.ts, self.end, str(self.open), str(self.high), str(self.low), str(self.close), str(self.volume),
                str(self.buy_volume), str(self.sell_volume), str(self.quote_volume), self.trades, self.first_id,
                self.last_id, self.first_ts, self.last_ts, self.revision, self.incomplete]

    @classmethod
    def load(cls, row: list[Any]) -> Bar:
        bar = cls.__new__(cls)
        (bar.ts, bar.end, o, h, lo, c, v, bv, sv, qv, bar.trades, bar.first_id, bar.last_id, bar.first_ts,
         bar.last_ts, bar.revision, bar.incomplete) = row
        bar.open, bar.high, bar.low, bar.close = Decimal(o), Decimal(h), Decimal(lo), Decimal(c)
        bar.volume, bar.buy_volume, bar.sell_volume, bar.quote_volume = Decimal(v), Decimal(bv), Decimal(sv), Decimal(qv)
        return bar


def bar_from_history(row: tuple[Any, ...], ms: int) -> Bar:
    """A closed bar from a history row ``(ts, o, h, l, c, volume, buy | None, trades | None, quote | None)``.

    Without the taker split (or trade count, or quote volume) the bar is ``incomplete``: CVD cannot use it.
    """
    ts, o, h, lo, c, v, buy, trades, quote = row
    bar = Bar(ts, ts + ms, o)
    bar.high, bar.low, bar.close, bar.volume = h, lo, c, v
    if buy is None:
        bar.incomplete = True
    else:
        bar.buy_volume, bar.sell_volume = buy, _CTX.subtract(v, buy)
    if quote is None:
        bar.incomplete = True
    else:
        bar.quote_volume = quote
    if trades is None:
        bar.incomplete = True
        trades = 1 if v else 0
    bar.trades = trades
    bar.first_ts, bar.last_ts = ts, ts + ms - 1
    return bar


def rows_rolled_up(candles: list[Any], ms: int) -> list[tuple[Any, ...]]:
    """History rows (``bar_from_history``'s layout) of the timeframe of ``ms`` rolled up from closed candles of a
    smaller one that divides it (``shared.schemas.Candle``, in ts order, one per bucket): the open of the first, the
    high and low of all, the close of the last, volumes and trade counts summed exactly."""
    rows: list[tuple[Any, ...]] = []
    row: list[Any] | None = None
    for c in candles:
        ts = c.ts - c.ts % ms
        if row is None or row[0] != ts:
            if row is not None:
                rows.append(tuple(row))
            row = [ts, c.open, c.high, c.low, c.close, c.volume, c.buy_volume, c.trades, c.quote_volume]
            continue
        row[2], row[3], row[4] = max(row[2], c.high), min(row[3], c.low), c.close
        row[5], row[6] = _CTX.add(row[5], c.volume), _CTX.add(row[6], c.buy_volume)
        row[7], row[8] = row[7] + c.trades, _CTX.add(row[8], c.quote_volume)
    if row is not None:
        rows.append(tuple(row))
    return rows
