"""Raw websocket book messages of Kraken, OKX, Coinbase and Bybit applied to local books (one per instrument).

Each ``*Books.apply(msg)`` takes one decoded message (numbers as ``Decimal`` where a venue sends JSON numbers:
``json.loads(raw, parse_float=Decimal)``), updates the instrument's ``L2Book`` and returns an ``Applied`` saying
which instrument changed and, where the venue sends a checksum, that it was verified. A checksum that does not
match raises ``ChecksumMismatchError`` and drops that instrument's book: the caller resubscribes for a new snapshot.
Messages that are not book data (heartbeats, subscription acks, other channels) return None.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

from shared.orderbook.binance import BookSyncError
from shared.orderbook.book import L2Book
from shared.orderbook.checksum import kraken_checksum, okx_checksum


class ChecksumMismatchError(BookSyncError):
    """The local book's checksum differs from the exchange's: the book was dropped and must be resubscribed."""

    def __init__(self, instrument: str, expected: int, got: int) -> None:
        super().__init__(f"{instrument}: book checksum {got} != exchange's {expected}; book dropped")
        self.instrument, self.expected, self.got = instrument, expected, got


class Applied(NamedTuple):
    instrument: str
    checksum_verified: bool  # the exchange sent a checksum and the local book matched it


class _Books:
    def __init__(self) -> None:
        self.books: dict[str, L2Book] = {}
        self.verified = 0

    def _check(self, instrument: str, expected: int, got: int) -> Applied:
        if expected != got:
            self.books.pop(instrument, None)
            raise ChecksumMismatchError(instrument, expected, got)
        self.verified += 1
        return Applied(instrument, True)


def _dec(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(value)


class KrakenBooks(_Books):
    """Kraken websocket v1 ``book-<depth>``. Snapshot, then updates with an optional checksum ``c``::

        [1360, {"as": [["0.000022900", "13355.87450757", "1618678123.481570"], ...], "bs": [...]},
         "book-1000", "SC/EUR"]
        [992, {"b": [["354.15000000", "5.00000000", "1618678133.365913"]], "c": "2583817756"}, "book-1000", "XMR/USD"]
        [1920, {"a": [...]}, {"b": [...], "c": "4105471083"}, "book-1000", "SC/EUR"]

    Kraken keeps the book at the subscribed depth without telling which levels fall off: after every update the
    local book is truncated to ``<depth>`` (as Kraken's guide says), then the top-10 CRC32 is compared.
    """

    def apply(self, msg: Any) -> Applied | None:
        if not isinstance(msg, list) or len(msg) < 4 or not str(msg[-2]).startswith("book-"):
            return None
        pair, depth = msg[-1], int(str(msg[-2]).split("-", 1)[1])
        parts = [p for p in msg[1:-2] if isinstance(p, dict)]
        if any("as" in p or "bs" in p for p in parts):
            fresh = self.books[pair] = L2Book()
            for p in parts:
                fresh.load([(_dec(r[0]), _dec(r[1])) for r in p.get("bs", ())],
                          [(_dec(r[0]), _dec(r[1])) for r in p.get("as", ())])
            return Applied(pair, False)
        book = self.books.get(pair)
        if book is None:
            return None  # an update for a book dropped after a mismatch, before the new snapshot
        checksum: str | None = None
        for p in parts:
            book.apply([(_dec(r[0]), _dec(r[1])) for r in p.get("b", ())],
                       [(_dec(r[0]), _dec(r[1])) for r in p.get("a", ())])
            checksum = p.get("c", checksum)
        book.bids.truncate(depth)
        book.asks.truncate(depth)
        if checksum is None:
            return Applied(pair, False)
        return self._check(pair, int(checksum), kraken_checksum(book))


class OkxBooks(_Books):
    """OKX v5 ``books`` (400 levels): ``action`` snapshot then update; size ``"0"`` removes a level; every message
    carries a signed CRC32 of the top 25 (see ``okx_checksum``)::

        {"arg": {"channel": "books", "instId": "BTC-USD-220527"}, "action": "update",
         "data": [{"asks": [["30249.4", "0", "0", "0"], ["30261", "4", "0", "1"]],
                   "bids": [["30182.6", "452", "0", "1"]], "ts": "1652459225464", "checksum": -914047754}]}
    """

    def apply(self, msg: Any) -> Applied | None:
        arg = msg.get("arg") if isinstance(msg, dict) else None
        if not arg or not str(arg.get("channel", "")).startswith("books") or "data" not in msg:
            return None
        inst = arg["instId"]
        data = msg["data"][0]
        bids = [(_dec(r[0]), _dec(r[1])) for r in data.get("bids", ())]
        asks = [(_dec(r[0]), _dec(r[1])) for r in data.get("asks", ())]
        ts = int(data["ts"]) if "ts" in data else None
        if msg.get("action") == "snapshot":
            book = self.books[inst] = L2Book()
            book.load(bids, asks, ts=ts)
        else:
            book = self.books.get(inst)  # type: ignore[assignment]
            if book is None:
                return None
            book.apply(bids, asks)
            book.ts = ts
        if "checksum" not in data:
            return Applied(inst, False)
        return self._check(inst, int(data["checksum"]), okx_checksum(book))


class CoinbaseBooks(_Books):
    """Coinbase Exchange ``level2`` (no checksum, no sequence numbers)::

        {"type": "snapshot", "product_id": "BAND-GBP", "bids": [["14.7550", "1.2"]], "asks": [["14.8024", "12.77"]]}
        {"type": "l2update", "product_id": "SKL-BTC", "changes": [["sell", "0.00001306", "660.5"]],
         "time": "2021-04-17T16:43:37.075687Z"}
    """

    def apply(self, msg: Any) -> Applied | None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "snapshot":
            product = msg["product_id"]
            book = self.books[product] = L2Book()
            book.load([(_dec(p), _dec(s)) for p, s in msg["bids"]], [(_dec(p), _dec(s)) for p, s in msg["asks"]])
            return Applied(product, False)
        if kind != "l2update":
            return None
        product = msg["product_id"]
        book = self.books.get(product)  # type: ignore[assignment]
        if book is None:
            return None
        for side, price, size in msg["changes"]:
            book.side(side == "buy").set(_dec(price), _dec(size))
        return Applied(product, False)


class BybitBooks(_Books):
    """Bybit v1 ``orderBookL2_25`` (USDT perpetuals on ``realtime_public``: snapshot ``data.order_book``; inverse on
    ``realtime``: ``data`` is the list). Deltas delete, update and insert levels by id; sizes are JSON numbers::

        {"topic": "orderBookL2_25.EOSUSD", "type": "delta", "data": {"delete": [], "update": [{"price": "7.971",
         "symbol": "EOSUSD", "id": 79710, "side": "Buy", "size": 47766}], "insert": []}, "cross_seq": 1225777226}

    No checksum; ``inconsistencies`` counts deltas that update or delete a level the book does not have, or insert
    one it already has (each a sign the local book differs from Bybit's).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inconsistencies = 0

    def apply(self, msg: Any) -> Applied | None:
        topic = msg.get("topic", "") if isinstance(msg, dict) else ""
        if not topic.startswith("orderBookL2_"):
            return None
        symbol = topic.split(".", 1)[1]
        data = msg["data"]
        if msg.get("type") == "snapshot":
            rows = data["order_book"] if isinstance(data, dict) else data
            book = self.books[symbol] = L2Book()
            book.load([(_dec(r["price"]), _dec(r["size"])) for r in rows if r["side"] == "Buy"],
                      [(_dec(r["price"]), _dec(r["size"])) for r in rows if r["side"] == "Sell"])
            return Applied(symbol, False)
        book = self.books.get(symbol)  # type: ignore[assignment]
        if book is None:
            return None
        for action, must_exist in (("delete", True), ("update", True), ("insert", False)):
            for r in data.get(action, ()):
                side = book.side(r["side"] == "Buy")
                price = _dec(r["price"])
                if (price in side.sizes) != must_exist:
                    self.inconsistencies += 1
                side.set(price, Decimal(0) if action == "delete" else _dec(r["size"]))
        return Applied(symbol, False)
