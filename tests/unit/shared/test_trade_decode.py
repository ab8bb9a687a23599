"""The one trades decoder (``shared.feed_codec.decode_feed``): exact values, and every invalid price or amount refused
with its reason, on both of its paths (row by row for small entries, column-wise for large ones)."""

from __future__ import annotations

import math
from decimal import Decimal

import msgpack
import pytest

from shared.errors import DecodeError
from shared.feed_codec import COLUMNS_FROM, decode_feed, encode_gap, encode_trades, encode_watermark
from shared.feed_runs import decode_feed_runs
from shared.schemas import GapMarker, Trade, TradeText, Watermark


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


def _one(pair, tid, price="61837.63", amount="0.02", side=1, ts=None):
    return msgpack.packb({"v": 1, "k": "trades", "x": pair[0], "s": pair[1],
                          "t": [[tid, 1000 + tid if ts is None else ts, price, amount, side]]})


def test_decode_feed_runs_gives_what_decode_feed_gives_entry_by_entry():
    """The read decoder against ``decode_feed`` of each entry (the oracle): the same errors with the same reasons at
    the same entries, every pair's trades and markers in entry order, and no batch spanning a marker."""
    a, b = ("x", "A/B"), ("x", "C/DEF")
    raws = [_one(a, 1), _one(a, 2, price="61837.64"), _one(b, 3), _one(a, 4), _one(a, 5, amount="7"),
            _one(a, 6, price="NaN"),  # the same head, an invalid price
            _one(a, 7) + b"\x01",  # the same head, extra bytes after the row
            _one(a, 8)[:-1],  # truncated
            _one(a, 9, side=7), _one(a, 10, ts="1010"), _one(a, 11, price=1.5), _one(a, 12, price="0"),
            _one(a, 13, price="-Infinity"), _one(a, 14, amount="-0"),
            msgpack.packb({"v": 1, "k": "trades", "x": "x", "s": "A/B", "t": [[15, 1015, "1", "1", 1, 9]]}),
            _one(a, 16, price="62000.01"),  # a valid price not seen before: checked by decode_feed, then taken
            _one(b, 17), encode_gap(GapMarker("x", "A/B", 1, 2, "r")), _one(a, 18), _one(b, 19),
            encode_trades("x", "A/B", [Trade(20, 1020, Decimal(1), Decimal(2), True)] * 2),
            _one(a, 21), encode_watermark(Watermark("x", "", 1030)), _one(a, 22), _one(b, 23),
            encode_trades("x", "C/DEF", [Trade(n, 1000 + n, Decimal(1), Decimal(2), False) for n in range(24, 40)]),
            _one(b, 40), b"\xc1", _one(a, 41, price="1", amount="1"), _one(a, 42),
            encode_watermark(Watermark("x", "A/B", 1042)),
            *[_one(a, n, price=f"{n}.5") for n in range(43, 53)],  # ten good ones: checked as columns
            encode_gap(GapMarker("x", "A/B", 3, 4, "r")),
            *[_one(a, n, price="NaN" if n == 57 else "5") for n in range(53, 62)]]  # nine, one bad: entry by entry
    expected: list = []
    for raw in raws:
        try:
            expected.append(decode_feed(raw))
        except DecodeError as exc:
            expected.append(exc)
    got = decode_feed_runs(raws)
    assert {i: str(e) for i, e in enumerate(expected) if isinstance(e, DecodeError)} == {
        first: str(msg) for first, last, msg in got if isinstance(msg, DecodeError) and first == last}
    assert sum(isinstance(e, DecodeError) for e in expected) == 12

    def tokens(items, pair):  # a pair's trades one by one and its other messages, in order
        out = []
        for msg in items:
            if isinstance(msg, DecodeError) or (msg.exchange, msg.symbol) != pair:
                continue
            if hasattr(msg, "trades"):
                out += [("trade", tuple(t)) for t in msg.trades]
            else:
                out.append(("marker", msg))
        return out

    for pair in (a, b):
        assert tokens([m for _, _, m in got], pair) == tokens(expected, pair)
    markers = [i for i, e in enumerate(expected) if isinstance(e, (GapMarker, Watermark))]
    for first, last, msg in got:
        assert not any(first < k <= last for k in markers), (first, last)
        assert first == last or len(msg.trades) > 1
    merged = [(first, last) for first, last, msg in got if first != last]
    # A/B's first entry as decode_feed gave it; entries 1, 3, 4 and 15 in one batch across B's entry 2 and the bad ones
    assert got[0] == (0, 0, expected[0]) and merged[0] == (1, 15)
    assert [type(m.trades).__name__ for first, _, m in got if first in (31, 42)] == ["TradeColumns", "list"]
    assert all(type(t) is Trade for _, _, m in got if hasattr(m, "trades") for t in m.trades)


@pytest.mark.parametrize("reads", [[[("a", 1)]], [[("a", 1), ("b", 2)]], [[("a", 1), ("a", 2)], [("a", 3)]],
                                   [[("b", 1), ("a", 2), ("a", 3), ("b", 4)]]])
def test_decode_feed_runs_of_short_reads_equal_decode_feed(reads):
    """A read's last entry starts no batch (nothing after it could join one): one-entry reads, the commonest live
    read, and reads ending on a pair's first entry give what ``decode_feed`` gives."""
    pairs = {"a": ("x", "A/B"), "b": ("x", "C/D")}
    for read in reads:
        raws = [_one(pairs[p], tid) for p, tid in read]
        got = decode_feed_runs(raws)
        for pair in pairs.values():
            want = [tuple(t) for raw in raws for m in [decode_feed(raw)] if (m.exchange, m.symbol) == pair
                    for t in m.trades]
            assert [tuple(t) for _, _, m in got if (m.exchange, m.symbol) == pair for t in m.trades] == want
        assert sum(len(m.trades) for _, _, m in got) == len(raws)
