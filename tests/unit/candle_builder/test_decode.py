"""The builder's column-wise trades decoder gives what shared.schemas.decode_feed gives, errors included."""

from __future__ import annotations

from decimal import Decimal

import msgpack
import pytest

from services.candle_builder.decode import decode_feed_fast
from shared.errors import DecodeError
from shared.schemas import GapMarker, Trade, Watermark, decode_feed, encode_gap, encode_trades, encode_watermark


def test_valid_messages_decode_the_same():
    trades = [Trade(1, 1000, Decimal("61837.63000000"), Decimal("0.02"), True),
              Trade("abc", 1001, Decimal("1E-8"), Decimal("5"), False), Trade(None, 1002, Decimal(3), Decimal(1), True)]
    for raw in (encode_trades("x", "A/B", trades), encode_trades("x", "A/B", []),
                encode_gap(GapMarker("x", "A/B", 1, 2, "r")), encode_watermark(Watermark("x", "A/B", 5, True))):
        ref, got = decode_feed(raw), decode_feed_fast(raw)
        if hasattr(ref, "trades"):
            assert (ref.exchange, ref.symbol) == (got.exchange, got.symbol)
            assert [(t[0], t[1], t[2], t[3], bool(t[4])) for t in got.trades] == [tuple(t) for t in ref.trades]
            for a, b in zip(ref.trades, got.trades):
                assert str(a.price) == str(b[2]) and str(a.amount) == str(b[3])
        else:
            assert ref == got


def _raw(rows, **over):
    return msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "t": rows, **over})


@pytest.mark.parametrize("raw", [
    _raw([[1, 1000, "1", "1", 1], [2, 1001, "oops", "1", 0]]),
    _raw([[1, 1000, "1", "1", 1, 9]]),
    _raw([[1, 1000, "1", "1"]]),
    _raw([[1, "1000", "1", "1", 1]]),
    _raw([[1, 1000, "1", "1", 1]], v=99),
    _raw("not rows"),
    b"\xc1",
])
def test_malformed_messages_raise_the_reference_error(raw):
    with pytest.raises(DecodeError) as ref:
        decode_feed(raw)
    with pytest.raises(DecodeError) as got:
        decode_feed_fast(raw)
    assert str(got.value) == str(ref.value)


@pytest.mark.parametrize("price,amount", [("NaN", "1"), ("1", "Infinity"), ("-5", "1"), ("0", "1"), ("1", "-0.1"),
                                          ("sNaN", "1")])
def test_non_finite_or_negative_values_are_refused(price, amount):
    for n in (1, 20):  # row-wise and column-wise paths
        rows = [[i, 1000 + i, "100", "1", 1] for i in range(n - 1)] + [[99, 2000, price, amount, 0]]
        with pytest.raises(DecodeError, match="trade 99: price must be positive"):
            decode_feed_fast(_raw(rows))
