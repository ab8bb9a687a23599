"""A local L2 order book with exact prices and sizes: price → size per side, plus sorted views.

Pure (no asyncio, no Redis, no clock). Prices and sizes are ``Decimal`` parsed from the exchange's strings, so they
compare and sum exactly, and a price keeps the exponent it was written with (``format(p, 'f')`` gives back
``"61837.63000000"``: what the exchanges' checksums are computed over).

Each side is a dict (price → size: O(1) updates) and a sorted list of its prices (bisect: O(log n) to find, a
memmove to insert or remove). A size of zero removes the level, as every L2 feed means it.

Sequencing (which diffs may be applied, and when the book must be rebuilt) is not here: see
``shared.orderbook.binance`` for Binance's update-id rules and ``shared.orderbook.venues`` for the others.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import NamedTuple

ZERO = Decimal(0)


class Level(NamedTuple):
    """One price level: the price and the total size resting there (base units)."""

    price: Decimal
    size: Decimal


class BookSide:
    """One side of a book. ``descending`` for bids (best = highest price), ascending for asks."""

    __slots__ = ("sizes", "_prices", "descending")

    def __init__(self, descending: bool) -> None:
        self.sizes: dict[Decimal, Decimal] = {}
        self._prices: list[Decimal] = []  # always ascending; bids read it from the end
        self.descending = descending

    def __len__(self) -> int:
        return len(self.sizes)

    def set(self, price: Decimal, size: Decimal) -> None:
        """Set the size at ``price``; a zero size removes the level (removing an absent level is a no-op)."""
        sizes = self.sizes
        if size:
            if price not in sizes:
                insort(self._prices, price)
            sizes[price] = size
        elif price in sizes:
            del sizes[price]
            prices = self._prices
            del prices[bisect_left(prices, price)]

    def clear(self) -> None:
        self.sizes.clear()
        self._prices.clear()

    def load(self, levels: Iterable[tuple[Decimal, Decimal]]) -> None:
        """Replace the side with ``levels`` (zero sizes skipped; a repeated price keeps the last size)."""
        self.sizes = {p: s for p, s in levels if s}
        self._prices = sorted(self.sizes)

    def best(self) -> Level | None:
        if not self._prices:
            return None
        price = self._prices[-1] if self.descending else self._prices[0]
        return Level(price, self.sizes[price])

    def prices(self) -> Iterator[Decimal]:
        """Prices best first."""
        return reversed(self._prices) if self.descending else iter(self._prices)

    def __iter__(self) -> Iterator[Level]:
        """Levels best first, lazily (a reader that stops early, e.g. at a band's edge, builds only those)."""
        sizes = self.sizes
        for p in self.prices():
            yield Level(p, sizes[p])

    def within(self, limit: Decimal) -> int:
        """How many levels are priced at or above ``limit`` (bids) or at or below it (asks): O(log n)."""
        prices = self._prices
        return len(prices) - bisect_left(prices, limit) if self.descending else bisect_right(prices, limit)

    def band(self, limit: Decimal) -> tuple[list[Decimal], list[Decimal]]:
        """(prices, sizes) of the levels within ``limit`` (see ``within``), best first."""
        prices = self._prices
        if self.descending:
            chosen = prices[bisect_left(prices, limit):]
            chosen.reverse()
        else:
            chosen = prices[: bisect_right(prices, limit)]
        return chosen, list(map(self.sizes.__getitem__, chosen))

    def levels(self, n: int | None = None) -> list[Level]:
        """The best ``n`` levels (all when None), best first."""
        prices = self._prices
        if n is None or n >= len(prices):
            chosen = prices[::-1] if self.descending else prices
        elif self.descending:
            chosen = prices[: -n - 1: -1] if n > 0 else []
        else:
            chosen = prices[:n]
        sizes = self.sizes
        return [Level(p, sizes[p]) for p in chosen]

    def truncate(self, depth: int) -> None:
        """Keep only the best ``depth`` levels (books of a depth-limited subscription, e.g. Kraken's book-N)."""
        prices = self._prices
        if len(prices) <= depth:
            return
        drop = prices[: len(prices) - depth] if self.descending else prices[depth:]
        for p in drop:
            del self.sizes[p]
        self._prices = prices[len(prices) - depth:] if self.descending else prices[:depth]


class L2Book:
    """Bids and asks of one instrument, with the id and exchange time of the last update applied.

    ``update_id`` is the exchange's sequence number of the state (Binance ``lastUpdateId`` / ``u``), None when the
    venue has none; ``ts`` the exchange time (ms) of the last update, None when unknown.
    """

    __slots__ = ("bids", "asks", "update_id", "ts")

    def __init__(self) -> None:
        self.bids = BookSide(descending=True)
        self.asks = BookSide(descending=False)
        self.update_id: int | None = None
        self.ts: int | None = None

    def side(self, is_bid: bool) -> BookSide:
        return self.bids if is_bid else self.asks

    def load(self, bids: Iterable[tuple[Decimal, Decimal]], asks: Iterable[tuple[Decimal, Decimal]],
             update_id: int | None = None, ts: int | None = None) -> None:
        """Replace the whole book (a snapshot)."""
        self.bids.load(bids)
        self.asks.load(asks)
        self.update_id, self.ts = update_id, ts

    def apply(self, bids: Iterable[tuple[Decimal, Decimal]], asks: Iterable[tuple[Decimal, Decimal]]) -> int:
        """Apply absolute level updates (size 0 = remove); returns how many levels were given."""
        n = 0
        side = self.bids.set
        for price, size in bids:
            side(price, size)
            n += 1
        side = self.asks.set
        for price, size in asks:
            side(price, size)
            n += 1
        return n

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.update_id = self.ts = None

    def best_bid(self) -> Level | None:
        return self.bids.best()

    def best_ask(self) -> Level | None:
        return self.asks.best()

    def top(self, n: int | None = None) -> tuple[list[Level], list[Level]]:
        """(bids, asks), each the best ``n`` levels best first (all when None)."""
        return self.bids.levels(n), self.asks.levels(n)

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask (a book no exchange would publish)."""
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and bid.price >= ask.price


def parse_levels(rows: Iterable[Sequence[str]]) -> list[tuple[Decimal, Decimal]]:
    """``[["61837.63000000", "3.78826000"], ...]`` (extra fields ignored) → exact (price, size) pairs."""
    return [(Decimal(r[0]), Decimal(r[1])) for r in rows]
