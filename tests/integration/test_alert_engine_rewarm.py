"""A rule added by a reload on a series the engine already follows gets the history it needs from candle_builder's
backfill, with everything real: the local Binance-protocol exchange replaying a real recording, market_feed (live, its
history service answering from the exchange's klines), candle_builder, alert_engine, redis-server.

The engine runs an SMA(20) rule on 1s candles (look-back 30, so the builder seeds 30 candles); a reload adds an
SMA(300) crossing rule (look-back 301): the builder backfills older 1s candles (appended to the stream after newer
ones), the engine merges them into its series and rebuilds its indicators. The new rule's alerts then equal pandas
over the full history from the first bar after the reload (before, a 90-bar series left SMA(300) unknown for 211 more
bars), and no alert is fired for a historical bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pandas as pd

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import rules as r
from shared import streams
from shared.partitioned import caught_up as engine_caught_up
from shared.partitions import partition_of
from shared.schemas import Candle, Trade
from tests.support.candles import builder_caught_up, trades_stream
from tests.conftest import shared_data
from tests.integration import test_alert_engine_correctness as corr
from tests.integration.market_feed.helpers import (
    expected_trades,
    live_settings,
    local_exchange,
    published,
    running_feed,
    wait_last_id,
)
from tests.integration.test_candle_builder import RECORDINGS, publish, read_candles, settings_for
from tests.integration.test_candle_builder_lookback import running, running_builder, wait_for
from tests.unit.alert_engine import pdref
from tests.support.subscriptions import subscribed
from tests.support.alerts import delete_alerts

SEAM = 1_723_161_600_000  # 2024-08-09 00:00:00 UTC: the builder meets the pair here (the recording starts 23:54:15)
CUT = SEAM + 60_000  # the rules are reloaded after the first minute of live trades
SMA20 = """
rules:
  - {name: sma20, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: crossing, right: {sma: 20}}}
"""
SMA300 = SMA20 + """
  - {name: sma300, symbols: [BTC/USDT], timeframe: 1s, frequency: every_time,
     condition: {op: crossing, right: {sma: 300}}}
"""


def running_engine(redis, settings: Settings) -> contextlib.AbstractAsyncContextManager[AlertEngineApp]:
    return running(AlertEngineApp(settings, redis))


def _history(candles: list[Candle]) -> pd.DataFrame:
    """The series as the stream holds it in the end: one candle per bucket (highest revision), in ts order."""
    latest: dict[int, Candle] = {}
    for c in candles:
        if c.ts not in latest or c.revision >= latest[c.ts].revision:
            latest[c.ts] = c
    return pdref.frame([latest[ts] for ts in sorted(latest)])


def _crossings(df: pd.DataFrame, period: int, after: int) -> set[tuple]:
    x = df["close"]
    cond = pdref.crossing(x, pdref.sma(x, period)).fillna(False).astype(bool)
    return {(f"sma{period}", "BTC/USDT", "1s", int(t), "firing") for t in df["ts"][cond] if t > after}


async def test_a_rule_added_by_reload_is_warmed_by_the_builders_backfill(redis, redis_url, tmp_path):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = tmp_path / "all.csv"
    path.write_text(shared_data(rel).read_text())
    key = (exchange, symbol, "1s")
    member = streams.registry_member(*key)
    trades_key = trades_stream(exchange, symbol)
    history_from = streams.part_candle_history_from(partition_of(exchange, symbol, 16))
    rules = tmp_path / "rules.yaml"
    rules.write_text(SMA20)
    engine_settings = Settings(rules_file=rules, consumer_name="e1", redis_url=redis_url, block_ms=20, batch=100,
                               reload_every_s=0.05, registry_poll_s=0.05, warmup_bars=30, clock="exchange")
    builder_settings = settings_for(redis_url, timeframes=["1m"], history_bars=30, history_timeout_s=10,
                                    close_on_timer=False)
    async def caught_up() -> bool:
        return (await builder_caught_up(redis)
                and await engine_caught_up(redis, 16, streams.GROUP_ALERT_ENGINE, streams.part_candles))

    async with local_exchange(path, speed=0) as sim:
        async with running_feed(live_settings(sim), redis) as feed:
            await wait_last_id(redis, expected_trades(path)[-1][0])  # the exchange now holds it all for klines
            trades, _ = await published(redis)
            await redis.delete(trades_key)
            await publish(redis, exchange, symbol, [Trade(*t) for t in trades if SEAM <= t[1] < CUT], per_entry=50,
                          final=False)
            async with running_engine(redis, engine_settings) as engine:
                await wait_for(lambda: _has(redis, member), "the 1s subscription")
                assert (await subscribed(redis))[member] == 30
                async with running_builder(redis, builder_settings) as builder:
                    await wait_for(caught_up, "the first minute")
                    assert int(await redis.hget(history_from, member)) == SEAM - 30_000
                    series = engine.engine_of(exchange, symbol).windows[key]
                    before = len(series.candles)
                    last_evaluated = series.candles[-1].ts
                    assert 80 <= before <= 90 and last_evaluated < CUT  # 30 seeded + the first minute's bars
                    assert await corr._alerts(redis), "the SMA(20) rule fired nothing: the test would prove little"
                    served = feed.live.history.served

                    rules.write_text(SMA300)
                    os.utime(rules, ns=(0, rules.stat().st_mtime_ns + 1_000_000_000))  # a change the engine sees

                    async def asked() -> bool:
                        return (await subscribed(redis)).get(member, 0) == 301

                    await wait_for(asked, "the new look-back")

                    async def rewarmed() -> bool:
                        raw = await redis.hget(history_from, member)
                        if raw is None or int(raw) >= SEAM - 30_000 or not await caught_up():
                            return False
                        window = engine.engine_of(exchange, symbol).windows.get(key)  # (a new engine: new plan)
                        return (window is not None and len(window.candles) >= 301
                                and not engine.engine_of(exchange, symbol).stale)

                    await wait_for(rewarmed, "the backfill to reach the engine")
                    series = engine.engine_of(exchange, symbol).windows[key]
                    assert feed.live.history.served > served and builder.backfilled >= 301 - before
                    assert series.candles[-1].ts == last_evaluated  # history merged below, nothing evaluated
                    assert [c.ts for c in series.candles] == sorted({c.ts for c in series.candles})

                    await publish(redis, exchange, symbol, [Trade(*t) for t in trades if t[1] >= CUT], per_entry=50)
                    await wait_for(caught_up, "the rest of the recording")
                    await wait_for(lambda: asyncio.sleep(0.2, True), "a last housekeeping round")
    assert engine.counts()["duplicates"] == 0 and engine.counts()["suppressed"] == 0

    candles = await read_candles(redis, exchange, symbol, "1s")
    df = _history(candles)
    assert df["ts"].iloc[0] <= last_evaluated - 300_000 and df["ts"].iloc[-1] == trades[-1][1] // 1000 * 1000
    reference = {c.ts: c for c in pdref.candles_from_csv(path, exchange, symbol, "1s", 1000)}
    for c in (c for c in candles if c.trades):  # the candles themselves: exactly the recording's, every bucket
        want = reference[c.ts]
        assert (c.open, c.high, c.low, c.close, c.volume, c.buy_volume) == (
            want.open, want.high, want.low, want.close, want.volume, want.buy_volume), c.ts

    # (the rules are every_time: in-progress 1s candles fire too, at the time of their newest trade; the pandas
    # oracle here is of closed bars)
    alerts = {(a.rule, a.symbol, a.timeframe, a.ts, a.state) for a in await corr.read_alerts(redis)
              if a.fired_at == a.ts + 1000}
    new = {a for a in alerts if a[0] == "sma300"}
    want_new = _crossings(df, 300, last_evaluated)
    assert new == want_new, sorted(new ^ want_new)
    # the alerts a 90-bar series would have missed: SMA(300) unknown until 211 bars after the reload
    assert len({a for a in new if a[3] < last_evaluated + 211_000}) >= 5
    # the SMA(20) rule: an engine without offsets reads the partition's stream from the start, the 30 seeded history candles first;
    # they warm SMA(20) up (so a crossing on the first live bar counts) but are never alerted on themselves
    assert {a for a in alerts if a[0] == "sma20"} == _crossings(df, 20, SEAM - 1)
    assert min(a[3] for a in alerts) >= SEAM
    assert sum(c.history for c in candles) >= 30 and not any(c.history for c in candles if c.ts >= SEAM)


# ---- re-reading the stream: a grown look-back over candles it already holds, a backfill another replica consumed ----

EX, A = corr.EX, corr.A
K1S = (EX, A, "1s")


async def _reload(app: AlertEngineApp, text: str) -> None:
    path = app.settings.rules_file
    path.write_text(text)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))  # a change the engine sees
    assert await app.reload_rules()


def _want(c1: list[Candle], period: int, after: int) -> set[tuple]:
    return _crossings(pdref.frame(c1), period, after)


async def test_a_grown_look_back_is_read_back_from_the_stream_when_it_already_holds_the_history(redis, tmp_path):
    """The stream has 400 candles; a restarted engine warmed up with its look-back of 30 and then saw 60 more: a
    reload adding SMA(300) needs 301, which the stream has (candle_builder backfills nothing): read back at the
    reload, so the new rule's alerts equal pandas from the next bar on."""
    c1 = pdref.candles_from_csv(shared_data(corr.BTC), EX, A, "1s", 1000)
    await corr._publish(redis, c1[:400])
    path = tmp_path / "rules.yaml"
    path.write_text(SMA20)

    def settings(name: str) -> Settings:
        return Settings(rules_file=path, consumer_name=name, redis_url="redis://unused", block_ms=20, warmup_bars=30,
                        clock="exchange")

    await AlertEngineApp(settings("e1"), redis).drain()
    second = AlertEngineApp(settings("e2"), redis)
    await corr._publish(redis, c1[400:460])
    await second.drain()
    assert len(second.engine_of(EX, A).windows[K1S].candles) == 90
    await delete_alerts(redis)
    await _reload(second, SMA300)  # the partition's plan changed: its engine is built again, the look-back read
    await second.drain(final=False)
    series = second.engine_of(EX, A).windows[K1S]
    assert len(series.candles) == 301 and second.engines.refilled == 1
    assert [c.ts for c in series.candles] == [c.ts for c in c1[460 - 301:460]]
    await corr._publish(redis, c1[460:])
    await second.drain()
    alerts = await corr._alerts(redis)
    want = _want(c1, 300, c1[459].ts)
    assert {a for a in alerts if a[0] == "sma300"} == want and len(want) >= 3
    assert {a for a in alerts if a[0] == "sma20"} == _want(c1, 20, c1[459].ts)


async def test_a_backfill_appended_to_the_partitions_stream_is_merged_without_firing(redis, tmp_path):
    """candle_builder appends backfilled candles after newer ones in the partition's stream (history moved back): the
    engine merges them into the window when it reads them (indicators rebuilt, nothing evaluated: no alert for a
    historical bar), and the SMA(300) rule's alerts equal pandas from the next bar on."""
    c1 = pdref.candles_from_csv(shared_data(corr.BTC), EX, A, "1s", 1000)
    path = tmp_path / "rules.yaml"
    path.write_text(SMA300)
    app = AlertEngineApp(Settings(rules_file=path, consumer_name="e1", redis_url="redis://unused", block_ms=20,
                                  warmup_bars=30, clock="exchange"), redis)
    await corr._publish(redis, c1[300:400])  # seeded from bar 300, then live
    await app.drain()
    series = app.engine_of(EX, A).windows[K1S]
    assert len(series.candles) == 100 and series.value(r.SMA(period=300)) is None
    await delete_alerts(redis)
    await corr._publish(redis, [c.model_copy(update={"history": True}) for c in c1[:300]])  # the backfill, appended
    await app.drain(final=False)
    assert app.engine_of(EX, A).windows[K1S] is series and await corr._alerts(redis) == set()
    assert [c.ts for c in series.candles] == [c.ts for c in c1[:400]]  # merged in ts order (keep_bars: 600)
    await corr._publish(redis, c1[400:])
    await app.drain()
    alerts = await corr._alerts(redis)
    want = _want(c1, 300, c1[399].ts)
    assert {a for a in alerts if a[0] == "sma300"} == want and want
    assert {a for a in alerts if a[0] == "sma20"} == _want(c1, 20, c1[399].ts)


async def _has(redis, member: str) -> bool:
    return member in await subscribed(redis)
