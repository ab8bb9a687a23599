"""Book and derivatives messages: exact round trips, and clear errors for malformed ones."""

from __future__ import annotations

from decimal import Decimal

import msgpack
import pytest

from shared import streams
from shared.book_messages import BookBand, BookSnapshot, BookWallEvent
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.errors import DecodeError
from shared.schemas import SCHEMA_VERSION


def test_book_snapshot_round_trip_keeps_exact_decimals():
    snap = BookSnapshot(exchange="binance", symbol="BTC/USDT", ts=1723161255408, update_id=50093239224,
                        bids=[(Decimal("61837.63000000"), Decimal("3.78826000"))],
                        asks=[(Decimal("61837.64000000"), Decimal("1.60520000"))],
                        mid=Decimal("61837.635"), spread=Decimal("0.01"),
                        bands=[BookBand(bps=10, bid_base="3.78826000", ask_base="1.6052", bid_quote="1", ask_quote="2",
                                        imbalance="0.4", bid_wall_price="61837.63", bid_wall_ratio="1")],
                        walls=[BookWallEvent(kind="pulled", side="ask", price="61840", size="9", remaining="0",
                                             traded="0", ts=1)],
                        resyncs=2)
    back = BookSnapshot.decode(snap.encode())
    assert back == snap
    assert back.bids[0][0] == Decimal("61837.63") and str(back.bids[0][0]) == "61837.63000000"
    assert back.bands[0].ask_wall_price is None and back.walls[0].kind == "pulled"


def test_derivatives_round_trip_and_basis():
    f = FundingRate(exchange="binanceusdm", symbol="BTC/USDT:USDT", ts=1, mark_price="61828.62", index_price="61826",
                    funding_rate="0.00010000", next_funding_ts=28_800_000)
    assert FundingRate.decode(f.encode()) == f
    assert f.basis_bps == (Decimal("2.62") * 10_000 / Decimal("61826"))
    assert FundingRate(exchange="x", symbol="y", ts=1, mark_price="1").basis_bps is None
    oi = OpenInterest(exchange="binanceusdm", symbol="BTC/USDT:USDT", ts=2, amount="79999.694")
    assert OpenInterest.decode(oi.encode()) == oi
    liq = Liquidation(exchange="binanceusdm", symbol="BTC/USDT:USDT", ts=3, side="sell", price="61831.99",
                      amount="0.084", order_price="61522.83")
    assert Liquidation.decode(liq.encode()) == liq


@pytest.mark.parametrize("msg, fragment", [
    ({"v": SCHEMA_VERSION, "k": "book", "exchange": "b", "symbol": "s", "ts": 1, "bids": [["x", "1"]], "asks": []},
     "invalid book"),
    ({"v": SCHEMA_VERSION, "k": "funding", "exchange": "b", "symbol": "s", "ts": 1}, "mark_price"),
    ({"v": SCHEMA_VERSION, "k": "liquidation", "exchange": "b", "symbol": "s", "ts": 1, "side": "up", "price": "1",
      "amount": "1"}, "side"),
    ({"v": 99, "k": "book"}, "schema version 99"),
])
def test_malformed_messages_say_what_is_wrong(msg, fragment):
    cls = {"book": BookSnapshot, "funding": FundingRate, "liquidation": Liquidation}[msg["k"]]
    with pytest.raises(DecodeError, match=fragment):
        cls.decode(msgpack.packb(msg))


def test_stream_names():
    assert streams.part_books(3) == "sentinel:{p3}:books" and streams.part_derivs(3) == "sentinel:{p3}:derivs"
    assert streams.channel_books("binance", "BTC/USDT") == "sentinel:ch:books:binance:BTC/USDT"
    assert streams.channel_derivs("x", "s") == "sentinel:ch:derivs:x:s"
