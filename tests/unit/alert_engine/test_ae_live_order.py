"""An in-progress candle read together with its own bar's closed candle (two streams in one read) is evaluated before
that close, at its ``as_of`` (issue 22): it used to sort at the bar's close, after the closed candle, and was always
skipped. Its alert says that time."""

from __future__ import annotations

from decimal import Decimal

from services.alert_engine.core import AlertEngine
from services.alert_engine.core.engine import live_time
from shared.rules import parse_rules
from shared.schemas import Candle

T0 = 1_700_000_000_000 // 3_600_000 * 3_600_000
M = 60_000
RULES = """
rules:
  - {name: every, symbols: [BTC/USDT], timeframe: 1m, frequency: every_time, condition: {op: above, right: 10}}
"""


def candle(i: int, close: str, *, closed: bool = True, trades: int = 1, as_of: int | None = None,
           prev: int | None = None) -> Candle:
    p = Decimal(close)
    return Candle(exchange="x", symbol="BTC/USDT", timeframe="1m", ts=T0 + i * M, open=p, high=p, low=p, close=p,
                  volume=Decimal(1), buy_volume=Decimal(1), sell_volume=Decimal(0), closed=closed, trades=trades,
                  last_trade_id=trades, as_of=as_of, prev_ts=None if prev is None else T0 + prev * M)


def test_in_progress_candles_sort_before_their_own_close_and_alert_at_their_time():
    eng = AlertEngine(parse_rules(RULES, "t.yaml"))
    eng.on_batch([candle(0, "5")])
    # as a read gives them: the partition's closed candles first, then its in-progress ones (bar 1 of them closed
    # in the same read, bar 2 not)
    batch = [candle(1, "6"), candle(1, "11", closed=False, trades=1, as_of=T0 + M + 500, prev=0),
             candle(1, "12", closed=False, trades=2, as_of=None, prev=0),  # (an older writer: no as_of)
             candle(2, "13", closed=False, trades=1, as_of=T0 + 2 * M + 100, prev=1)]
    got = [(f.alert.ts - T0, f.alert.fired_at - T0, f.alert.price) for f in eng.on_batch(batch)]
    assert got == [(M, M + 500, Decimal(11)), (M, 2 * M - 1, Decimal(12)), (2 * M, 2 * M + 100, Decimal(13))]


def test_live_time_stays_inside_the_bar():
    assert live_time(candle(3, "1", closed=False, as_of=T0 + 3 * M + 7)) == T0 + 3 * M + 7
    assert live_time(candle(3, "1", closed=False, as_of=T0 + 9 * M)) == T0 + 4 * M - 1  # (a late-closing bar)
    assert live_time(candle(3, "1", closed=False, as_of=T0)) == T0 + 3 * M
    assert live_time(candle(3, "1", closed=False)) == T0 + 4 * M - 1
