"""Book metrics (the operands of book rules), each defined exactly. Pure functions of one book state.

Input: an ``L2Book`` (any exact view of a book loaded into one), sizes in base units, prices in quote units per base
unit. Bands are found by bisection in the sorted prices, depths are running totals: the cost grows with the levels
in the widest band, not with the book. Every figure is a ``Decimal``: sums, products and the mid are exact
(computed in the ``EXACT`` context, which raises rather than round); the other quotients are rounded to 28
significant digits (``QUOTIENTS``). Both contexts are fixed here, so a caller's decimal context cannot change a
result.

Definitions (b = best bid price, a = best ask price, Qb / Qa = the sizes resting there)::

    mid          = (b + a) / 2
    spread       = a - b                                  (quote units)
    spread_bps   = (a - b) / mid * 10_000
    microprice   = (b * Qa + a * Qb) / (Qb + Qa)          (the mid weighted towards the thinner side)

For a band of X basis points around the mid, the bid levels in the band are those priced at or above
``mid * (1 - X/10_000)``, the ask levels those at or below ``mid * (1 + X/10_000)`` (bounds inclusive); a band
narrower than half the spread holds no level (its depths are 0, its walls, ratios and imbalance None)::

    depth_base  (side, X) = sum of size          over the side's levels in the band
    depth_quote (side, X) = sum of price * size  over the side's levels in the band
    imbalance   (X)       = (depth_base(bid, X) - depth_base(ask, X)) / (depth_base(bid, X) + depth_base(ask, X))
                            in [-1, 1]; > 0 when more size is bid than offered; None when both depths are 0
    wall        (side, X) = the side's level in the band with the largest size; on a tie, the one nearest the mid
    wall_ratio  (side, X) = size of that wall / median size of the side's levels in the band (the median of an even
                            count is the mean of the two middle sizes)

``complete`` says whether the band lies inside the part of the book that is known level by level: a local book
built from a depth-limited snapshot (Binance: 1,000 levels, ~30 bps of BTCUSDT) knows nothing below its lowest
snapshot bid or above its highest snapshot ask except levels that changed since; pass those as ``bid_floor`` /
``ask_ceiling``. A band past them gives a depth that is only a lower bound: ``complete`` is then False.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from itertools import accumulate
from operator import mul
from typing import NamedTuple

from shared.orderbook.book import BookSide, L2Book, Level

QUOTIENTS = Context(prec=28)
EXACT = Context(prec=100, traps=[Inexact, InvalidOperation, Overflow])
BPS = Decimal(10_000)
_TWO = Decimal(2)


class Band(NamedTuple):
    """The depth figures of one band of ``bps`` basis points around the mid (see the module docstring)."""

    bps: Decimal
    bid_base: Decimal
    ask_base: Decimal
    bid_quote: Decimal
    ask_quote: Decimal
    imbalance: Decimal | None
    bid_levels: int
    ask_levels: int
    bid_wall: Level | None
    ask_wall: Level | None
    bid_wall_ratio: Decimal | None
    ask_wall_ratio: Decimal | None
    complete: bool


class BookMetrics(NamedTuple):
    best_bid: Level
    best_ask: Level
    mid: Decimal
    spread: Decimal
    spread_bps: Decimal
    microprice: Decimal
    bands: tuple[Band, ...]


def median(values: Sequence[Decimal]) -> Decimal:
    """Median of a non-empty sequence; the mean of the two middle values for an even count."""
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else QUOTIENTS.divide(s[mid - 1] + s[mid], _TWO)


def band_limit(mid: Decimal, bps: Decimal, is_bid: bool) -> Decimal:
    """The farthest price of a band, exactly: ``mid * (1 - bps/10_000)`` for bids, ``mid * (1 + bps/10_000)`` for
    asks."""
    return EXACT.scaleb(EXACT.multiply(mid, BPS - bps if is_bid else BPS + bps), -4)


def book_metrics(book: L2Book, bands_bps: Iterable[Decimal | int] = (10, 25, 50),
                 bid_floor: Decimal | None = None, ask_ceiling: Decimal | None = None) -> BookMetrics | None:
    """Every metric of the module docstring for one book state; None when a side is empty (no mid)."""
    bands = sorted(Decimal(x) for x in bands_bps)
    if not bands or any(not 0 < x < BPS for x in bands):
        raise ValueError(f"book metrics: band widths must be in (0, 10000) bps, got {bands}")
    best_bid, best_ask = book.best_bid(), book.best_ask()
    if best_bid is None or best_ask is None:
        return None
    with localcontext(EXACT):
        return _metrics(book, best_bid, best_ask, bands, bid_floor, ask_ceiling)


class _Side(NamedTuple):
    """One side's widest band, best first, with running totals (narrower bands are prefixes of it)."""

    prices: list[Decimal]
    sizes: list[Decimal]
    cum_base: list[Decimal]
    cum_quote: list[Decimal]


def _side(side: BookSide, limit: Decimal) -> _Side:
    prices, sizes = side.band(limit)
    return _Side(prices, sizes, list(accumulate(sizes)), list(accumulate(map(mul, prices, sizes))))


def _wall(side: _Side, n: int) -> tuple[Level | None, Decimal | None]:
    """The largest of the first ``n`` levels (the first, i.e. nearest the mid, on a tie) and its size / the median."""
    if not n:
        return None, None
    sizes = side.sizes
    i = max(range(n), key=sizes.__getitem__)
    return Level(side.prices[i], sizes[i]), QUOTIENTS.divide(sizes[i], median(sizes[:n]))


def _metrics(book: L2Book, best_bid: Level, best_ask: Level, bands_bps: list[Decimal], bid_floor: Decimal | None,
             ask_ceiling: Decimal | None) -> BookMetrics:
    (b, qb), (a, qa) = best_bid, best_ask
    mid = (b + a) / _TWO
    spread = a - b
    div = QUOTIENTS.divide
    bids = _side(book.bids, band_limit(mid, bands_bps[-1], True))
    asks = _side(book.asks, band_limit(mid, bands_bps[-1], False))
    zero = Decimal(0)
    bands: list[Band] = []
    for bps in bands_bps:
        lo, hi = band_limit(mid, bps, True), band_limit(mid, bps, False)
        nb, na = book.bids.within(lo), book.asks.within(hi)
        bid_base, ask_base = bids.cum_base[nb - 1] if nb else zero, asks.cum_base[na - 1] if na else zero
        (bid_wall, bid_ratio), (ask_wall, ask_ratio) = _wall(bids, nb), _wall(asks, na)
        complete = (bid_floor is None or lo >= bid_floor) and (ask_ceiling is None or hi <= ask_ceiling)
        total = bid_base + ask_base
        bands.append(Band(
            bps, bid_base, ask_base, bids.cum_quote[nb - 1] if nb else zero, asks.cum_quote[na - 1] if na else zero,
            div(bid_base - ask_base, total) if total else None, nb, na, bid_wall, ask_wall, bid_ratio, ask_ratio,
            complete))
    return BookMetrics(best_bid, best_ask, mid, spread, div(spread * BPS, mid), div(b * qa + a * qb, qb + qa),
                       tuple(bands))
