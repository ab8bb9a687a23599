"""Binance's diff-depth stream kept in sequence: a REST snapshot plus ``depthUpdate`` events, by update ids.

A diff event (spot ``<sym>@depth@100ms``)::

    {"e": "depthUpdate", "E": 1723161255408, "s": "BTCUSDT", "U": 50093239208, "u": 50093239224,
     "b": [["61837.63000000", "3.78826000"], ["61820.99000000", "0.00000000"]],
     "a": [["61837.64000000", "1.60520000"]]}

USD-M futures events also carry ``"pu"``, the ``u`` of the previous event. The snapshot is
``GET /api/v3/depth`` → ``{"lastUpdateId": 50093239218, "bids": [[p, q], ...], "asks": [...]}``.

The rules (Binance's "how to manage a local order book correctly"):

1. buffer events until the snapshot arrives;
2. drop every event with ``u <= lastUpdateId`` (futures: ``u < lastUpdateId``);
3. the first event applied must straddle the snapshot: spot ``U <= lastUpdateId + 1 <= u``, futures
   ``U <= lastUpdateId <= u``; if it starts later, events are missing between the snapshot and the stream;
4. then every event must follow on: spot ``U == previous u + 1``, futures ``pu == previous u``.

A break of 3 or 4 raises ``SequenceGapError``: the book is then unusable (``book`` raises ``BookNotSyncedError``)
until the caller fetches a new snapshot. The event that revealed the gap is kept, since it may straddle that new
snapshot. Nothing is ever applied out of sequence, so a book this module hands out is never silently wrong.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple

from shared.errors import SentinelError
from shared.orderbook.book import L2Book, parse_levels


class BookSyncError(SentinelError):
    """Base of the sequencing errors of a local order book."""


class SequenceGapError(BookSyncError):
    """An update is missing: the book must be rebuilt from a new snapshot. ``expected``/``got`` are update ids."""

    def __init__(self, message: str, expected: int, got: int) -> None:
        super().__init__(message)
        self.expected, self.got = expected, got


class BookNotSyncedError(BookSyncError):
    """The book was asked for while no snapshot is in force (before the first one, or after a gap)."""


class DiffResult(Enum):
    APPLIED = "applied"      # in sequence, the book moved on to its ``u``
    STALE = "stale"          # already contained in the snapshot (u <= lastUpdateId): dropped, as the rules say
    BUFFERED = "buffered"    # no snapshot in force yet: kept until one arrives


class DepthDiff(NamedTuple):
    """One ``depthUpdate``, parsed: first and final update id, previous final id (futures), time, levels."""

    first_id: int
    final_id: int
    prev_final_id: int | None
    ts: int | None
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]

    @property
    def levels(self) -> int:
        return len(self.bids) + len(self.asks)


def parse_diff(event: dict[str, Any]) -> DepthDiff:
    """A raw ``depthUpdate`` payload (the ``data`` of a combined-stream frame) → DepthDiff."""
    return DepthDiff(int(event["U"]), int(event["u"]), int(event["pu"]) if "pu" in event else None,
                     event.get("E"), parse_levels(event.get("b") or ()), parse_levels(event.get("a") or ()))


class DiffDepthSync:
    """One instrument's book from a snapshot plus diffs, by Binance's rules (spot by default, ``futures=True`` for
    USD-M/COIN-M, where events carry ``pu``).

    ``snapshot(...)`` whenever the caller has one (first, and after every ``SequenceGapError``); ``diff(...)`` for
    each event in arrival order. ``book`` is the current book; ``synced`` tells whether a snapshot is in force.
    """

    def __init__(self, futures: bool = False, max_buffer: int = 10_000) -> None:
        self.futures = futures
        self._book = L2Book()
        self._synced = False
        self._fresh = False  # a snapshot is in force but no event has been applied on it yet
        self._buffer: deque[DepthDiff] = deque(maxlen=max_buffer)
        self.gaps = 0
        self.levels_applied = 0

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def book(self) -> L2Book:
        if not self._synced:
            raise BookNotSyncedError("no snapshot in force: fetch one and call snapshot()")
        return self._book

    @property
    def update_id(self) -> int | None:
        return self._book.update_id if self._synced else None

    def snapshot(self, last_update_id: int, bids: list[tuple[Decimal, Decimal]],
                 asks: list[tuple[Decimal, Decimal]], ts: int | None = None) -> int:
        """Load a REST snapshot, then replay the buffered events on it; returns how many were applied.

        Raises SequenceGapError if the buffered events start after the snapshot (the caller fetches another one).
        """
        self._book.load(bids, asks, last_update_id, ts)
        self._synced = True
        self._fresh = True
        pending = list(self._buffer)
        self._buffer.clear()
        applied = 0
        for n, event in enumerate(pending):
            try:
                if self.diff_parsed(event) is DiffResult.APPLIED:
                    applied += 1
            except SequenceGapError:
                self._buffer.extend(pending[n + 1:])  # after the offending event, which diff_parsed kept
                raise
        return applied

    def diff(self, event: dict[str, Any]) -> DiffResult:
        """Apply one raw ``depthUpdate`` payload (see ``diff_parsed``)."""
        return self.diff_parsed(parse_diff(event))

    def diff_parsed(self, event: DepthDiff) -> DiffResult:
        """Apply one event if it is next in sequence; buffer it before a snapshot; drop it if the snapshot already
        holds it. Raises SequenceGapError (and un-syncs the book) if events are missing before it."""
        if not self._synced:
            self._buffer.append(event)
            return DiffResult.BUFFERED
        last: int = self._book.update_id  # type: ignore[assignment]  # every snapshot sets it
        futures = self.futures
        if event.final_id < last or (event.final_id == last and not futures):
            return DiffResult.STALE
        if self._fresh:
            # the first event must straddle the snapshot (spot: lastUpdateId + 1; futures: lastUpdateId)
            target = last if futures else last + 1
            ok = event.first_id <= target <= event.final_id
        elif futures:
            ok = event.prev_final_id == last
        else:
            ok = event.first_id == last + 1
        if not ok:
            self._lose_sync(event, last)
        book = self._book
        self.levels_applied += book.apply(event.bids, event.asks)
        book.update_id = event.final_id
        if event.ts is not None:
            book.ts = event.ts
        self._fresh = False
        return DiffResult.APPLIED

    def _lose_sync(self, event: DepthDiff, last: int) -> None:
        self._synced = False
        self._fresh = False
        self.gaps += 1
        self._buffer.clear()
        self._buffer.append(event)
        if self.futures:
            raise SequenceGapError(f"depth gap: event pu={event.prev_final_id} U={event.first_id} u={event.final_id}"
                                   f" does not follow update {last}", last, event.first_id)
        raise SequenceGapError(f"depth gap: expected an event starting at update {last + 1}, got U={event.first_id} "
                               f"u={event.final_id}", last + 1, event.first_id)
