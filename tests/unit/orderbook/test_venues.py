"""Real cryptofeed captures (../shared/data/cryptofeed_sample_data) parsed into books; exchange checksums verified.

Counts of checksummed messages are taken from the raw frames here, independently of the parsers.
"""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from shared.orderbook.venues import (BybitBooks, ChecksumMismatchError, CoinbaseBooks, KrakenBooks, OkxBooks)
from tests.unit.orderbook.captures import cryptofeed_frames


def _kraken_checksummed(frames: list) -> int:
    return sum(1 for m in frames if isinstance(m, list) and any(isinstance(p, dict) and "c" in p for p in m))


def test_kraken_book_checksums_all_verify():
    frames = list(cryptofeed_frames("KRAKEN.ws.50.0.gz"))
    books = KrakenBooks()
    for m in frames:
        books.apply(m)
        for book in books.books.values():
            assert not book.crossed()
    expected = _kraken_checksummed(frames)
    assert expected > 4000  # 4,269 in this capture, over 10 pairs
    assert books.verified == expected
    assert len(books.books) == 10


def test_kraken_tampered_level_fails_the_checksum():
    frames = list(cryptofeed_frames("KRAKEN.ws.50.0.gz"))
    books = KrakenBooks()
    tampered = False
    with pytest.raises(ChecksumMismatchError) as exc:
        for m in frames:
            if not tampered and isinstance(m, list) and isinstance(m[1], dict) and "c" in m[1] and "b" in m[1]:
                m = copy.deepcopy(m)
                row = m[1]["b"][0]
                row[1] = str(Decimal(row[1]) + Decimal("0.00000001")) if Decimal(row[1]) else "0.00000001"
                tampered = True
            books.apply(m)
    assert tampered and exc.value.instrument not in books.books  # the book is dropped, not kept wrong


def test_okx_book_checksums_all_verify():
    frames = list(cryptofeed_frames("OKX.ws.1.0.gz"))
    books = OkxBooks()
    for m in frames:
        books.apply(m)
    expected = sum(1 for m in frames if isinstance(m, dict) and "checksum" in (m.get("data") or [{}])[0])
    assert expected == 290
    assert books.verified == expected
    assert {i: len(b.bids) > 0 and len(b.asks) > 0 for i, b in books.books.items()} == {
        "BTC-USD-220527": True, "UNI-USD-SWAP": True, "BTC-USDT": True}


def test_okx_missed_update_is_caught_by_the_next_checksum():
    frames = [m for m in cryptofeed_frames("OKX.ws.1.0.gz")
              if isinstance(m, dict) and m.get("arg") == {"channel": "books", "instId": "BTC-USDT"} and "data" in m]
    books = OkxBooks()
    assert frames[0]["action"] == "snapshot"
    books.apply(frames[0])
    with pytest.raises(ChecksumMismatchError):
        for m in frames[2:]:  # frames[1] lost
            books.apply(m)


def test_coinbase_level2_agrees_with_coinbase_ticker():
    """Coinbase sends no checksum; its ticker carries best_bid/best_ask after each match. The first ticker of each
    product is the one Coinbase sends on subscribing (its last match, from before the book snapshot): skipped."""
    books = CoinbaseBooks()
    seen: set[str] = set()
    compared = agreeing = 0
    for m in cryptofeed_frames("COINBASE.ws.28.0.gz"):
        books.apply(m)
        if isinstance(m, dict) and m.get("type") == "ticker":
            product = m["product_id"]
            if product not in seen:
                seen.add(product)
                continue
            book = books.books[product]
            compared += 1
            agreeing += (book.best_bid().price == Decimal(m["best_bid"])
                         and book.best_ask().price == Decimal(m["best_ask"]))
            assert not book.crossed()
    assert compared == 97 and agreeing == compared


@pytest.mark.parametrize("name, pairs", [("BYBIT.ws.25.0.gz", 8), ("BYBIT.ws.26.0.gz", 2)])
def test_bybit_l2_25_stays_25_deep_and_consistent(name, pairs):
    """Bybit sends no checksum here; orderBookL2_25 is exactly 25 levels a side after every message (Bybit inserts
    the level that moves into range), and each delta only updates/deletes levels that exist and inserts new ones."""
    books = BybitBooks()
    applied = 0
    for m in cryptofeed_frames(name):
        got = books.apply(m)
        if got is None:
            continue
        applied += 1
        book = books.books[got.instrument]
        assert (len(book.bids), len(book.asks)) == (25, 25)
        assert not book.crossed()
    assert applied > 1000 and len(books.books) == pairs
    assert books.inconsistencies == 0
