"""Frequencies, intrabar evaluation, firing/resolved state, expiry/snooze, tickers and multi-timeframe conditions."""

from __future__ import annotations

from decimal import Decimal

from services.alert_engine.core import FOREVER, AlertEngine
from shared.rules import parse_rules
from shared.schemas import Candle, Ticker

T0 = 1_700_000_000_000 // 3_600_000 * 3_600_000  # an hour boundary
M = 60_000


def candle(i: int, close: str, *, tf: str = "1m", closed: bool = True, sym: str = "BTC/USDT",
           volume: str = "1", trades: int = 1) -> Candle:
    p = Decimal(close)
    ms = {"1m": M, "5m": 5 * M}[tf]
    return Candle(exchange="x", symbol=sym, timeframe=tf, ts=T0 + i * ms, open=p, high=p, low=p, close=p,
                  volume=Decimal(volume), buy_volume=Decimal(volume), sell_volume=Decimal(0), closed=closed,
                  trades=trades, last_trade_id=trades)


def engine(body: str) -> AlertEngine:
    return AlertEngine(parse_rules("rules:\n" + body, "t.yaml"))


def fired(eng: AlertEngine, candles: list[Candle]) -> list[tuple[str, int, str]]:
    out = []
    for c in candles:
        for f in eng.on_candle(c):
            out.append((f.alert.rule, (f.alert.ts - T0) // M, f.alert.state))
    return out


def test_once_per_bar_close_never_sees_in_progress_candles_but_every_time_does():
    eng = engine("""
  - {name: close_only, symbols: [BTC/USDT], frequency: once_per_bar_close, condition: {op: above, right: 10}}
  - {name: per_bar, symbols: [BTC/USDT], frequency: once_per_bar, condition: {op: above, right: 10}}
  - {name: every, symbols: [BTC/USDT], frequency: every_time, condition: {op: above, right: 10}}
""")
    eng.on_candle(candle(0, "5"))
    live1 = eng.on_candle(candle(1, "11", closed=False, trades=1))
    live2 = eng.on_candle(candle(1, "12", closed=False, trades=2))
    assert sorted(f.alert.rule for f in live1) == ["every", "per_bar"]
    # once_per_bar: the same alert id for every evaluation of the bar (the gate publishes it once);
    # every_time: a new id per change of the in-progress bar.
    ids = {f.alert.rule: f.alert.id for f in live1}
    ids2 = {f.alert.rule: f.alert.id for f in live2}
    assert ids["per_bar"] == ids2["per_bar"] and ids["every"] != ids2["every"]
    closed = eng.on_candle(candle(1, "9"))  # the bar closed below: nothing on close; intrabar alerts stand
    assert closed == []
    # a provisional bar leaves no trace: the closed bar 1 is the one the next crossing compares with
    assert eng.windows[("x", "BTC/USDT", "1m")].candles[-1].close == Decimal(9)


def test_firing_resolved_with_for_debounce_and_notify_on_resolve():
    eng = engine("""
  - {name: lvl, symbols: [BTC/USDT], frequency: every_time, for: 2m, notify_on_resolve: true,
     condition: {op: above, right: 10}}
""")
    closes = ["11", "9", "11", "11", "11", "11", "9", "9"]
    got = fired(eng, [candle(i, c) for i, c in enumerate(closes)])
    # true-run from bar 2: held 0, 1m, 2m (fires at bar 4), 3m (bar 5), then resolves at bar 6 only once
    assert got == [("lvl", 4, "firing"), ("lvl", 5, "firing"), ("lvl", 6, "resolved")]


def test_once_is_gated_forever_and_expiry_and_snooze_use_exchange_time():
    from datetime import UTC, datetime
    snooze = datetime.fromtimestamp((T0 + 3 * M) / 1000, UTC).isoformat()
    expires = datetime.fromtimestamp((T0 + 6 * M) / 1000, UTC).isoformat()
    eng = engine(f"""
  - {{name: one, symbols: [BTC/USDT], frequency: once, condition: {{op: above, right: 10}}}}
  - {{name: win, symbols: [BTC/USDT], frequency: every_time, snooze_until: "{snooze}", expires_at: "{expires}",
     condition: {{op: above, right: 10}}}}
""")
    fires = []
    for i in range(9):
        fires.extend(eng.on_candle(candle(i, "11")))
    assert {f.cooldown_ms for f in fires if f.alert.rule == "one"} == {FOREVER}
    # bar i closes at T0 + (i+1)m: snoozed before 3m, expired after 6m
    assert [(f.alert.ts - T0) // M for f in fires if f.alert.rule == "win"] == [2, 3, 4, 5]


def test_ticker_operands_use_the_latest_ticker_at_candle_close():
    eng = engine("""
  - {name: wide, symbols: [BTC/USDT], frequency: once_per_bar_close,
     condition: {left: spread_bps, op: above, right: 5}}
  - {name: mid_x, symbols: [BTC/USDT], frequency: once_per_bar_close,
     condition: {left: mid, op: crosses_up, right: 100}}
""")
    assert eng.routes.needs_tickers("x", "BTC/USDT")
    fires, seen = [], []
    for i, (bid, ask) in enumerate([("99", "99.02"), ("100", "100.1"), ("100", "100.01")]):
        fires += eng.on_ticker(Ticker(exchange="x", symbol="BTC/USDT", ts=T0 + i * M + 1000, bid=Decimal(bid),
                                      ask=Decimal(ask)))
        fires += eng.on_candle(candle(i, "100"))
        seen.append(len(fires))
    # bar i closes at T0 + (i + 1)m; until a ticker AFTER its close is read, one at or before the close may still
    # come, so it waits: bar 0 is evaluated on ticker 1, bar 1 on ticker 2, bar 2 on the last ticker
    assert seen == [0, 0, 2] and eng.deferred == 2
    # a ticker exactly at bar 2's close is still bar 2's (at or before): 100/100.2 -> 19.98 bps
    fires += eng.on_ticker(Ticker(exchange="x", symbol="BTC/USDT", ts=T0 + 3 * M, bid=Decimal(100),
                                  ask=Decimal("100.2")))
    assert eng.deferred == 2
    fires += eng.on_ticker(Ticker(exchange="x", symbol="BTC/USDT", ts=T0 + 3 * M + 1, bid=Decimal(100),
                                  ask=Decimal("100.01")))
    # spread_bps: 0.02/99.01*1e4 = 2.02; 0.1/100.05*1e4 = 9.99; 0.01/100.005*1e4 = 1.0; then 19.98 at bar 2's close
    assert sorted((f.alert.rule, (f.alert.ts - T0) // M) for f in fires) == [("mid_x", 1), ("wide", 1),
                                                                              ("wide", 2)]
    assert eng.deferred == 0


def test_all_across_timeframes_and_symbols():
    eng = engine("""
  - {name: combo, symbols: [BTC/USDT], frequency: every_time,
     condition: {all: [{op: above, right: 10}, {op: above, right: 100, timeframe: 5m},
                       {op: below, right: 50, symbol: ETH/USDT}]}}
""")
    assert eng.routes.needs("x", "BTC/USDT") == {"1m", "5m"} and eng.routes.needs("x", "ETH/USDT") == {"1m"}
    # bar 0 (closes T0+1m) reads the 5m bar closed by then ([T0-5m, T0)) and ETH's bar 0: neither is in yet, so its
    # evaluation waits for them (it would otherwise depend on which stream happened to be read first)
    assert fired(eng, [candle(0, "11")]) == [] and eng.deferred == 1
    assert fired(eng, [candle(-1, "101", tf="5m")]) == [] and eng.deferred == 1  # ETH still missing
    assert fired(eng, [candle(1, "11")]) == [] and eng.deferred == 2  # queued behind bar 0: its order is kept
    assert fired(eng, [candle(0, "40", sym="ETH/USDT")]) == [("combo", 0, "firing")]  # bar 1 waits for ETH's bar 1
    assert fired(eng, [candle(1, "60", sym="ETH/USDT")]) == [] and eng.deferred == 0  # 60 is not below 50
    # a 5m bar that has not closed yet at the 1m bar's close is never read (no look-ahead): [T0+5m, T0+10m) is
    # below 100, but the 1m bar closing at T0+5m still sees the 5m bar [T0, T0+5m) above 100
    for i in (2, 3, 4):
        eng.on_candle(candle(i, "40", sym="ETH/USDT"))
    eng.on_candle(candle(0, "101", tf="5m"))
    eng.on_candle(candle(1, "99", tf="5m"))
    assert fired(eng, [candle(4, "11")]) == [("combo", 4, "firing")]
    eng.on_candle(candle(9, "40", sym="ETH/USDT"))
    assert fired(eng, [candle(9, "11")]) == []  # now [T0+5m, T0+10m) is closed and it is below 100
    # ETH's bar 10 never comes: the end of a drain evaluates the waiting bar with what there is
    assert fired(eng, [candle(10, "11")]) == [] and eng.deferred == 1
    assert eng.flush_deferred() == [] and eng.deferred == 0


def test_a_waiting_bar_is_evaluated_when_flushed_by_age_or_when_its_queue_is_full():
    now = [0]
    eng = AlertEngine(parse_rules("""rules:
  - {name: own, symbols: [BTC/USDT], frequency: every_time, condition: {op: above, right: 10}}
  - {name: other, symbols: [BTC/USDT], frequency: every_time,
     condition: {any: [{op: above, right: 10}, {op: below, right: 50, symbol: ETH/USDT}]}}
""", "t.yaml"), keep=20, clock=lambda: now[0])
    assert fired(eng, [candle(0, "11")]) == [("own", 0, "firing")]  # a rule reading only its series never waits
    now[0] = 1_000
    assert fired(eng, [candle(1, "11")]) == [("own", 1, "firing")] and eng.deferred == 2
    # the app's live time limit: bars waiting since 500 or earlier are evaluated now, ETH or not
    assert [(f.alert.rule, (f.alert.ts - T0) // M) for f in eng.flush_deferred(500)] == [("other", 0)]
    assert eng.deferred == 1
    # a queue longer than the history kept for the rule would lose the bars it reads: the oldest goes first
    rule = eng.rules[1]
    limit = eng.routes.binding(rule, ("x", "BTC/USDT", "1m")).wait_limit
    assert limit == 20 - 2  # keep minus the two bars an `above` reads (this one and, for crossings, the one before)
    out = fired(eng, [candle(i, "11") for i in range(2, 30)])
    assert [i for name, i, _ in out if name == "other"] == list(range(1, 30 - limit))
    assert eng.deferred == limit
    assert [(f.alert.ts - T0) // M for f in eng.flush_deferred()] == list(range(30 - limit, 30))


def test_revised_candle_replaces_the_last_bar_and_stale_ones_are_ignored():
    eng = engine("""
  - {name: up, symbols: [BTC/USDT], frequency: every_time, condition: {op: crosses_up, right: {sma: 2}}}
""")
    eng.on_candle(candle(0, "10"))
    eng.on_candle(candle(1, "10"))
    assert fired(eng, [candle(2, "9")]) == []
    revised = candle(2, "12").model_copy(update={"revision": 1})
    assert fired(eng, [revised]) == [("up", 2, "firing")]  # sma(2) now (10+12)/2 = 11 < 12, before 10 <= 10
    assert fired(eng, [candle(1, "1")]) == []  # older than the last bar: ignored
    s = eng.windows[("x", "BTC/USDT", "1m")]
    assert [c.close for c in s.candles] == [Decimal(10), Decimal(10), Decimal(12)]
