"""L2Book against a plain dict rebuilt and sorted at every query (hypothesis drives the operations)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.orderbook.book import L2Book

PRICES = st.integers(min_value=1, max_value=60).map(lambda i: Decimal(i) / 4)  # 0.25 .. 15.00, many collisions
SIZES = st.sampled_from([Decimal(0), Decimal("0.000"), Decimal("0.5"), Decimal("1.25"), Decimal("7")])
OPS = st.lists(st.tuples(st.booleans(), PRICES, SIZES), max_size=200)


@settings(max_examples=200, deadline=None)
@given(OPS, st.integers(min_value=0, max_value=12))
def test_book_matches_a_sorted_dict(ops, n):
    book = L2Book()
    ref: dict[bool, dict[Decimal, Decimal]] = {True: {}, False: {}}
    for is_bid, price, size in ops:
        book.side(is_bid).set(price, size)
        if size == 0:
            ref[is_bid].pop(price, None)
        else:
            ref[is_bid][price] = size
        bids = sorted(ref[True].items(), key=lambda kv: -kv[0])
        asks = sorted(ref[False].items())
        assert book.best_bid() == (bids[0] if bids else None)
        assert book.best_ask() == (asks[0] if asks else None)
    top_bids, top_asks = book.top(n)
    assert [tuple(lv) for lv in top_bids] == sorted(ref[True].items(), key=lambda kv: -kv[0])[:n]
    assert [tuple(lv) for lv in top_asks] == sorted(ref[False].items())[:n]
    assert len(book.bids) == len(ref[True]) and len(book.asks) == len(ref[False])


@settings(max_examples=100, deadline=None)
@given(OPS, st.integers(min_value=0, max_value=8))
def test_truncate_keeps_the_best_levels(ops, depth):
    book = L2Book()
    for is_bid, price, size in ops:
        book.side(is_bid).set(price, size)
    before_bids, before_asks = book.top()
    book.bids.truncate(depth)
    book.asks.truncate(depth)
    assert book.top() == (before_bids[:depth], before_asks[:depth])
    # the truncated book still takes updates in order
    book.bids.set(Decimal(100), Decimal(1))
    assert book.best_bid() == (Decimal(100), Decimal(1))


def test_load_skips_zero_sizes_and_keeps_the_written_exponent():
    book = L2Book()
    book.load([(Decimal("61837.63000000"), Decimal("3.78826000")), (Decimal("61837.62"), Decimal("0E-8"))],
              [(Decimal("61837.64000000"), Decimal("1.54698000"))], update_id=7)
    assert len(book.bids) == 1 and book.update_id == 7
    assert format(book.best_bid().price, "f") == "61837.63000000"
    assert not book.crossed()
    book.bids.set(Decimal("61837.64"), Decimal(1))
    assert book.crossed()
