"""alert_engine on real trades and tickers (Binance BTCUSDT, 2021-01-08 00:00:00-00:00:46): ticker rules on closed
candles read the quote as of the bar's close; tick-level rules fire on the crossing trade / the ticker itself; snooze
is wall-clock time live and exchange time in a backtest; the subscriptions' look-back follows the rules."""

from __future__ import annotations

import os
from decimal import Decimal

import pandas as pd
import pytest

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.partitions import partition_of
from shared.bus import Bus
from shared.feed_codec import encode_trades
from shared.schemas import Alert, Ticker, Trade
from tests.support.candles import trades_stream, tickers_stream
from tests.support.engine_candles import publish_candles
from tests.conftest import shared_data
from tests.unit.alert_engine import pdref
from tests.support.subscriptions import subscribed, subscribers
from tests.support.alerts import read_alerts

DIR = "binance_spot_btcusdt_20210108"
EX, SYM = "binance", "BTC/USDT"


def _quotes() -> pd.DataFrame:
    q = pd.read_parquet(shared_data(f"{DIR}/quotes.parquet"))
    q["ts"] = q["timestamp"].astype("int64") // 1_000_000 if q["timestamp"].dt.unit == "ns" else \
        q["timestamp"].astype("int64") // {"ms": 1, "us": 1000, "s": 1 / 1000}[q["timestamp"].dt.unit]
    for col in ("bid", "ask", "bid_size", "ask_size"):
        q[col + "_dec"] = [Decimal(repr(v)) for v in q[col]]
    return q


def _trades() -> list[Trade]:
    df = pd.read_csv(shared_data(f"{DIR}/BTCUSDT-trades-20210108T000000-000046.csv"), dtype={"price": str,
                                                                                             "amount": str})
    return [Trade(int(i), int(t), Decimal(p), Decimal(a), s == "buy")
            for i, t, p, a, s in zip(df["id"], df["timestamp"], df["price"], df["amount"], df["side"], strict=True)]


def _settings(tmp_path, text: str, **kw) -> Settings:
    (tmp_path / "rules.yaml").write_text(text)
    return Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused", block_ms=20,
                    **kw)


async def _alerts(redis) -> list[Alert]:
    return await read_alerts(redis)


async def _publish_tickers(redis, q: pd.DataFrame) -> None:
    await Bus(redis).publish_many(
        (tickers_stream(EX, SYM), Ticker(exchange=EX, symbol=SYM, ts=int(t), bid=b, ask=a, bid_size=bs,
                                          ask_size=az).encode())
        for t, b, a, bs, az in zip(q["ts"], q["bid_dec"], q["ask_dec"], q["bid_size_dec"], q["ask_size_dec"],
                                   strict=True))


@pytest.mark.parametrize("batch", [500, 7, 1])
async def test_ticker_rules_on_closed_candles_and_on_each_ticker(redis, tmp_path, batch):
    """Whatever the read batching: with COUNT 7, 7 candles span 7 s and 7 quotes a fraction of one, so the ticker
    stream lags the candles by whole reads; a bar reading tickers waits for a quote past its close."""
    q = _quotes()
    candles = pdref.candles_from_csv(shared_data(f"{DIR}/BTCUSDT-trades-20210108T000000-000046.csv"), EX, SYM,
                                     "1s", 1000)
    mid = (q["bid_dec"] + q["ask_dec"]) / 2
    bps = (q["ask_dec"] - q["bid_dec"]) / mid * 10_000
    bps_lv = Decimal(repr(round(float(pd.Series(bps.astype(float)).quantile(0.8)), 4)))
    spread_lv = Decimal(repr(round(float((q["ask_dec"] - q["bid_dec"]).astype(float).quantile(0.7)), 2)))
    lv = Decimal(repr(round(float(mid.astype(float).median()), 2)))
    text = f"""
rules:
  - {{name: bps_close, symbols: [{SYM}], timeframe: 1s, condition: {{left: spread_bps, op: above, right: {bps_lv}}}}}
  - {{name: spread_close, symbols: [{SYM}], timeframe: 1s, condition: {{left: spread, op: above, right: {spread_lv}}}}}
  - {{name: mid_x_close, symbols: [{SYM}], timeframe: 1s, condition: {{left: mid, op: crossing, right: {lv}}}}}
  - {{name: bid_close, symbols: [{SYM}], timeframe: 1s, condition: {{left: bid, op: above, right: {lv}}}}}
  - {{name: ask_close, symbols: [{SYM}], timeframe: 1s, condition: {{left: ask, op: below, right: {lv}}}}}
  - {{name: bps_tick, symbols: [{SYM}], timeframe: 1s, frequency: every_time, cooldown: 2s,
     condition: {{left: spread_bps, op: above, right: {bps_lv}}}}}
  - {{name: mid_tick, symbols: [{SYM}], timeframe: 1s, frequency: once_per_bar,
     condition: {{left: mid, op: crosses_up, right: {lv}}}}}
"""
    await publish_candles(redis, candles)
    await _publish_tickers(redis, q)
    app = AlertEngineApp(_settings(tmp_path, text, clock="exchange", batch=batch), redis)
    await app.drain()
    assert tickers_stream(EX, SYM) in app.streams
    got: dict[str, set] = {}
    for a in await _alerts(redis):
        got.setdefault(a.rule, set()).add((a.ts, a.state, a.price if a.rule.endswith("_tick") else None))

    # independent: the last quote at or before each bar's close
    df = pdref.frame(candles)
    at = pdref.as_of(df["ts"] + 1000, q["ts"], pd.Series(range(len(q)), dtype=float))
    def per_bar(values: pd.Series) -> pd.Series:
        return pd.Series([values.iloc[int(i)] if pd.notna(i) else None for i in at])
    bar_bps, bar_spread, bar_mid = per_bar(bps), per_bar(q["ask_dec"] - q["bid_dec"]), per_bar(mid)
    bar_bid, bar_ask = per_bar(q["bid_dec"]), per_bar(q["ask_dec"])
    known = bar_mid.notna()
    def bars(cond) -> set:
        return {(int(t), "firing", None) for t, ok in zip(df["ts"], cond, strict=True) if ok}
    mid_f = bar_mid.where(known, None)
    want = {
        "bps_close": bars([k and v > bps_lv for k, v in zip(known, bar_bps, strict=True)]),
        "spread_close": bars([k and v > spread_lv for k, v in zip(known, bar_spread, strict=True)]),
        "mid_x_close": bars([i > 0 and known[i] and known[i - 1] and
                             ((mid_f[i - 1] <= lv < mid_f[i]) or (mid_f[i - 1] >= lv > mid_f[i]))
                             for i in range(len(df))]),
        "bid_close": bars([k and v > lv for k, v in zip(known, bar_bid, strict=True)]),
        "ask_close": bars([k and v < lv for k, v in zip(known, bar_ask, strict=True)]),
    }
    # tick level: every quote over the level, 2 s cooldown in exchange time; the first mid crossing of each bar
    tick, until = set(), None
    for t, v in zip(q["ts"], bps, strict=True):
        if v > bps_lv and (until is None or t >= until):
            tick.add((int(t), "firing", None))
            until = t + 2000
    want["bps_tick"] = tick
    first, seen = set(), set()
    for i in range(1, len(q)):
        if mid.iloc[i - 1] <= lv < mid.iloc[i] and q["ts"].iloc[i] // 1000 not in seen:
            seen.add(q["ts"].iloc[i] // 1000)
            first.add((int(q["ts"].iloc[i]), "firing", None))
    want["mid_tick"] = first
    for name, w in want.items():
        assert w, name
        g = {(t, s, None) for t, s, _ in got.get(name, set())}
        assert g == w, (name, sorted(g ^ w)[:5])


async def test_a_price_rule_fires_on_the_crossing_trade(redis, tmp_path):
    trades = _trades()
    lv = sorted(t.price for t in trades)[len(trades) // 2]
    text = f"""
rules:
  - {{name: every, symbols: [{SYM}], timeframe: 1s, frequency: every_time,
     condition: {{left: price, op: crosses_up, right: {lv}}}}}
  - {{name: per_bar, symbols: [{SYM}], timeframe: 1s, frequency: once_per_bar,
     condition: {{left: price, op: crossing, right: {lv}}}}}
  - {{name: at_close, symbols: [{SYM}], timeframe: 1s, frequency: once_per_bar_close,
     condition: {{left: price, op: crosses_up, right: {lv}}}}}
"""
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM))
    app = AlertEngineApp(_settings(tmp_path, text), redis)
    await app.drain()
    # trades are read for the intrabar rules only; the close-only rule reads candles, never trades or live candles
    assert trades_stream(EX, SYM) in app.streams
    assert streams.part_live(partition_of(EX, SYM, 16)) not in app.streams
    # published as market_feed does: encode_trades batches (here 50 trades per entry)
    bus = Bus(redis)
    await bus.publish_many((trades_stream(EX, SYM), encode_trades(EX, SYM, trades[i:i + 50]))
                           for i in range(0, len(trades), 50))
    await app.drain(final=False)
    alerts = await _alerts(redis)
    got_every = {(a.ts, a.price) for a in alerts if a.rule == "every"}
    got_bar = {(a.ts, a.price) for a in alerts if a.rule == "per_bar"}
    assert not [a for a in alerts if a.rule == "at_close"]  # no candles were published: nothing at a close
    # independent: trade i crosses up when trade i-1 <= level < trade i
    want_every = {(t.ts, t.price) for p, t in zip(trades, trades[1:]) if p.price <= lv < t.price}
    want_bar, bars = set(), set()
    for p, t in zip(trades, trades[1:]):
        if (p.price <= lv < t.price or p.price >= lv > t.price) and t.ts // 1000 not in bars:
            bars.add(t.ts // 1000)
            want_bar.add((t.ts, t.price))
    assert want_every and got_every == want_every
    assert want_bar and got_bar == want_bar
    assert all(a.fired_at == a.ts for a in alerts)


async def test_snooze_is_wall_clock_live_and_exchange_time_in_a_backtest(redis, tmp_path):
    trades = _trades()  # January 2021: long before now
    lv = sorted(t.price for t in trades)[len(trades) // 2]
    # snoozed until 00:00:20 on the recording's day: in the past for the wall clock, mid-recording in exchange time
    text = f"""
rules:
  - {{name: snoozed, symbols: [{SYM}], timeframe: 1s, frequency: every_time, snooze_until: "2021-01-08T00:00:20Z",
     condition: {{left: price, op: crosses_up, right: {lv}}}}}
"""
    want_all = {t.ts for p, t in zip(trades, trades[1:]) if p.price <= lv < t.price}
    cut = 1610064020000
    assert {t for t in want_all if t < cut} and {t for t in want_all if t >= cut}
    for clock, want in (("wall", want_all), ("exchange", {t for t in want_all if t >= cut})):
        await redis.flushall()
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM))
        app = AlertEngineApp(_settings(tmp_path, text, clock=clock), redis)
        await app.drain()
        await Bus(redis).publish_many((trades_stream(EX, SYM), encode_trades(EX, SYM, trades[i:i + 100]))
                                      for i in range(0, len(trades), 100))
        await app.drain(final=False)
        assert {a.ts for a in await _alerts(redis)} == want, clock
    # and a snooze in the future (wall clock) silences a live engine on old data completely
    await redis.flushall()
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM))
    app = AlertEngineApp(_settings(tmp_path, text.replace("2021-01-08T00:00:20Z", "2999-01-01T00:00:00Z"),
                                   clock="wall"), redis)
    await app.drain()
    await Bus(redis).publish(trades_stream(EX, SYM), encode_trades(EX, SYM, trades))
    await app.drain(final=False)
    assert await _alerts(redis) == []


async def test_subscription_lookback_follows_the_rules(redis, tmp_path):
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM), streams.registry_member(EX, "ETH/USDT"))
    text = f"""
rules:
  - {{name: a, symbols: [{SYM}], timeframe: 1m, condition: {{left: {{ema: 50}}, op: crosses_up, right: {{sma: 20}}}}}}
  - {{name: b, symbols: [{SYM}], timeframe: 1m, condition: {{all: [{{left: {{rsi: 30}}, op: above, right: 70}},
     {{left: {{macd: {{fast: 12, slow: 100, signal: 50}}}}, op: above, right: 0, timeframe: 1h}}]}}}}
  - {{name: c, symbols: [ETH/USDT], timeframe: 5m, condition: {{op: above, right: 1}}}}
"""
    settings = _settings(tmp_path, text, warmup_bars=10)
    app = AlertEngineApp(settings, redis)
    await app.drain()

    async def lookback() -> dict[str, int]:
        return await subscribed(redis)

    # EMA(50) needs 3×50 bars, RSI(30) Wilder smoothing 10×30+1, plus the bar a crossing compares with; the 1h MACD
    # 3×(slow + signal); a plain level needs no more than the configured warm-up
    assert await lookback() == {f"{EX}|{SYM}|1m": max(3 * 50, 10 * 30 + 1) + 1,
                                f"{EX}|{SYM}|1h": 3 * (100 + 50) + 1, f"{EX}|ETH/USDT|5m": 10}
    # reload: rule b gone, a's EMA longer; the 1h series is released and its look-back removed
    settings.rules_file.write_text(text.replace("ema: 50", "ema: 200").split("  - {name: b")[0]
                                   + "  - {name: c" + text.split("  - {name: c")[1])
    os.utime(settings.rules_file, ns=(7, 7))
    assert await app.reload_rules()
    assert await lookback() == {f"{EX}|{SYM}|1m": 3 * 200 + 1, f"{EX}|ETH/USDT|5m": 10}
    assert streams.registry_member(EX, SYM, "1h") not in await subscribers(redis)


def test_backtest_runs_the_engine_on_exchange_time_and_live_runs_on_the_wall_clock(tmp_path):
    from sentinel.run import RunOptions, _service_settings

    live = _service_settings(RunOptions(), "redis://unused", tmp_path)["alert_engine"]
    backtest = _service_settings(RunOptions(exchange_clock=True), "redis://unused", tmp_path)["alert_engine"]
    assert (live.clock, backtest.clock) == ("wall", "exchange")
