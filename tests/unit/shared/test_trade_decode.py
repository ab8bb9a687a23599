"""The one trades decoder (``shared.schemas.decode_feed``): exact values, and every invalid price or amount refused
with its reason, on both of its paths (row by row for small entries, column-wise for large ones)."""

from __future__ import annotations

import math
from decimal import Decimal

import msgpack
import pytest

from shared.errors import DecodeError
from shared.schemas import (COLUMNS_FROM, GapMarker, Trade, TradeText, Watermark, decode_feed, encode_gap, encode_trades,
                            encode_watermark)


def _raw(rows, **over):
    return msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "t": rows, **over})


@pytest.mark.parametrize("n", [1, 3, 20])  # row-wise and column-wise
def test_trades_decode_to_the_exact_values_sent(n):
    rows = [[i, 1000 + i, f"{61837 + i}.63000000", "0.02" if i % 2 else 7, i % 2] for i in range(n)]
    msg = decode_feed(_raw(rows))
    assert (msg.exchange, msg.symbol, len(msg.trades)) == ("x", "A/B", n)
    for row, got in zip(rows, msg.trades):  # a plain-Python reading of the rows, compared as text
        assert (got[0], got[1], str(got[2]), str(got[3]), bool(got[4])) == (
            row[0], row[1], row[2], str(row[3]), row[4] == 1)
    last = msg.trades[-1]
    assert isinstance(last, Trade) and last.price == Decimal(rows[-1][2])


def test_encoded_trades_gaps_and_watermarks_round_trip():
    trades = [Trade(1, 1000, Decimal("61837.63000000"), Decimal("0.02"), True),
              Trade("abc", 1001, Decimal("1E-8"), Decimal("5"), False), Trade(None, 1002, Decimal(3), Decimal(1), True)]
    got = decode_feed(encode_trades("x", "A/B", trades)).trades
    assert [tuple(t) for t in got] == [tuple(t) for t in trades]
    assert [str(t.price) for t in got] == ["61837.63000000", "1E-8", "3"]
    assert decode_feed(encode_gap(GapMarker("x", "A/B", 1, 2, "r"))) == GapMarker("x", "A/B", 1, 2, "r")
    assert decode_feed(encode_watermark(Watermark("x", "A/B", 5, True))) == Watermark("x", "A/B", 5, True)


@pytest.mark.parametrize("raw, fragment", [
    (_raw([[1, 1000, "1", "1", 1], [2, 1001, "oops", "1", 0]]), r"trade 1 \(id 2\): price"),
    (_raw([[1, 1000, "1", "1", 1, 9]]), "trade 0 is malformed"),
    (_raw([[1, 1000, "1", "1"]]), "trade 0 is malformed"),
    (_raw([[1, "1000", "1", "1", 1]]), "ts must be an integer"),
    (_raw([[1, 1000, "1", "1", 7]]), "side must be"),
    (_raw([[1, 1000, "1", "1", 1]], v=99), "schema version 99"),
    (_raw("not rows"), "must be a list"),
    (b"\xc1", "not msgpack"),
])
def test_malformed_entries_say_what_is_wrong(raw, fragment):
    with pytest.raises(DecodeError, match=fragment):
        decode_feed(raw)


@pytest.mark.parametrize("price, amount, bad", [
    ("NaN", "1", "price"), ("1", "Infinity", "amount"), ("-5", "1", "price"), ("0", "1", "price"),
    ("1", "-0.1", "amount"), ("1", "0", "amount"), ("sNaN", "1", "price"), ("-Infinity", "1", "price"),
    (61000.5, "1", "price"), ("1", 0.25, "amount"), (math.nan, "1", "price"), (-3, "1", "price"), (True, "1", "price"),
])
@pytest.mark.parametrize("n", [1, 20])  # row-wise and column-wise paths
def test_a_float_or_a_non_finite_zero_or_negative_value_is_refused_with_its_reason(price, amount, bad, n):
    rows = [[i, 1000 + i, "100", "1", 1] for i in range(n - 1)] + [[99, 2000, price, amount, 0]]
    with pytest.raises(DecodeError, match=rf"trade {n - 1} \(id 99\): {bad} must be exact decimal text or an integer") as err:
        decode_feed(_raw(rows))
    if isinstance(price, float) or isinstance(amount, float):
        assert "a float" in str(err.value)


def test_a_valid_text_after_an_invalid_one_is_still_checked_not_taken_from_a_cache():
    decode_feed(_raw([[1, 1000, "100.5", "1", 1]]))  # "100.5" now cached
    with pytest.raises(DecodeError, match="a float"):
        decode_feed(_raw([[2, 1001, 100.5, "1", 1]]))  # the same value as a float is still refused


# ---- entries written as columns (``c``: what encode_trades writes from COLUMNS_FROM trades on) --------------------


def _cols(rows, **over):
    return msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "c": [list(c) for c in zip(*rows)], **over})


def test_a_large_batch_is_written_as_columns_and_decodes_to_the_same_trades():
    trades = [Trade(i, 1000 + i, Decimal(f"{61837 + i}.63000000"), Decimal("0.02") if i % 2 else Decimal(7), i % 3 == 0)
              for i in range(COLUMNS_FROM + 5)]
    raw = encode_trades("x", "A/B", trades)
    assert "c" in msgpack.unpackb(raw) and "t" not in msgpack.unpackb(raw)
    got = decode_feed(raw).trades
    assert [tuple(t) for t in got] == [tuple(t) for t in trades]
    assert [str(t.price) for t in got] == [str(t.price) for t in trades]  # the text as sent, trailing zeros kept
    small = encode_trades("x", "A/B", trades[:COLUMNS_FROM - 1])
    assert "t" in msgpack.unpackb(small)  # (rows below the threshold)


def test_trade_texts_are_published_as_written_and_parsed_by_the_decoder():
    texts = [TradeText(i, 1000 + i, "61837.63000000", f"0.{i + 1:05d}", i % 2 == 0) for i in range(20)]
    got = decode_feed(encode_trades("x", "A/B", texts)).trades
    assert [(t.id, t.ts, t.price, t.amount, t.is_buy) for t in got] == [
        (t.id, t.ts, Decimal(t.price), Decimal(t.amount), t.is_buy) for t in texts]
    assert str(got[0].price) == "61837.63000000"


@pytest.mark.parametrize("price, amount, bad", [
    ("NaN", "1", "price"), ("1", "Infinity", "amount"), ("-5", "1", "price"), ("0", "1", "price"),
    ("sNaN", "1", "price"), (61000.5, "1", "price"), ("1", 0.25, "amount"), (True, "1", "price"), ([1], "1", "price"),
])
def test_a_bad_value_in_a_column_is_refused_with_its_reason(price, amount, bad):
    rows = [[i, 1000 + i, "100", "1", 1] for i in range(19)] + [[99, 2000, price, amount, 0]]
    with pytest.raises(DecodeError, match=rf"trade 19 \(id 99\): {bad} must be exact decimal text or an integer"):
        decode_feed(_cols(rows))


@pytest.mark.parametrize("raw, fragment", [
    (_cols([[1, "1000", "1", "1", 1]] * 10), r"trade 0 is malformed \(ts must be an integer\)"),
    (_cols([[1, 1000, "1", "1", 1]] * 9 + [[2, 1001, "1", "1", 7]]), r"trade 9 is malformed \(side must be"),
    (_cols([[1, 1000, "1", "1", 1]] * 9 + [[2, 1001, "1", "1", [1]]]), r"trade 9 is malformed \(side must be"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "c": [[1], [2], ["1"], ["1"]]}), "five columns"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "c": [[1], [2], ["1"], ["1"], []]}), "lengths"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "c": "no"}), "five columns"),
])
def test_malformed_columns_say_what_is_wrong(raw, fragment):
    with pytest.raises(DecodeError, match=fragment):
        decode_feed(raw)
