"""Order book messages (``streams.part_books``): ``BookSnapshot``, the top of one book with its figures, and the parts
it is made of (``BookBand``, ``BookWallEvent``). Definitions of the figures: ``shared.orderbook.metrics`` and
``shared.orderbook.walls``. Append-only additions to schema version 1 (issue 24), encoded as every ``Message``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import Message


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


class BookSnapshot(Message):
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
