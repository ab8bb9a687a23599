"""Wall events: a large resting level appears, is pulled, or is eaten. Pure: book states and trades are passed in.

Definitions, for one side, a band of ``bps`` basis points around the mid and a ratio ``min_ratio``:

- The **walls** of a book state are the side's levels in the band (as in ``shared.orderbook.metrics``) whose size is
  at least ``min_ratio`` × the median size of the side's levels in the band, and at least ``min_size``.
- **appeared**: a price is a wall in this state and was not one in the previous state.
- A wall of the previous state that is not a wall in this one has **ended**. If its level now rests with at least
  the size it had, it ended only because the mid or the median moved: no event. Otherwise it lost
  ``lost = previous size - current size`` (current size 0 if the level is gone), and ``traded`` is the volume of the
  trades since the previous state at its price or through it (a bid wall: taker sells at a price <= the wall's; an
  ask wall: taker buys at a price >= the wall's):

  - **eaten** when ``traded >= eaten_fraction × lost`` (default one half): the market traded it away;
  - **pulled** otherwise: the size was cancelled, not traded.

A wall that ended beyond the part of the book known level by level (``bid_floor`` / ``ask_ceiling`` of a partial
view) raises nothing: whether it still rests there is unknown. "Since the previous state" is the caller's to choose
(on Binance: trades whose trade time is after the previous book's event time and at or before this one's). After a
resync (gap) call ``reset()``: what happened in the gap is unknown, so walls standing then are not reported as
pulled or eaten.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, localcontext
from typing import Literal, NamedTuple

from shared.orderbook.book import BookSide, L2Book
from shared.orderbook.metrics import EXACT, band_limit, median
from shared.schemas import Trade

Side = Literal["bid", "ask"]
EventKind = Literal["appeared", "pulled", "eaten"]


class WallEvent(NamedTuple):
    kind: EventKind
    side: Side
    price: Decimal
    size: Decimal        # the wall's size in the previous state (appeared: its size now)
    remaining: Decimal   # size resting at the price now (0 when the level is gone)
    traded: Decimal      # volume traded at or through the price since the previous state
    ts: int | None       # exchange time of the book state that showed the event (``L2Book.ts``)


def walls(side: BookSide, mid: Decimal, bps: Decimal, min_ratio: Decimal,
          min_size: Decimal = Decimal(0)) -> dict[Decimal, Decimal]:
    """The walls (price → size) of one side of a book state: see the module docstring."""
    with localcontext(EXACT):
        prices, sizes = side.band(band_limit(mid, bps, side.descending))
        if not sizes:
            return {}
        threshold = max(min_ratio * median(sizes), min_size)
        return {p: s for p, s in zip(prices, sizes, strict=True) if s >= threshold}


class WallTracker:
    """Wall events of one instrument, state after state (``update``)."""

    def __init__(self, bps: Decimal | int = 25, min_ratio: Decimal | int = 5, min_size: Decimal | int = 0,
                 eaten_fraction: Decimal | str = "0.5") -> None:
        self.bps, self.min_ratio = Decimal(bps), Decimal(min_ratio)
        self.min_size, self.eaten_fraction = Decimal(min_size), Decimal(eaten_fraction)
        if not (0 < self.bps < 10_000) or self.min_ratio <= 0:
            raise ValueError(f"walls: bps must be in (0, 10000) and min_ratio > 0, got {bps}, {min_ratio}")
        self._walls: dict[bool, dict[Decimal, Decimal]] | None = None

    def reset(self) -> None:
        """Forget the previous state (after a resync): the next update reports only walls that appear."""
        self._walls = None

    def update(self, book: L2Book, trades: Iterable[Trade] = (), bid_floor: Decimal | None = None,
               ask_ceiling: Decimal | None = None) -> list[WallEvent]:
        """Events between the previous state and ``book`` now (``trades``: those since the previous state, any
        order). A book with an empty side has no mid, hence no walls. ``bid_floor`` / ``ask_ceiling``: where the
        book is known level by level (a partial view); an ended wall priced beyond them is unknown, not reported."""
        bid, ask = book.best_bid(), book.best_ask()
        if bid is None or ask is None:
            current: dict[bool, dict[Decimal, Decimal]] = {True: {}, False: {}}
        else:
            with localcontext(EXACT):
                mid = (bid.price + ask.price) / 2
            current = {True: walls(book.bids, mid, self.bps, self.min_ratio, self.min_size),
                       False: walls(book.asks, mid, self.bps, self.min_ratio, self.min_size)}
        previous, self._walls = self._walls, current
        events: list[WallEvent] = []
        trades = list(trades)
        for is_bid in (True, False):
            side: Side = "bid" if is_bid else "ask"
            before = previous[is_bid] if previous is not None else {}
            now = current[is_bid]
            for price in sorted(now.keys() - before.keys(), reverse=is_bid):
                events.append(WallEvent("appeared", side, price, now[price], now[price], Decimal(0), book.ts))
            resting = book.side(is_bid).sizes
            edge = bid_floor if is_bid else ask_ceiling
            for price in sorted(before.keys() - now.keys(), reverse=is_bid):
                if edge is not None and ((price < edge) if is_bid else (price > edge)):
                    continue  # beyond the known part of the book: whether it still rests is unknown
                remaining = resting.get(price, Decimal(0))
                lost = before[price] - remaining
                if lost <= 0:
                    continue  # still resting in full: out of the band, or the median rose
                traded = sum((t.amount for t in trades if t.is_buy != is_bid
                              and (t.price <= price if is_bid else t.price >= price)), Decimal(0))
                kind: EventKind = "eaten" if traded >= self.eaten_fraction * lost else "pulled"
                events.append(WallEvent(kind, side, price, before[price], remaining, traded, book.ts))
        return events
