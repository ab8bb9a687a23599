"""Pure state of the local exchange's order books: Binance ``depthUpdate`` events, REST snapshots, a gap mode.

Each symbol has one ``SimDepth``: the exchange's own book (``shared.orderbook.L2Book``) and its update id. Every
diff is applied here first, so ``GET /api/v3/depth`` always answers the state the stream has reached (as Binance's
snapshot can be ahead of what a client has read). A diff dropped by the gap mode is still applied: only its
broadcast is skipped, so a client sees ``U`` jump exactly as after a lost frame.

Two sources of diffs:

- ``recorded_depth``: Binance's real ``depth@100ms`` events from a raw capture (``<recv_ns> <json>`` lines, the
  format of ../shared/data/binance_spot_btcusdt/raw_ws_*.gz), starting from its REST snapshot;
- ``SyntheticDepth``: a seeded book around the last trade price of the simulated market, one diff per 100 ms.

No asyncio, no clock: times are the exchange times the caller passes in.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import OrderedDict
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from shared.errors import ConfigError
from shared.orderbook.book import L2Book, Level, parse_levels


class RecordedDepth(NamedTuple):
    """A capture's snapshot and the raw diff payloads that follow it (``u > lastUpdateId``), in order."""

    last_update_id: int
    bids: list[list[str]]
    asks: list[list[str]]
    diffs: list[dict[str, Any]]


def recorded_depth(paths: Iterable[Path], mid: str = "BTCUSDT") -> RecordedDepth:
    """Read Binance raw websocket captures of one symbol (files that continue one another, the first holding the
    REST snapshot line ``{"lastUpdateId": ...}``). ConfigError naming the file and line if one is malformed."""
    snapshot: dict[str, Any] | None = None
    diffs: list[dict[str, Any]] = []
    stream = f"{mid.lower()}@depth@100ms"
    for path in paths:
        with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    msg = json.loads(line.split(" ", 1)[1])
                except (IndexError, ValueError) as exc:
                    raise ConfigError(f"{path}:{n}: depth capture — expected '<recv_ns> <json>': {exc}") from None
                if "lastUpdateId" in msg and snapshot is None:
                    snapshot = msg
                elif msg.get("stream") == stream:
                    diffs.append(msg["data"])
    if snapshot is None:
        raise ConfigError(f"{', '.join(map(str, paths))}: depth capture — no REST snapshot line "
                          f"(a line holding 'lastUpdateId')")
    last = snapshot["lastUpdateId"]
    return RecordedDepth(last, snapshot["bids"], snapshot["asks"], [d for d in diffs if d["u"] > last])


class SimDepth:
    """One symbol's book at the exchange, with a bounded history of its best levels by update id."""

    def __init__(self, mid: str, history: int = 100_000) -> None:
        self.mid = mid
        self.book = L2Book()
        self.update_id = 0
        self.drop_next = 0   # gap mode: diffs still to withhold from the stream
        self.dropped = 0
        self._history: OrderedDict[int, tuple[Level | None, Level | None]] = OrderedDict()
        self._history_len = history

    def load(self, last_update_id: int, bids: list[tuple[Decimal, Decimal]],
             asks: list[tuple[Decimal, Decimal]]) -> None:
        self.book.load(bids, asks, last_update_id)
        self.update_id = last_update_id
        self._remember()

    def apply(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one ``depthUpdate`` payload (``U <= update_id + 1 <= u``: it follows on, or straddles the snapshot a
        recording starts from); returns it to broadcast, or None when the gap mode withholds it."""
        if not event["U"] <= self.update_id + 1 <= event["u"]:
            raise ValueError(f"{self.mid}: diff U={event['U']} does not follow update {self.update_id}")
        self.book.apply(parse_levels(event["b"]), parse_levels(event["a"]))
        self.update_id = self.book.update_id = event["u"]
        self.book.ts = event.get("E")
        self._remember()
        if self.drop_next > 0:
            self.drop_next -= 1
            self.dropped += 1
            return None
        return event

    def _remember(self) -> None:
        self._history[self.update_id] = (self.book.best_bid(), self.book.best_ask())
        if len(self._history) > self._history_len:
            self._history.popitem(last=False)

    def best_at(self, update_id: int) -> tuple[Level | None, Level | None] | None:
        """(best bid, best ask) of the book right after update ``update_id`` (None if not in the history)."""
        return self._history.get(update_id)

    def snapshot(self, limit: int) -> dict[str, Any]:
        """``GET /api/v3/depth`` payload: ``{"lastUpdateId", "bids": [[p, q], ...], "asks": ...}``, best first."""
        bids, asks = self.book.top(limit)
        return {"lastUpdateId": self.update_id,
                "bids": [[format(p, "f"), format(q, "f")] for p, q in bids],
                "asks": [[format(p, "f"), format(q, "f")] for p, q in asks]}


def depth_event(mid: str, first_id: int, final_id: int, event_ms: int, bids: list[tuple[Decimal, Decimal]],
                asks: list[tuple[Decimal, Decimal]]) -> dict[str, Any]:
    """A spot ``depthUpdate`` payload, as Binance writes it."""
    return {"e": "depthUpdate", "E": event_ms, "s": mid, "U": first_id, "u": final_id,
            "b": [[format(p, "f"), format(q, "f")] for p, q in bids],
            "a": [[format(p, "f"), format(q, "f")] for p, q in asks]}


class SyntheticDepth:
    """A seeded book around a reference price: ``levels`` levels a side, one tick apart from one tick off the price,
    sizes drawn log-normally around ``typical`` lots, with an occasional larger level (a wall). ``diff`` gives the
    changes from the previous state as a ``depthUpdate`` (levels that left: size 0)."""

    def __init__(self, mid: str, tick: Decimal, lot: Decimal, typical: Decimal, seed: int, levels: int = 50) -> None:
        self.mid, self.tick, self.lot, self.typical, self.levels = mid, tick, lot, typical, levels
        self.rng = random.Random(f"{seed}:{mid}:depth")
        self._sizes: dict[tuple[bool, Decimal], Decimal] = {}

    def _size(self) -> Decimal:
        factor = self.rng.lognormvariate(0, 1) * (15 if self.rng.random() < 0.02 else 1)
        lots = max(1, int(float(self.typical / self.lot) * factor))
        return self.lot * lots

    def diff(self, price: Decimal, first_id: int, event_ms: int) -> dict[str, Any]:
        """The next state around ``price``: about a tenth of the levels get a new size, levels that are no longer
        in range are removed. Update ids run ``first_id`` .. ``first_id + changes - 1``."""
        target: dict[tuple[bool, Decimal], Decimal] = {}
        for is_bid in (True, False):
            step = -self.tick if is_bid else self.tick
            for k in range(1, self.levels + 1):
                p = price + step * k
                if p <= 0:
                    break
                old = self._sizes.get((is_bid, p))
                target[(is_bid, p)] = old if old is not None and self.rng.random() > 0.1 else self._size()
        changes = [(key, size) for key, size in target.items() if self._sizes.get(key) != size]
        changes += [(key, Decimal(0)) for key in self._sizes.keys() - target.keys()]
        self._sizes = target
        bids = sorted(((p, s) for (b, p), s in changes if b), reverse=True)
        asks = sorted((p, s) for (b, p), s in changes if not b)
        return depth_event(self.mid, first_id, first_id + max(len(changes), 1) - 1, event_ms, bids, asks)

