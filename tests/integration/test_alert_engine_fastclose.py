"""Fast close (services/alert_engine/fastclose.py): the engine closes bars from the trades stream with a replica of
candle_builder's builder and alerts without waiting for candle_builder's candles — the same alerts, on a real
recording, as when it waits for them; candle_builder's candles of those bars are then only compared; one that differs
re-syncs the replica from candle_builder's saved state. Real redis-server, real CandleBuilderApp and AlertEngineApp."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from decimal import Decimal

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.core import AlertEngine
from services.alert_engine.rules import parse_rules
from services.alert_engine.settings import Settings
from services.candle_builder.app import CandleBuilderApp
from shared import streams
from shared.bus import FIELD, Bus
from shared.schemas import Alert, Candle, Watermark, encode_trades, encode_watermark, unpack
from tests.conftest import shared_data
from tests.integration.test_candle_builder import publish, read_trades, run_until_caught_up, settings_for

BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
EX, SYM = "binance", "BTC/USDT"
TRADES = read_trades(shared_data(BTC))
SPLIT = len(TRADES) // 4  # candle_builder has built the first quarter when the engine starts
PART2 = TRADES[SPLIT].ts


def _rules() -> str:
    level = statistics.median(t.price for t in TRADES)
    return f"""
rules:
  - {{name: sma_up, symbols: [{SYM}], timeframe: 1s, frequency: once_per_bar_close,
     condition: {{op: crosses_up, right: {{sma: 20}}}}}}
  - {{name: level, symbols: [{SYM}], timeframe: 1m, notify_on_resolve: true, condition: {{op: above, right: {level}}}}}
  - {{name: spike, symbols: [{SYM}], timeframe: 1s, condition: {{op: volume_spike, factor: 3, period: 20}}}}
"""


async def _alerts(redis) -> set[tuple]:
    out = set()
    for _, f in await redis.xrange(streams.ALERTS):
        a = Alert.decode(f[FIELD])
        out.add((a.rule, a.timeframe, a.ts, a.state, a.price, a.value))
    return out


async def _rows(redis) -> dict[str, dict]:
    """RULE_STATE as the commits wrote it: what their alerts decide (the rest is the status as of the batch's last
    bar: it depends on how the candles were batched)."""
    keep = ("rule", "timeframe", "last_fired", "last_alert_id", "cooldown_until", "cooldown_ms", "next_eligible")
    return {k.decode(): {f: unpack(raw)[f] for f in keep} for k, raw in (await redis.hgetall(streams.RULE_STATE)).items()}


async def _started(redis, redis_url, rules, timeframes: list[str], fast: bool = True, **settings):
    """candle_builder has built the first quarter of the trades and the engine has read its candles (subscribing
    made candle_builder build ``timeframes`` for it). Returns the engine, the builder's settings and the stream."""
    builder = settings_for(redis_url, timeframes=timeframes, history_bars=0)
    stream = streams.trades(EX, SYM)
    await publish(redis, EX, SYM, TRADES[:SPLIT], per_entry=20, final=False)
    engine = AlertEngineApp(Settings(rules_file=rules, redis_url=redis_url, fast_close=fast, **settings), redis)
    await engine.drain(final=False)
    await run_until_caught_up(redis, builder, [stream])
    await engine.drain(final=False)
    return engine, builder, stream


async def _run(redis, redis_url, tmp_path, fast: bool) -> tuple[set[tuple], set[tuple], AlertEngineApp]:
    """The builder builds the first quarter; the engine starts; the rest of the trades come while the builder is
    stopped (the engine drains them), then the builder catches up and the engine drains its candles. Returns the
    alerts published before the builder caught up, all alerts, and the engine."""
    await redis.flushall()
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules())
    engine, builder, stream = await _started(redis, redis_url, rules, ["1s", "1m"], fast)
    await publish(redis, EX, SYM, TRADES[SPLIT:], per_entry=20, final=True)
    await engine.drain(final=False)
    before = await _alerts(redis)
    await run_until_caught_up(redis, builder, [stream])
    await engine.drain(final=True)
    return before, await _alerts(redis), engine


async def test_bars_closed_from_trades_alert_before_candle_builder_and_give_the_same_alerts(redis, redis_url,
                                                                                           tmp_path):
    before_slow, slow, _ = await _run(redis, redis_url, tmp_path, fast=False)
    before_fast, fast, engine = await _run(redis, redis_url, tmp_path, fast=True)
    late = {a for a in slow if a[2] >= PART2}
    assert {a[0] for a in late} == {"sma_up", "level", "spike"}, "a rule never fires after the split: proves little"
    assert not {a for a in before_slow if a[2] >= PART2}, "without fast close nothing fires before the candles come"
    assert fast == slow
    # with it, every alert of the trades the builder had not read yet was out before the builder read them
    assert {a for a in before_fast if a[2] >= PART2} == late
    st = engine.status()
    bars_1s = len({t.ts // 1000 for t in TRADES[SPLIT:]})
    assert st["fast_closed"] >= bars_1s
    assert st["fast_confirmed"] == st["fast_closed"], st  # candle_builder's candles of them: compared, equal
    assert st["fast_mismatched"] == 0 and st["duplicates"] == 0, st
    assert engine.fast.synced == 1


async def test_bars_known_before_their_closing_trades_are_applied_are_committed_first_and_give_the_same_alerts(
        redis, redis_url, tmp_path):
    """The trades after the split come as a live feed writes them (a new entry with each second's first trade, at
    most 20 trades per entry) and are read one entry at a time. A bar the engine speculated on, whose closing entry
    starts past its end with the replica as it was then, is evaluated and committed before that entry is applied
    (``_handle_ahead``): the replica then emits exactly that bar. The alerts are those of the engine without fast
    close on candle_builder's candles."""
    _, slow, _ = await _run(redis, redis_url, tmp_path, fast=False)
    slow_rows = await _rows(redis)
    await redis.flushall()
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules())
    # speculation within 1 s of a close (and 3 of the pair's gaps between trades): most bars of this recording
    engine, builder, stream = await _started(redis, redis_url, rules, ["1s", "1m"], speculate_ms=1000)
    bus = Bus(redis)
    rest, entries = TRADES[SPLIT:], []
    for t in rest:
        if not entries or len(entries[-1]) == 20 or t.ts // 1000 != entries[-1][-1].ts // 1000:
            entries.append([])
        entries[-1].append(t)
    for rows in entries:
        await bus.publish(stream, encode_trades(EX, SYM, rows))
        await engine.consumer.drain()
    await bus.publish(stream, encode_watermark(Watermark(EX, SYM, rest[-1].ts, final=True)))
    await run_until_caught_up(redis, builder, [stream])
    await engine.drain(final=True)
    assert await _alerts(redis) == slow
    assert await _rows(redis) == slow_rows  # the RULE_STATE rows the commits built ahead wrote
    st = engine.status()
    bars_1s = len({t.ts // 1000 for t in rest})
    assert st["closed_ahead"] >= bars_1s / 3 and st["ahead_mismatched"] == 0, st
    assert st["commits_staged"] >= st["closed_ahead"] / 2, st  # their commits mostly built by speculation
    assert st["fast_mismatched"] == 0 and st["duplicates"] == 0, st


async def test_a_candle_builder_candle_that_differs_resyncs_the_replica_and_is_evaluated(redis, redis_url, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
rules:
  - {{name: high_close, symbols: [{SYM}], timeframe: 1s, notify_on_resolve: true,
     condition: {{op: above, right: 1000000}}}}
""")
    engine, _, _ = await _started(redis, redis_url, rules, ["1s"])
    part = TRADES[SPLIT:SPLIT + 400]
    await publish(redis, EX, SYM, part, per_entry=20, final=False)
    await engine.drain(final=False)
    assert engine.fast.closed > 0 and not await _alerts(redis)  # prices ~61k: the level is never reached
    # candle_builder's candle of the last bar closed here, as a builder whose state changed would publish it
    pending = engine.fast.pending[(EX, SYM, "1s")]
    ts = max(pending)
    mine = pending[ts]
    forged = Candle(**{**mine.model_dump(), "close": Decimal("2000000"), "high": Decimal("2000000")})
    await redis.xadd(streams.candles(EX, SYM, "1s"), {FIELD: forged.encode()})
    await engine.drain(final=False)
    assert engine.fast.mismatched == 1
    assert (EX, SYM) not in engine.fast.replicas  # dropped: re-read from candle_builder's state at the next entry
    # evaluated as the revision of the series' last bar (as a late trade's revision would be)
    assert {(a[0], a[2], a[3]) for a in await _alerts(redis)} == {("high_close", ts, "firing")}
    await publish(redis, EX, SYM, TRADES[SPLIT + 400:SPLIT + 800], per_entry=20, final=False)
    await engine.drain(final=False)
    assert engine.fast.synced == 2 and (EX, SYM) in engine.fast.replicas


async def test_an_engine_restarted_mid_stream_neither_repeats_nor_loses_an_alert(redis, redis_url, tmp_path):
    """The engine closes bars from trades, stops before candle_builder's candles of them arrive; a new engine takes
    over: it gets those candles (no replica closed them in this process), evaluates them, and the script answers the
    alerts already sent as duplicates; it then syncs its own replica. The alerts equal the run without fast close."""
    _, slow, _ = await _run(redis, redis_url, tmp_path, fast=False)
    await redis.flushall()
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules())
    half = SPLIT + (len(TRADES) - SPLIT) // 2
    first, builder, stream = await _started(redis, redis_url, rules, ["1s", "1m"])
    await publish(redis, EX, SYM, TRADES[SPLIT:half], per_entry=20, final=False)
    await first.drain(final=False)
    assert first.fast.closed > 100
    await run_until_caught_up(redis, builder, [stream])  # candles of the bars the first engine closed: unread by it
    second = AlertEngineApp(Settings(rules_file=rules, redis_url=redis_url), redis)
    await second.drain(final=False)
    assert second.duplicates > 0 and second.fast.closed == 0  # those bars came from the builder, answered as sent
    await publish(redis, EX, SYM, TRADES[half:], per_entry=20, final=True)
    await second.drain(final=False)
    assert second.fast.closed > 100 and second.fast.synced == 1
    await run_until_caught_up(redis, builder, [stream])
    await second.drain(final=True)
    ids = [Alert.decode(f[FIELD]).id for _, f in await redis.xrange(streams.ALERTS)]
    assert len(ids) == len(set(ids)), "an alert was published twice"
    assert await _alerts(redis) == slow
    assert second.fast.mismatched == 0 and second.fast.confirmed == second.fast.closed


async def _run_live(apps, seconds: float, tick) -> None:
    """Run ``apps`` live: after 0.5 s (groups and subscriptions), ``await tick(ts)`` every 2 ms for ``seconds`` (ts:
    this machine's clock, ms), then 0.3 s more; then stop them."""
    halt = asyncio.Event()
    tasks = [asyncio.create_task(app.run(halt)) for app in apps]
    try:
        await asyncio.sleep(0.5)
        end = time.time() + seconds
        while time.time() < end:
            await tick(int(time.time() * 1000))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)
    finally:
        halt.set()
        await asyncio.gather(*tasks)


async def test_live_the_engine_waits_between_closes_and_reads_the_closing_trade_at_once(redis, redis_url, tmp_path):
    """Live (trades stamped with this machine's clock, one entry every 2 ms for 3.2 s; candle_builder and the engine
    running): with ``linger_ms`` 100 the engine reads the trades in the middle of a bar 100 ms at a time — far fewer
    reads than entries — yet every bar's alert is out within 50 ms of the trade that closed it (a plain 100 ms linger
    would make most of them wait up to 100 ms): near a close every read follows at once. Every closed bar alerts."""
    await redis.flushall()
    sym = "LIVE/USDT"
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"rules:\n  - {{name: each, exchange: {EX}, symbols: ['{sym}'], timeframe: 1s, "
                     "frequency: once_per_bar_close, condition: {op: above, right: 0}}\n")
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, sym))
    builder = CandleBuilderApp(settings_for(redis_url, timeframes=["1s"], base_timeframe="1s", history_bars=0,
                                            flat_candles=False, live_candles=False), redis)
    engine = AlertEngineApp(Settings(rules_file=rules, redis_url=redis_url, linger_ms=100, block_ms=50,
                                     registry_poll_s=0.1), redis)
    waits: list[float] = []  # the engine's answer after each read that delivered entries
    linger = engine.consumer.linger

    def counted() -> float:
        waits.append(linger())
        return waits[-1]

    engine.consumer.linger = counted
    bus, stream = Bus(redis), streams.trades(EX, sym)
    closing: dict[int, int] = {}  # bar start -> Redis time (ms) of the entry holding the first trade after the bar
    entries = 0

    async def tick(ts: int) -> None:
        nonlocal entries
        entries += 1
        eid = await bus.publish(stream, encode_trades(EX, sym, [(entries, ts, Decimal("100"), Decimal("0.1"),
                                                                 entries % 2 == 0)]))
        closing.setdefault(ts - ts % 1000 - 1000, int(eid.split(b"-")[0]))

    await _run_live((builder, engine), 3.2, tick)  # (over 3 s: trades in at least 4 seconds, whenever it starts)
    published = {Alert.decode(f[FIELD]).ts: int(i.split(b"-")[0]) for i, f in await redis.xrange(streams.ALERTS)}
    bars = sorted(closing)[1:]  # (the first key is the bar before the first trade)
    assert len(bars) >= 3 and set(bars) <= set(published), (bars, published)
    late = {b: published[b] - closing[b] for b in bars if published[b] - closing[b] > 50}
    assert not late, late
    assert engine.fast.closed >= 2  # those alerts came from the engine's own replica, not candle_builder's candles
    assert 100.0 in waits and 0.0 in waits
    assert len(waits) < entries / 2, (len(waits), entries)



async def test_live_closes_written_together_are_published_together_from_speculations(redis, redis_url, tmp_path):
    """Live, three pairs trading together (one entry per pair every 2 ms, written in one pipeline, prices moving):
    every bar the engine closes was evaluated ahead (``speculate_ms``) and its close only published that; the three
    pairs' closing trades, written together, are read together (``top_up``) and published in one commit — and the
    alerts are exactly those a plain engine gives on candle_builder's candles of the same trades (crossings, a
    cooldown and a resolve depend on every earlier bar's state: a speculation that left or installed the wrong state
    would show)."""
    await redis.flushall()
    syms = ["LA/USDT", "LB/USDT", "LC/USDT"]
    text = ("rules:\n"
            f"  - {{name: each, exchange: {EX}, symbols: ['L*/USDT'], timeframe: 1s, frequency: once_per_bar_close, "
            "condition: {op: above, right: 0}}\n"
            f"  - {{name: cross, exchange: {EX}, symbols: ['L*/USDT'], timeframe: 1s, notify_on_resolve: true, "
            "condition: {op: crosses_up, right: {sma: 2}}}\n"
            f"  - {{name: cool, exchange: {EX}, symbols: ['L*/USDT'], timeframe: 1s, frequency: every_time, "
            "cooldown: 2s, condition: {op: moving_up, amount: 0.01, bars: 1}}\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    for sym in syms:
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, sym))
    builder = CandleBuilderApp(settings_for(redis_url, timeframes=["1s"], base_timeframe="1s", history_bars=0,
                                            flat_candles=False, live_candles=False), redis)
    engine = AlertEngineApp(Settings(rules_file=rules, redis_url=redis_url, block_ms=50, registry_poll_s=0.1), redis)
    rng = random.Random(5)
    price = {sym: Decimal(100) for sym in syms}
    tid = 0

    async def tick(ts: int) -> None:
        nonlocal tid
        async with redis.pipeline(transaction=False) as pipe:
            for sym in syms:
                tid += 1
                # up in even seconds, down in odd ones: closes alternate, so crosses fire and resolve whatever
                # the run's timing (a random walk left some runs without a resolve)
                price[sym] += Decimal((1 if ts // 1000 % 2 == 0 else -1) * rng.randint(0, 3)) / 100
                pipe.xadd(streams.trades(EX, sym), {FIELD: encode_trades(EX, sym, [(tid, ts, price[sym],
                                                                                   Decimal("0.1"), tid % 2)])})
            await pipe.execute()

    await _run_live((builder, engine), 6.0, tick)
    entries = await redis.xrange(streams.ALERTS)
    published = {(a.rule, a.symbol, a.ts, a.state) for a in (Alert.decode(f[FIELD]) for _, f in entries)}
    # the reference: candle_builder's closed candles of the same trades, through a plain engine and a cooldown gate
    reference = AlertEngine(parse_rules(text, "rules.yaml"))
    raw = [f for sym in syms for _, f in await redis.xrange(streams.candles(EX, sym, "1s"))]
    candles = sorted((Candle.decode(f[FIELD]) for f in raw), key=lambda c: (c.ts, c.symbol))
    expected, until = set(), {}
    for c in (c for c in candles if c.closed):
        for f in reference.on_batch([c]):
            if f.cooldown_ms and f.fingerprint in until and f.now_ms < until[f.fingerprint]:
                continue
            until[f.fingerprint] = f.now_ms + f.cooldown_ms
            expected.add((f.alert.rule, f.alert.symbol, f.alert.ts, f.alert.state))
    closed = {c.ts for c in candles if c.closed}
    assert len(closed) >= 3 and expected == published, (expected ^ published)
    assert {state for *_, state in published} == {"firing", "resolved"}
    # the bars the engine closed came from their speculations (but those candle_builder closed first, on a loaded
    # machine, and a pair's first bars); on a quiet one every bar after the first
    assert engine.fast.closed >= 2 * (len(closed) - 1), engine.status()
    assert engine.engine.speculations_taken >= 0.7 * engine.fast.closed, engine.status()
    # ... and most were evaluated and committed before their closing trades were applied (_handle_ahead), the
    # replicas then emitting exactly those bars
    assert engine.closed_ahead >= 0.5 * engine.fast.closed and engine.ahead_mismatched == 0, engine.status()
    assert engine.commits_staged >= 0.5 * engine.closed_ahead / len(syms), engine.status()
    assert engine.consumer.topped_up >= (len(closed) - 1) / 2
    # one commit per close: the three pairs' "each" alerts of a bar carry consecutive ids of one millisecond
    ids = {}
    for i, f in entries:
        a = Alert.decode(f[FIELD])
        if a.rule == "each":
            ids.setdefault(a.ts, []).append(tuple(int(x) for x in i.split(b"-")))
    together = [ts for ts, got in ids.items() if len(got) == 3 and len({ms for ms, _ in got}) == 1]
    assert len(together) >= len(ids) / 2, ids
