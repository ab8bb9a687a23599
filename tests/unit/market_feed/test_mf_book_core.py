"""market_feed's pure book side: float levels back to exact decimals, snapshots, derivatives conversions."""

from __future__ import annotations

import random
from decimal import Decimal

from services.market_feed.book_core import BookView, ExactDecimals, PairBook, exact_levels, significant_digits
from services.market_feed.derivs_core import funding_from_mark, funding_from_rate, liquidation_from, open_interest_from
from shared.orderbook.book import L2Book
from shared.orderbook.metrics import book_metrics
from shared.orderbook.walls import WallTracker
from shared.schemas import Trade


def test_float_levels_come_back_as_the_exchange_decimals():
    rng = random.Random(5)
    strings = [(f"{rng.randint(1, 99999)}.{rng.randint(0, 99):02d}", f"{rng.randint(0, 9)}.{rng.randint(1, 99999):05d}")
               for _ in range(2000)]
    rows = [[float(p), float(q)] for p, q in strings]
    cache = ExactDecimals()
    levels = exact_levels(rows, None, True, len(rows), cache)
    assert cache.inexact == 0
    assert levels == [(Decimal(p), Decimal(q)) for p, q in strings]
    assert exact_levels(rows, None, True, len(rows), cache) == levels  # from the cache the second time
    # 17 significant digits cannot survive a float: counted, not hidden
    exact_levels([[float("1234567.8901234567"), 1.0]], None, True, 1, cache)
    assert cache.inexact == 1
    assert [significant_digits(repr(x)) for x in (61837.63, 1e-05, 0.00012, 100.0)] == [7, 1, 2, 4]


def test_exact_levels_read_the_band_plus_one_and_at_least_top_n():
    rows = [[100.0 - i, 1.0] for i in range(10)]
    levels = exact_levels(rows, 97.0, True, 2, ExactDecimals())
    assert [p for p, _ in levels] == [Decimal("100.0"), Decimal("99.0"), Decimal("98.0"), Decimal("97.0"),
                                      Decimal("96.0")]
    assert len(exact_levels(rows, 99.5, True, 3, ExactDecimals())) == 3
    asks = [[100.0 + i, 1.0] for i in range(3)]
    assert len(exact_levels(asks, 150.0, False, 1, ExactDecimals())) == 3  # the book ran out first


def test_pair_book_snapshot_carries_metrics_walls_and_resyncs():
    pair = PairBook("binance", "BTC/USDT", top_n=2, bands_bps=(Decimal(100),), walls=WallTracker(100, 5))
    bids = [(Decimal("100"), Decimal("1")), (Decimal("99.9"), Decimal("9")), (Decimal("99.8"), Decimal("1"))]
    asks = [(Decimal("101"), Decimal("1")), (Decimal("101.1"), Decimal("1"))]
    first = pair.snapshot(BookView(bids, asks, 7, 1000))
    assert first.bids == [(Decimal("100"), Decimal("1")), (Decimal("99.9"), Decimal("9"))] and len(first.asks) == 2
    ref = L2Book()
    ref.load(bids, asks)
    m = book_metrics(ref, [100])
    assert (first.mid, first.microprice, first.bands[0].bid_base) == (m.mid, m.microprice, m.bands[0].bid_base)
    assert [(w.kind, w.price) for w in first.walls] == [("appeared", Decimal("99.9"))]
    assert not pair.changed(7) and pair.changed(8)
    pair.add_trades([Trade(1, 1001, Decimal("99.9"), Decimal("9"), False)])
    second = pair.snapshot(BookView([bids[0], bids[2]], asks, 8, 1001))
    assert [(w.kind, w.traded) for w in second.walls] == [("eaten", Decimal(9))]
    pair.resynced()
    third = pair.snapshot(BookView(bids, asks, 20, 1002))
    assert third.resyncs == 1 and [w.kind for w in third.walls] == ["appeared"]  # nothing claimed across the gap


def test_derivatives_conversions_prefer_the_exchange_strings():
    mark = {"timestamp": 1723161268000, "markPrice": 61828.62, "indexPrice": 61826.0,
            "info": {"E": 1723161268000, "p": "61828.62000000", "i": "61826.00000000", "r": "0.00010000",
                     "T": 1723161600000}}
    f = funding_from_mark("binanceusdm", "BTC/USDT:USDT", mark)
    assert (str(f.mark_price), f.funding_rate, f.next_funding_ts) == ("61828.62000000", Decimal("0.0001"),
                                                                      1723161600000)
    # without info (another exchange), ccxt's floats are used
    g = funding_from_rate("okx", "BTC/USDT:USDT", {"timestamp": 5, "markPrice": 0.1, "indexPrice": 0.3,
                                                   "fundingRate": 0.0001, "fundingTimestamp": 9, "info": {}})
    assert (g.mark_price, g.index_price, g.funding_rate, g.next_funding_ts) == (
        Decimal("0.1"), Decimal("0.3"), Decimal("0.0001"), 9)
    oi = open_interest_from("binanceusdm", "BTC/USDT:USDT", {"timestamp": 7, "openInterestAmount": 1.5,
                                                             "info": {"openInterest": "1.500"}})
    assert str(oi.amount) == "1.500" and oi.value is None
    liq = liquidation_from("binanceusdm", "BTC/USDT:USDT", {"timestamp": 8, "price": 61831.99, "contracts": 0.084,
                                                            "side": "sell", "info": {"S": "SELL", "ap": "61831.99",
                                                                                     "z": "0.084", "p": "61522.83"}})
    assert (liq.side, liq.price, liq.amount, liq.order_price) == ("sell", Decimal("61831.99"), Decimal("0.084"),
                                                                  Decimal("61522.83"))
    assert funding_from_mark("x", "y", {"info": {}}) is None
    assert liquidation_from("x", "y", {"price": 1.0, "contracts": 1.0, "side": None, "info": {}}) is None
