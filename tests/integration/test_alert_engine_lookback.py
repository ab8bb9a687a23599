"""The look-back the rules need, on a real redis-server: the engine warms a series up with it on start (not just
``warmup_bars``) and keeps that many candles; a need past candle_builder's maximum is cut to it and logged; several
subscribers of one series keep the largest look-back (atomic max) while any of them is subscribed, and it goes with the
last one; the live time limit of a bar waiting for another series."""

from __future__ import annotations

import asyncio
import logging
import random
from decimal import Decimal

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from services.candle_builder.settings import Settings as BuilderSettings
from shared import streams
from shared.history import MAX_HISTORY_BARS
from shared.schemas import Candle
from tests.conftest import shared_data
from tests.integration import test_alert_engine_correctness as corr
from tests.unit.alert_engine import pdref
from tests.support.subscriptions import subscribed, subscribers
from tests.support.alerts import delete_alerts
from tests.support.engine_candles import publish_candles

EX, A = corr.EX, corr.A


def _settings(tmp_path, text: str, name: str = "e1", **kw) -> Settings:
    path = tmp_path / f"rules-{name}.yaml"
    path.write_text(text)
    return Settings(rules_file=path, consumer_name=name, redis_url="redis://unused", block_ms=20, **kw)


_lookback = subscribed
_counts = subscribers


async def test_a_restarted_engine_warms_up_with_the_rules_look_back_and_keeps_it(redis, tmp_path):
    """SMA(120) needs 121 bars and a 200 s window on 1s candles 202; warmup_bars is 10 and the engine keeps 100
    candles per series by default here. A second engine takes over after 400 of 660 candles: every alert of the
    whole recording equals pandas (the old warm-up of 10 bars missed the SMA alerts until bar 520, and a 100-bar
    history never reached 200 s back)."""
    c1 = pdref.candles_from_csv(shared_data(corr.BTC), EX, A, "1s", 1000)
    df = pdref.frame(c1)
    x, ts = df["close"], df["ts"]
    move = float(corr._q((x - x.shift(200)).abs().quantile(0.7)))
    text = f"""
rules:
  - {{name: sma, symbols: [{A}], timeframe: 1s, condition: {{op: above, right: {{sma: 120}}}}}}
  - {{name: win, symbols: [{A}], timeframe: 1s, condition: {{op: moving_down, amount: {move}, window: 200s}}}}
"""
    sma = x > pdref.sma(x, 120)
    win = pdref.moving("moving_down", x, amount=move, ts=ts, window_ms=200_000)
    want = set()
    for name, cond in (("sma", sma), ("win", win)):
        assert cond.iloc[400:520].any(), f"{name} does not fire right after the restart: the test would prove nothing"
        want |= {(name, A, "1s", t, s) for t, s in pdref.fires(cond, ts, ts + 1000, frequency="once_per_bar_close")}

    await corr._publish(redis, c1[:400])
    first = AlertEngineApp(_settings(tmp_path, text, "e1", warmup_bars=10, keep_bars=100), redis)
    await first.drain()
    await corr._publish(redis, c1[400:])
    second = AlertEngineApp(_settings(tmp_path, text, "e2", warmup_bars=10, keep_bars=100), redis)
    series = (await second.warm_up(EX, A)).windows[(EX, A, "1s")]
    assert series.keep == 202 and [c.ts for c in series.candles] == [c.ts for c in c1[400 - 202:400]]
    await second.drain()
    assert await corr._alerts(redis) == want


async def test_look_back_is_capped_at_the_builders_maximum_and_the_cut_is_logged(redis, tmp_path, caplog):
    assert BuilderSettings.model_fields["history_bars"].metadata[-1].le == MAX_HISTORY_BARS == 5_000
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, A))
    text = f"""
rules:
  - {{name: day_cvd, symbols: [{A}], timeframe: 1s, condition: {{left: {{cvd: {{anchor: 1d}}}}, op: above, right: 0}}}}
  - {{name: hour_vwap, symbols: [{A}], timeframe: 1m, condition: {{op: crosses_up, right: {{vwap: 1h}}}}}}
  - {{name: day_vwap, symbols: [{A}], timeframe: 1h, condition: {{op: below, right: {{vwap: 1d}}}}}}
"""
    app = AlertEngineApp(_settings(tmp_path, text, warmup_bars=10), redis)
    with caplog.at_level(logging.WARNING, logger="services.alert_engine.app"):
        await app.drain()
        await app.sync_series()  # a second sync does not log the same cut again
    # an anchored value needs the bars since the current anchor: ceil(anchor / timeframe), plus the bar before
    assert await _lookback(redis) == {f"{EX}|{A}|1s": MAX_HISTORY_BARS, f"{EX}|{A}|1m": 60 + 1,
                                      f"{EX}|{A}|1h": 24 + 1}
    cut = [r.getMessage() for r in caplog.records if "look-back cut" in r.getMessage()]
    assert len(cut) == 1 and "'day_cvd' needs 86401 closed 1s candles" in cut[0] and str(MAX_HISTORY_BARS) in cut[0]


async def test_a_series_has_the_largest_look_back_of_its_live_subscribers_until_the_last_one_leaves(redis, tmp_path):
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, A))
    member = streams.registry_member(EX, A, "1m")

    def rules(spec: str) -> str:
        return f"rules:\n  - {{name: r, symbols: [{A}], timeframe: 1m, condition: {{op: above, right: {{{spec}}}}}}}\n"

    big = AlertEngineApp(_settings(tmp_path, rules("ema: 100"), "big", warmup_bars=10), redis)
    small = AlertEngineApp(_settings(tmp_path, rules("sma: 20"), "small", warmup_bars=10), redis)
    await big.sync_series()
    await small.sync_series()  # its smaller need does not overwrite the larger one (last write used to win)
    assert await _lookback(redis) == {member: 3 * 100 + 1} and await _counts(redis) == {member: 2}
    await big.series_sync.subscriptions.drop_all()
    assert await _lookback(redis) == {member: 20 + 1} and await _counts(redis) == {member: 1}  # the one left
    await small.series_sync.subscriptions.drop_all()
    assert await _lookback(redis) == {} and await _counts(redis) == {}  # gone with the last subscriber

    # many replicas subscribing at once: the count is exact and the look-back is the largest need
    periods = random.Random(7).sample(range(10, 400), 24)
    apps = [AlertEngineApp(_settings(tmp_path, rules(f"sma: {n}"), f"r{n}", warmup_bars=10), redis) for n in periods]
    await asyncio.gather(*(a.sync_series() for a in apps))
    assert await _lookback(redis) == {member: max(periods) + 1} and await _counts(redis) == {member: len(apps)}
    await asyncio.gather(*(a.series_sync.subscriptions.drop_all() for a in apps))
    assert await _lookback(redis) == {} and await _counts(redis) == {}


def _candle(sym: str, ts: int, close: str) -> Candle:
    p = Decimal(close)
    return Candle(exchange=EX, symbol=sym, timeframe="1m", ts=ts, open=p, high=p, low=p, close=p, volume=Decimal(1),
                  buy_volume=Decimal(1), sell_volume=Decimal(0), trades=1)


async def test_live_a_bar_waits_for_the_other_series_within_the_time_limit(redis, tmp_path):
    """Live (wall clock): the ETH candle of the same close arrives 200 ms after the BTC one; the BTC bar waits for it
    and fires with ETH's value. A bar whose ETH candle never comes is evaluated after cross_series_wait_ms."""
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, A), streams.registry_member(EX, "ETH/USDT"))
    text = f"""
rules:
  - {{name: both, symbols: [{A}], timeframe: 1m, frequency: every_time,
     condition: {{all: [{{op: above, right: 10}}, {{op: below, right: 50, symbol: ETH/USDT}}]}}}}
  - {{name: either, symbols: [{A}], timeframe: 1m, frequency: every_time,
     condition: {{any: [{{op: above, right: 10}}, {{op: below, right: 50, symbol: ETH/USDT}}]}}}}
"""
    app = AlertEngineApp(_settings(tmp_path, text, clock="wall", cross_series_wait_ms=1_500), redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    t0 = 1_723_161_600_000
    try:
        await asyncio.sleep(0.3)
        await publish_candles(redis, [_candle(A, t0, "11")])
        await asyncio.sleep(0.2)
        await publish_candles(redis, [_candle("ETH/USDT", t0, "40")])
        for _ in range(100):
            if len(await corr._alerts(redis)) == 2:
                break
            await asyncio.sleep(0.05)
        assert await corr._alerts(redis) == {("both", A, "1m", t0, "firing"), ("either", A, "1m", t0, "firing")}
        # the next BTC bar: ETH's never comes; it is evaluated after the time limit, not before
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await publish_candles(redis, [_candle(A, t0 + 60_000, "12")])
        for _ in range(200):
            if len(await corr._alerts(redis)) == 4:
                break
            await asyncio.sleep(0.05)
        waited = loop.time() - sent
        # evaluated with what there is: ETH's last bar closed by then (40), so "both" fires too
        assert await corr._alerts(redis) >= {("either", A, "1m", t0 + 60_000, "firing"),
                                             ("both", A, "1m", t0 + 60_000, "firing")}
        assert 1.4 <= waited < 6 and app.deferred == 0
    finally:
        stop.set()
        await task


async def test_a_bar_waiting_when_the_engine_stops_fires_after_a_restart(redis, tmp_path):
    """The BTC candle was read and acked while ETH's bar of the same close had not come: after a restart the warm-up
    finds that bar still waiting (ETH's processed candles do not reach it) and it fires when ETH's candle arrives;
    the bar before it, evaluated before the stop, does not fire again."""
    text = f"""
rules:
  - {{name: both, symbols: [{A}], timeframe: 1m, frequency: every_time,
     condition: {{all: [{{op: above, right: 10}}, {{op: below, right: 50, symbol: ETH/USDT}}]}}}}
"""
    t0 = 1_723_161_600_000
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, A), streams.registry_member(EX, "ETH/USDT"))
    for i in range(2):
        await publish_candles(redis, [_candle(A, t0 + i * 60_000, "11")])
    await publish_candles(redis, [_candle("ETH/USDT", t0, "40")])
    first = AlertEngineApp(_settings(tmp_path, text, "e1", clock="exchange"), redis)
    await first.drain(final=False)  # stops with bar 1 waiting for ETH's bar 1
    assert await corr._alerts(redis) == {("both", A, "1m", t0, "firing")} and first.deferred == 1
    await delete_alerts(redis)
    second = AlertEngineApp(_settings(tmp_path, text, "e2", clock="exchange"), redis)
    assert (await second.warm_up(EX, A)).deferred == 1
    await publish_candles(redis, [_candle("ETH/USDT", t0 + 60_000, "30")])
    await second.drain()
    assert await corr._alerts(redis) == {("both", A, "1m", t0 + 60_000, "firing")}
