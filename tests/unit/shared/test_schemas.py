from __future__ import annotations

from decimal import Decimal

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import DecodeError
from shared.feed_codec import decode_feed, encode_gap, encode_trades, encode_watermark
from shared.schemas import Alert, Candle, GapMarker, Message, Ticker, Trade, TradeBatch, Watermark, unpack


def test_trade_batch_round_trip_keeps_exact_decimals():
    trades = [Trade(3735683259, 1723161255342, Decimal("61837.63000000"), Decimal("0.00009000"), False),
              Trade("abc", 1723161255343, Decimal("0.1"), Decimal("0.2"), True)]
    decoded = decode_feed(encode_trades("binance", "BTC/USDT", trades))
    assert isinstance(decoded, TradeBatch)
    assert (decoded.exchange, decoded.symbol) == ("binance", "BTC/USDT")
    assert decoded.trades == trades
    assert decoded.trades[1].price + decoded.trades[1].amount == Decimal("0.3")  # no float drift


def test_gap_and_watermark_round_trip():
    gap = GapMarker("binance", "BTC/USDT", 10, 20, "reconnect")
    assert decode_feed(encode_gap(gap)) == gap
    mark = Watermark("kraken", "BTC/USD", 99, final=True)
    assert decode_feed(encode_watermark(mark)) == mark
    # a partition's exchange-wide watermark (symbol ""): market_feed writes one per partition of several pairs; it
    # was dead-lettered by every reader (so quiet pairs' candles and the replay's last ones never closed by it)
    for final in (False, True):
        wide = Watermark("binance", "", 99, final=final)
        assert decode_feed(encode_watermark(wide)) == wide
    with pytest.raises(DecodeError, match="'s'"):
        decode_feed(msgpack.packb({"v": 1, "k": "gap", "x": "a", "s": "", "from": 1, "to": 2}))
    with pytest.raises(DecodeError, match="'s'"):
        decode_feed(msgpack.packb({"v": 1, "k": "trades", "x": "a", "s": "", "t": []}))


@pytest.mark.parametrize("raw, fragment", [
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a map"),
    (msgpack.packb({"v": 99, "k": "trades"}), "schema version 99"),
    (msgpack.packb({"v": 1, "k": "bogus", "x": "a", "s": "b"}), "unexpected message kind"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "", "s": "b", "t": []}), "'x'"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "a", "s": "b", "t": [[1, 2, "x", "1", 0]]}), "trade 0"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "a", "s": "b", "t": [[1, "2", "1", "1", 0]]}), "trade 0"),
    (msgpack.packb({"v": 1, "k": "trades", "x": "a", "s": "b", "t": [[1, 2, "1"]]}), "trade 0"),
])
def test_malformed_feed_messages_say_what_is_wrong(raw, fragment):
    with pytest.raises(DecodeError, match=fragment):
        decode_feed(raw)


def test_candle_round_trip_and_derived_fields():
    candle = Candle(exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=60_000, open="1.1", high="2.2",
                    low="1.0", close="2.0", volume="3", buy_volume="2", sell_volume="1", quote_volume="6.3",
                    trades=3, first_trade_id=1, last_trade_id=3)
    back = Candle.decode(candle.encode())
    assert back == candle
    assert back.high == Decimal("2.2") and back.delta == Decimal("1") and back.vwap == Decimal("2.1")


def test_ticker_and_alert_round_trip():
    ticker = Ticker(exchange="binance", symbol="BTC/USDT", ts=5, bid="1.5", ask="1.6", last=None)
    assert Ticker.decode(ticker.encode()) == ticker
    alert = Alert(id="a1", rule="r", exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=0, fired_at=60_000,
                  price="100.5", labels={"team": "x"}, channels=["console"])
    assert Alert.decode(alert.encode()) == alert


def test_decode_rejects_wrong_kind_and_bad_fields():
    ticker = Ticker(exchange="binance", symbol="BTC/USDT", ts=5)
    with pytest.raises(DecodeError, match="unexpected message kind"):
        Candle.decode(ticker.encode())
    bad = msgpack.packb({"v": 1, "k": "ticker", "exchange": "b", "symbol": "s", "ts": "soon"})
    with pytest.raises(DecodeError, match="invalid ticker"):
        Ticker.decode(bad)


_decimal = st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=None))
_text = st.text(max_size=20)


@given(id_=st.text(min_size=1, max_size=20), rule=_text, timeframe=st.one_of(st.none(), st.sampled_from(["1m", "1h"])),
       ts=st.integers(0, 2**53), price=_decimal, value=_decimal, message=_text,
       severity=st.sampled_from(["info", "warning", "critical"]), labels=st.dictionaries(_text, _text, max_size=3),
       channels=st.lists(_text, max_size=3), state=st.sampled_from(["firing", "resolved"]))
def test_alert_direct_encoding_is_the_models(id_, rule, timeframe, ts, price, value, message, severity, labels,
                                             channels, state):
    alert = Alert(id=id_, rule=rule, exchange="binance", symbol="BTC/USDT", timeframe=timeframe, ts=ts, fired_at=ts + 1,
                  price=price, value=value, condition="close > 1", message=message, severity=severity, labels=labels,
                  channels=channels, state=state)
    raw = alert.encode()
    assert raw == Message.encode(alert)  # pydantic's own dump
    assert Alert.decode(raw) == alert


def test_from_msg_is_decode_without_msgpack():
    c = Candle(exchange="x", symbol="A/B", timeframe="1m", ts=0, open=Decimal("1.5"), high=Decimal(2), low=Decimal(1),
               close=Decimal(2), volume=Decimal(3), buy_volume=Decimal(1), sell_volume=Decimal(2))
    assert Candle.from_msg(unpack(c.encode())) == c
    with pytest.raises(DecodeError, match="open"):
        Candle.from_msg({**unpack(c.encode()), "open": "abc"})


_EXACT = {
    Ticker: lambda: Ticker(exchange="x", symbol="A/B", ts=1, bid="1.5"),
    Candle: lambda: Candle(exchange="x", symbol="A/B", timeframe="1m", ts=0, open="1", high="2", low="1", close="1.5",
                           volume="1", buy_volume="1", sell_volume="0", trades=1),
    Alert: lambda: Alert(id="a1", rule="r", exchange="x", symbol="A/B", timeframe="1m", ts=0, fired_at=60_000,
                         price="100.5"),
}


@pytest.mark.parametrize("cls, field", [(Candle, "close"), (Ticker, "bid"), (Alert, "price")])
def test_a_float_in_a_candle_ticker_or_alert_is_refused_naming_the_field(cls, field) -> None:
    """Issue 19 defect 5's other half: floats reached the engine and the notifier as candles and alerts."""
    msg = unpack(_EXACT[cls]().encode())
    assert cls.from_msg(msg)  # the exact form decodes
    msg[field] = 61000.5
    with pytest.raises(DecodeError, match=f"field '{field}' is a float"):
        cls.from_msg(msg)


def test_a_refused_message_names_the_field_without_its_value():
    """A malformed candle with a 2 MB field (the chaos bench's oversized injection): the reason names the field and
    the problem in a few hundred bytes, not the value (it went whole into a log line of megabytes)."""
    import msgpack
    import pytest

    from shared.errors import DecodeError
    from shared.schemas import Candle, unpack

    msg = {"exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m", "ts": 0, "open": "1", "high": "1",
           "low": "1", "close": b"\x00" * 2_000_000, "volume": "1", "v": 1, "k": "candle"}
    with pytest.raises(DecodeError) as info:
        Candle.from_msg(unpack(msgpack.packb(msg)))
    assert "close" in str(info.value) and len(str(info.value)) < 1000, str(info.value)[:300]


def _validated_the_checked_way(cls, msg):
    """What ``from_msg`` gave before its flat-map path: the map without ``v``/``k``, kind set, validated."""
    return cls.model_validate({**{k: v for k, v in msg.items() if k not in ("v", "k")},
                               "kind": cls.model_fields["kind"].default})


def test_from_msg_of_a_flat_map_equals_the_checked_way_and_refuses_what_it_refused():
    """A flat candle / ticker map is validated as it is (``v``, ``k`` ignored): the same model as the checked way,
    field by field (decimal text as written, ints, ids of either type, None), and every malformed map still raises
    DecodeError naming the problem (the engine dead-letters with it)."""
    c = Candle(exchange="x", symbol="A/B", timeframe="1m", ts=60_000, open=Decimal("61837.630"), high=Decimal("7E+3"),
               low=Decimal("-0.00001"), close=Decimal(2), volume=Decimal("0"), buy_volume=Decimal("0.5"),
               sell_volume=Decimal("1.5"), quote_volume=Decimal("4.25"), trades=3, first_trade_id="a7",
               last_trade_id=9, closed=False, revision=2, incomplete=True, history=True, prev_ts=0, as_of=61_000)
    msg = unpack(c.encode())
    got = Candle.from_msg(msg)
    assert got == c == _validated_the_checked_way(Candle, msg)
    assert [(k, type(v), str(v)) for k, v in got] == [(k, type(v), str(v)) for k, v in c]
    assert Candle.from_msg({**msg, "extra": 1}) == c  # an unknown key is ignored, as before
    t = Ticker(exchange="x", symbol="A/B", ts=5, bid=Decimal("1.50"), ask=None)
    assert Ticker.from_msg(unpack(t.encode())) == t
    bad = {"open": 1.5, "close": "abc", "trades": None, "exchange": 3, "high": "NaN", "low": "Infinity",
           "closed": "maybe", "revision": 1.0, "prev_ts": [1], "first_trade_id": {"a": 1}}
    for field, value in bad.items():
        with pytest.raises(DecodeError, match="float" if isinstance(value, float) else field):
            Candle.from_msg({**msg, field: value})
    # what pydantic's lax mode converts, it converts on both ways alike
    for field, value in {"ts": "12", "trades": True, "volume": 5, "closed": 1, "as_of": None}.items():
        assert Candle.from_msg({**msg, field: value}) == _validated_the_checked_way(Candle, {**msg, field: value})
    for wrong in ({**msg, "k": "ticker"}, {**msg, "v": 2}, [msg], None):
        with pytest.raises(DecodeError):
            Candle.from_msg(wrong)
    for missing in ("open", "ts", "symbol"):
        with pytest.raises(DecodeError, match=missing):
            Candle.from_msg({k: v for k, v in msg.items() if k != missing})
