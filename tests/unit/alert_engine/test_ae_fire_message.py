"""Alerts built on the hot path (``model_construct``, template fields computed only when named) are the same messages
a fully validated Alert gives, and the template's fields equal values computed here from the candles."""

from __future__ import annotations

import time
from decimal import Decimal

from services.alert_engine.core import AlertEngine
from shared.rules import parse_rules
from shared.schemas import Alert, Candle

T0 = 1_700_000_000_000 // 86_400_000 * 86_400_000  # a UTC day boundary (the cvd anchor)
M = 60_000
CLOSES = ["10", "11.5", "9", "12.25", "13", "8", "14"]
BUYS = ["1", "2.5", "0.5", "3", "1", "0", "4"]


def _candles() -> list[Candle]:
    out = []
    for i, (c, b) in enumerate(zip(CLOSES, BUYS, strict=True)):
        p, buy = Decimal(c), Decimal(b)
        out.append(Candle(exchange="x", symbol="BTC/USDT", timeframe="1m", ts=T0 + i * M, open=p, high=p, low=p,
                          close=p, volume=Decimal(4), buy_volume=buy, sell_volume=Decimal(4) - buy, closed=True,
                          trades=1, last_trade_id=i + 1))
    return out


def test_hot_path_alerts_equal_validated_ones_and_their_fields_are_right():
    eng = AlertEngine(parse_rules("""rules:
  - {name: all_fields, symbols: [BTC/USDT], frequency: every_time, condition: {op: above, right: 0},
     labels: {team: a}, channels: [ops],
     message: "{rule}|{time}|{delta}|{cvd}|{close}|{value}|{ts}|{severity}|{state}|{condition}"}
  - {name: plain, symbols: [BTC/USDT], frequency: every_time, condition: {op: above, right: 0}}
""", "t.yaml"))
    alerts: list[Alert] = []
    for c in _candles():
        alerts += [f.alert for f in eng.on_candle(c)]
    assert len(alerts) == 2 * len(CLOSES)
    cvd = Decimal(0)
    for i, (c, b) in enumerate(zip(CLOSES, BUYS, strict=True)):
        delta = Decimal(b) - (Decimal(4) - Decimal(b))
        cvd += delta
        a, plain = alerts[2 * i], alerts[2 * i + 1]
        for x in (a, plain):  # what full validation would make of the same fields, byte for byte on the wire
            assert x.encode() == Alert.model_validate(x.model_dump()).encode()
            assert Alert.decode(x.encode()) == Alert.model_validate(x.model_dump())
            assert type(x.value) is Decimal and x.value == Decimal(c)
        closed_at = T0 + (i + 1) * M
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(closed_at / 1000))
        rule, t, d, v, close, value, ts, sev, state, cond = a.message.split("|")
        assert (rule, t, close, value, ts, sev, state) == ("all_fields", when, c, c, str(T0 + i * M), "info",
                                                             "firing")
        assert Decimal(d) == delta and Decimal(v) == cvd and cond == a.condition
        assert a.labels == {"team": "a"} and a.channels == ["ops"]
        assert plain.message == f"plain: BTC/USDT 1m {plain.condition} (close {c})"


def test_prices_in_messages_read_without_trailing_zeros():
    """Exchanges send prices padded to their tick (``3156.10000000``): a message reads ``3156.1``, as the summaries
    do; the alert's own fields keep the exact value."""
    eng = AlertEngine(parse_rules("""rules:
  - {name: pad, symbols: [ETH/USDT], frequency: every_time, condition: {op: above, right: 0},
     message: "{close}|{value}|{volume}|{price}|{low}"}
""", "t.yaml"))
    padded = Decimal("3156.10000000")
    c = Candle(exchange="x", symbol="ETH/USDT", timeframe="1m", ts=T0, open=padded, high=Decimal("3157.00000000"),
               low=Decimal("3150.00000000"), close=padded, volume=Decimal("12.50000"), buy_volume=Decimal("2.50000"),
               sell_volume=Decimal("10.00000"), closed=True, trades=3, last_trade_id=3)
    [fire] = eng.on_candle(c)
    assert fire.alert.message == "3156.1|3156.1|12.5|3156.1|3150"
    assert str(fire.alert.price) == "3156.10000000" and type(fire.alert.price) is Decimal
    assert type(fire.alert.value) is Decimal


def test_computed_values_read_to_ten_significant_digits_without_losing_integer_digits():
    """An anchored VWAP of prices 10 and 11 with amounts 1 and 2 is 32/3, a repeating decimal: the message shows 10
    significant digits of it (no 28-digit tail) while the alert's value keeps it whole; a large exact value keeps
    every integer digit."""
    eng = AlertEngine(parse_rules("""rules:
  - {name: avg, symbols: [BTC/USDT], frequency: every_time, message: "{value}",
     condition: {left: {vwap: {anchor: 1d}}, op: above, right: 0}}
  - {name: big, symbols: [BTC/USDT], frequency: every_time, message: "{value}",
     condition: {left: volume, op: above, right: 0}}
""", "t.yaml"))
    fires = []
    for i, (p, v) in enumerate([(Decimal(10), Decimal(1)), (Decimal(11), Decimal(2))]):
        big = Decimal("123456789012345.123456789") * v
        c = Candle(exchange="x", symbol="BTC/USDT", timeframe="1m", ts=T0 + i * M, open=p, high=p, low=p, close=p,
                   volume=big, buy_volume=big, sell_volume=Decimal(0), quote_volume=p * big, closed=True, trades=1,
                   last_trade_id=i + 1)
        fires = eng.on_candle(c)
    by_rule = {f.alert.rule: f.alert for f in fires}
    exact = Decimal(32) / Decimal(3)
    assert by_rule["avg"].value == exact and len(exact.as_tuple().digits) > 20
    assert by_rule["avg"].message == "10.66666667"
    assert by_rule["big"].message == "246913578024690"  # 246913578024690.246913578 to 10 digits: every integer one
