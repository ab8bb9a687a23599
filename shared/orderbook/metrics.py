"""Book metrics (the operands of book rules), each defined exactly. Pure functions of one book state.

Input: ``bids`` and ``asks`` as (price, size) pairs best first (``L2Book.top()``, or any exact view), sizes in base
units, prices in quote units per base unit. Every figure is a ``Decimal``: sums, products and the mid are exact
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

import itertools
from collections.abc import Iterable, Iterator, Sequence
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from typing import NamedTuple

from shared.orderbook.book import Level

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


def levels_in_band(levels: Iterable[tuple[Decimal, Decimal]], limit: Decimal, is_bid: bool) -> list[Level]:
    """The leading levels (best first) priced at or above ``limit`` (bids) or at or below it (asks)."""
    out: list[Level] = []
    for price, size in levels:  # an iterator is left just past the first level outside the band
        if (price < limit) if is_bid else (price > limit):
            break
        out.append(Level(price, size))
    return out


def _wall(levels: list[Level]) -> tuple[Level | None, Decimal | None]:
    """The largest level (max() keeps the first, i.e. the nearest the mid, on a tie) and its size / the median."""
    if not levels:
        return None, None
    wall = max(levels, key=lambda lv: lv.size)
    return wall, QUOTIENTS.divide(wall.size, median([lv.size for lv in levels]))


def band_limit(mid: Decimal, bps: Decimal, is_bid: bool) -> Decimal:
    """The farthest price of a band, exactly: ``mid * (1 - bps/10_000)`` for bids, ``mid * (1 + bps/10_000)`` for
    asks."""
    return EXACT.scaleb(EXACT.multiply(mid, BPS - bps if is_bid else BPS + bps), -4)


def book_metrics(bids: Iterable[tuple[Decimal, Decimal]], asks: Iterable[tuple[Decimal, Decimal]],
                 bands_bps: Iterable[Decimal | int] = (10, 25, 50), bid_floor: Decimal | None = None,
                 ask_ceiling: Decimal | None = None) -> BookMetrics | None:
    """Every metric of the module docstring for one book state; None when a side is empty (no mid).

    ``bids``/``asks`` best first; read lazily up to the widest band's edge (an ``L2Book`` side can be passed as is).
    """
    bands = sorted(Decimal(x) for x in bands_bps)
    if not bands or any(not 0 < x < BPS for x in bands):
        raise ValueError(f"book metrics: band widths must be in (0, 10000) bps, got {bands}")
    bid_iter, ask_iter = iter(bids), iter(asks)
    best_bid, best_ask = next(bid_iter, None), next(ask_iter, None)
    if best_bid is None or best_ask is None:
        return None
    with localcontext(EXACT):
        return _metrics(Level(*best_bid), Level(*best_ask), bid_iter, ask_iter, bands, bid_floor, ask_ceiling)


def _prefix_in_band(levels: list[Level], limit: Decimal, is_bid: bool) -> list[Level]:
    n = 0
    for lv in levels:
        if (lv.price < limit) if is_bid else (lv.price > limit):
            break
        n += 1
    return levels[:n]


def _metrics(best_bid: Level, best_ask: Level, bid_iter: Iterator[tuple[Decimal, Decimal]],
             ask_iter: Iterator[tuple[Decimal, Decimal]], bands_bps: list[Decimal], bid_floor: Decimal | None,
             ask_ceiling: Decimal | None) -> BookMetrics:
    (b, qb), (a, qa) = best_bid, best_ask
    mid = (b + a) / _TWO
    spread = a - b
    div = QUOTIENTS.divide
    # the widest band's levels are read once; narrower bands are prefixes of them
    widest_b = levels_in_band(itertools.chain([best_bid], bid_iter), band_limit(mid, bands_bps[-1], True), True)
    widest_a = levels_in_band(itertools.chain([best_ask], ask_iter), band_limit(mid, bands_bps[-1], False), False)
    bands: list[Band] = []
    for bps in bands_bps:
        lo, hi = band_limit(mid, bps, True), band_limit(mid, bps, False)
        bl, al = _prefix_in_band(widest_b, lo, True), _prefix_in_band(widest_a, hi, False)
        bid_base = sum((lv.size for lv in bl), Decimal(0))
        ask_base = sum((lv.size for lv in al), Decimal(0))
        (bid_wall, bid_ratio), (ask_wall, ask_ratio) = _wall(bl), _wall(al)
        complete = (bid_floor is None or lo >= bid_floor) and (ask_ceiling is None or hi <= ask_ceiling)
        total = bid_base + ask_base
        bands.append(Band(
            bps, bid_base, ask_base,
            sum((lv.price * lv.size for lv in bl), Decimal(0)), sum((lv.price * lv.size for lv in al), Decimal(0)),
            div(bid_base - ask_base, total) if total else None, len(bl), len(al), bid_wall, ask_wall,
            bid_ratio, ask_ratio, complete))
    return BookMetrics(best_bid, best_ask, mid, spread, div(spread * BPS, mid), div(b * qa + a * qb, qb + qa),
                       tuple(bands))
