"""Pure side of market_feed's order books: one pair's exact view, its metrics and wall events → BookSnapshot.

No asyncio, no Redis, no clock. The adapter (``adapters/ccxt_book.py``) hands in the levels of the book it keeps
(best first, exact ``Decimal``), the trades since the previous snapshot, and tells when the book was rebuilt after
a gap; ``snapshot()`` gives the message to publish.

ccxt keeps book levels as floats. ``exact_levels`` turns them back into the exchange's decimals with
``Decimal(repr(x))``: exact whenever the exchange's number has at most 15 significant digits (two such decimals
never share a float, and ``repr`` gives the shortest decimal that maps to the float); a number with more digits than
that is still converted, and counted in ``ExactDecimals.inexact``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter

from shared.book_messages import BookBand, BookSnapshot, BookWallEvent
from shared.orderbook.book import L2Book
from shared.orderbook.metrics import band_limit, book_metrics
from shared.orderbook.walls import WallTracker
from shared.schemas import Trade

MAX_EXACT_DIGITS = 15


def significant_digits(text: str) -> int:
    """Significant digits of a float's repr (``'61837.63'`` → 7, ``'1e-05'`` → 1); trailing zeros of an integral
    value count, which only errs on the cautious side."""
    mantissa = text.split("e", 1)[0].replace("-", "").replace(".", "").lstrip("0")
    return len(mantissa)


class ExactDecimals(dict):
    """float → the exchange's decimal (``Decimal(repr(x))``), remembered: a book's prices and sizes recur from one
    snapshot to the next, and a hit is a C-level dict lookup (``map(cache.__getitem__, floats)``). ``inexact``
    counts the floats converted with more than 15 significant digits. Cleared when it holds ``max_size``: an entry
    holds ~180 bytes (bench), so 10,000 (~1.8 MB a pair) keeps two views of a dense book (BTCUSDT: ~4,000 distinct
    prices and sizes within 50 bps); 100,000 was ~18 MB a pair, 3.6 GB for 200 pairs once full."""

    def __init__(self, max_size: int = 10_000) -> None:
        super().__init__()
        self.max_size = max_size
        self.inexact = 0

    def __missing__(self, x: float) -> Decimal:
        text = repr(x)
        if significant_digits(text) > MAX_EXACT_DIGITS:
            self.inexact += 1
        if len(self) >= self.max_size:
            self.clear()
        value = self[x] = Decimal(text)
        return value


def exact_levels(rows: Sequence[Sequence[float]], limit: float | None, is_bid: bool, min_count: int,
                 decimals: ExactDecimals) -> list[tuple[Decimal, Decimal]]:
    """The leading float levels (best first) as exact (price, size): at least ``min_count`` of them, every one priced
    within ``limit`` (at or above it for bids, at or below for asks), and one more (so a level on the limit is read
    even if rounding the limit to a float put it a hair outside)."""
    if limit is None:
        n = len(rows)
    else:  # k: the first level beyond the limit (rows are best first: bids descending, asks ascending)
        k = bisect_right(rows, -limit, key=_neg_price) if is_bid else bisect_right(rows, limit, key=_price)
        n = min(len(rows), max(min_count, k + 1))
    head = rows[:n]
    get = decimals.__getitem__
    return list(zip(map(get, map(itemgetter(0), head)), map(get, map(itemgetter(1), head)), strict=True))


_price = itemgetter(0)


def _neg_price(row: Sequence[float]) -> float:
    return -row[0]


@dataclass
class BookView:
    """What the adapter read from its book: levels best first (covering the widest band), the update id and
    exchange time they describe, and the edges of the part of the book known level by level (None: unbounded)."""

    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    update_id: int | None
    ts: int
    bid_floor: Decimal | None = None
    ask_ceiling: Decimal | None = None


@dataclass
class PairBook:
    """One pair's book state between snapshots."""

    exchange: str
    symbol: str
    top_n: int = 20
    bands_bps: tuple[Decimal, ...] = (Decimal(10), Decimal(25), Decimal(50))
    walls: WallTracker | None = None
    resyncs: int = 0
    published: int = 0
    decimals: ExactDecimals = field(default_factory=ExactDecimals)
    _trades: list[Trade] = field(default_factory=list)
    _book: L2Book = field(default_factory=L2Book)
    _last_update: int | None = None

    @property
    def widest_bps(self) -> Decimal:
        """The widest band any figure needs (book bands and the wall band): how far from the mid to read levels."""
        wall = self.walls.bps if self.walls is not None else Decimal(0)
        return max(max(self.bands_bps), wall)

    def read_limit(self, bid: float, ask: float, is_bid: bool) -> float:
        """The price up to which the adapter must convert levels (the widest band's edge; see ``exact_levels``)."""
        mid = (self.decimals[bid] + self.decimals[ask]) / 2
        return float(band_limit(mid, self.widest_bps, is_bid))

    def resynced(self) -> None:
        """The book was rebuilt from a new snapshot after a gap: wall events across the gap are unknown."""
        self.resyncs += 1
        if self.walls is not None:
            self.walls.reset()

    def add_trades(self, trades: Iterable[Trade]) -> None:
        if self.walls is not None:
            self._trades.extend(trades)

    def changed(self, update_id: int | None) -> bool:
        return update_id is None or update_id != self._last_update

    def snapshot(self, view: BookView) -> BookSnapshot:
        """The message for ``view``: top ``top_n`` levels, metrics, wall events since the previous snapshot."""
        book = self._book
        book.load(view.bids, view.asks, view.update_id, view.ts)
        metrics = book_metrics(book, self.bands_bps, view.bid_floor, view.ask_ceiling)
        events = []
        if self.walls is not None:
            trades, self._trades = self._trades, []
            events = [BookWallEvent(kind=e.kind, side=e.side, price=e.price, size=e.size, remaining=e.remaining,
                                    traded=e.traded, ts=e.ts)
                      for e in self.walls.update(book, trades, bid_floor=view.bid_floor,
                                                 ask_ceiling=view.ask_ceiling)]
        self._last_update = view.update_id
        self.published += 1
        bands = [] if metrics is None else [
            BookBand(bps=b.bps, bid_base=b.bid_base, ask_base=b.ask_base, bid_quote=b.bid_quote,
                     ask_quote=b.ask_quote, imbalance=b.imbalance, bid_levels=b.bid_levels, ask_levels=b.ask_levels,
                     bid_wall_price=b.bid_wall.price if b.bid_wall else None,
                     bid_wall_size=b.bid_wall.size if b.bid_wall else None, bid_wall_ratio=b.bid_wall_ratio,
                     ask_wall_price=b.ask_wall.price if b.ask_wall else None,
                     ask_wall_size=b.ask_wall.size if b.ask_wall else None, ask_wall_ratio=b.ask_wall_ratio,
                     complete=b.complete)
            for b in metrics.bands]
        return BookSnapshot(
            exchange=self.exchange, symbol=self.symbol, ts=view.ts, update_id=view.update_id,
            bids=view.bids[: self.top_n], asks=view.asks[: self.top_n],
            mid=metrics.mid if metrics else None, spread=metrics.spread if metrics else None,
            spread_bps=metrics.spread_bps if metrics else None, microprice=metrics.microprice if metrics else None,
            bands=bands, walls=events, resyncs=self.resyncs, bid_floor=view.bid_floor, ask_ceiling=view.ask_ceiling)
