"""candle_builder against a real redis-server, on real recordings: every closed candle equals pandas' resample.

The expected candles are computed with pandas from the CSV (Decimal object columns, no float), independently of
services.candle_builder.core (tests/support/candles.py).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgpack
import pytest

from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings
from shared import streams
from shared.bus import FIELD, Bus
from shared.feed_codec import encode_trades, encode_watermark
from shared.partitioned import caught_up
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Candle, Trade, Watermark
from shared.subscriptions import Subscriptions
from tests.support.candles import trades_stream
from tests.conftest import shared_data

# The reference helpers (tests/support/candles.py); other tests import some of them from here.
from tests.support.candles import RECORDINGS, TIMEFRAMES, check_against_pandas, pandas_candles, publish  # noqa: F401
from tests.support.candles import read_candles, read_trades, run_until_caught_up, settings_for  # noqa: F401
from tests.support.candles import candles_stream, read_live, registered


@pytest.mark.parametrize("name", sorted(RECORDINGS))
async def test_every_closed_candle_equals_pandas(redis, redis_url, name):
    exchange, symbol, rel = RECORDINGS[name]
    path = shared_data(rel)
    trades = read_trades(path)
    await publish(redis, exchange, symbol, trades, per_entry=50)
    tfs = TIMEFRAMES + (["4h", "1d"] if name == "xrpeth" else [])
    await run_until_caught_up(redis, settings_for(redis_url, timeframes=tfs), [trades_stream(exchange, symbol)])
    for tf in tfs:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)
    registry = {tf for _, _, tf in await registered(redis)}
    assert registry == set(tfs)


async def test_first_and_last_trade_ids(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    trades = read_trades(shared_data(rel))
    await publish(redis, exchange, symbol, trades, per_entry=100)
    await run_until_caught_up(redis, settings_for(redis_url), [trades_stream(exchange, symbol)])
    for c in await read_candles(redis, exchange, symbol, "5m"):
        inside = [t.id for t in trades if c.ts <= t.ts < c.ts + 300_000]
        assert (c.first_trade_id, c.last_trade_id) == (inside[0], inside[-1])


async def test_restart_mid_stream_gives_identical_candles(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    stream = trades_stream(exchange, symbol)
    await publish(redis, exchange, symbol, trades[:7000], per_entry=37, final=False)
    # The first builder stops somewhere in the middle (after its current batch), a second one resumes.
    await run_until_caught_up(redis, settings_for(redis_url, read_count=20), [stream], stop_early=3000)
    await publish(redis, exchange, symbol, trades[7000:], per_entry=37)
    await run_until_caught_up(redis, settings_for(redis_url, read_count=20), [stream])
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)


async def test_a_commit_lost_with_its_replica_is_redone_once(redis, redis_url):
    """A builder that dies between its read and its fenced commit leaves state and offset as they were: the next owner
    reads the same entries again and every candle is published once."""
    exchange, symbol, rel = RECORDINGS["kraken"]
    path = shared_data(rel)
    trades = read_trades(path)
    await publish(redis, exchange, symbol, trades[:1000], per_entry=25, final=False)
    await run_until_caught_up(redis, settings_for(redis_url))
    await publish(redis, exchange, symbol, trades[1000:], per_entry=25)
    app = CandleBuilderApp(settings_for(redis_url, read_count=5), redis)
    fenced = app.ownership.fenced
    calls = 0

    async def fails_at_its_third_commit(partition, commands):
        nonlocal calls
        calls += 1
        if calls == 3:  # what a crash between the read and the script leaves: nothing written
            raise RuntimeError("killed before the commit")
        return await fenced(partition, commands)

    app.ownership.fenced = fails_at_its_third_commit  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        for _ in range(1500):
            if calls > 3 and await caught_up(redis, 16, streams.GROUP_CANDLE_BUILDER, streams.part_trades):
                break
            await asyncio.sleep(0.02)
        assert app.workers.restarts == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)


async def test_live_candles_are_published_in_progress(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    trades = read_trades(shared_data(rel))
    await publish(redis, exchange, symbol, trades[:500], per_entry=50, final=False)
    await run_until_caught_up(redis, settings_for(redis_url, live_throttle_ms=0), [trades_stream(exchange, symbol)])
    live = await read_live(redis, exchange, symbol, "5m")
    assert live and not any(c.closed for c in live)
    last = live[-1]
    inside = [t for t in trades[:500] if last.ts <= t.ts < last.ts + 300_000]
    assert last.volume == sum((t.amount for t in inside), Decimal(0))
    assert last.trades == len(inside) and last.close == inside[-1].price
    # the latest one of each series is kept for the API (its partition's part_live_latest)
    for tf in TIMEFRAMES:
        latest = await redis.hget(streams.part_live_latest(partition_of(exchange, symbol, DEFAULT_PARTITIONS)),
                                  streams.registry_member(exchange, symbol, tf))
        assert Candle.decode(latest) == (await read_live(redis, exchange, symbol, tf))[-1]


async def test_without_flat_candles_live_candles_name_the_closed_bar_before_them(redis, redis_url):
    """``flat_candles: false`` on the sparse XRP/ETH day (most minutes have no trade): every in-progress candle
    carries in ``prev_ts`` the newest bucket with trades before it (pandas), often several minutes back — what lets
    alert_engine evaluate it intrabar (``test_ae_live_lag.py``)."""
    exchange, symbol, rel = RECORDINGS["xrpeth"]
    path = shared_data(rel)
    trades = read_trades(path)[:1500]
    await publish(redis, exchange, symbol, trades, per_entry=1, final=False)
    await run_until_caught_up(redis, settings_for(redis_url, live_throttle_ms=0, flat_candles=False, read_count=3),
                              [trades_stream(exchange, symbol)])
    after_gap = {}
    for tf, ms in (("1m", 60_000), ("5m", 300_000)):
        expected = pandas_candles(path, tf)
        buckets = sorted(int(ts) for ts, n in expected["trades"].items() if n > 0)
        live = await read_live(redis, exchange, symbol, tf)
        assert len(live) > 100
        for c in live:
            before = [b for b in buckets if b < c.ts]
            assert c.prev_ts == (before[-1] if before else None), (tf, c.ts)
        after_gap[tf] = len({c.ts for c in live if c.prev_ts is not None and c.prev_ts < c.ts - ms})
    assert after_gap["1m"] >= 20, after_gap  # bars after empty minutes


def _delivered_late(trades: list[Trade], late_idx: set[int], by: int) -> list[Trade]:
    """``trades`` in delivery order: those at ``late_idx`` come ``by`` trades later than their place (the last ones
    at the end)."""
    order: list[Trade] = []
    held: dict[int, list[Trade]] = {}
    for i, t in enumerate(trades):
        if i in late_idx:
            held.setdefault(i + by, []).append(t)
        else:
            order.append(t)
        order.extend(held.pop(i, []))
    for rest in held.values():
        order.extend(rest)
    return order


async def test_late_trades_within_the_window_revise_candles_to_equal_pandas(redis, redis_url):
    """Some trades arrive a few minutes late (as after a reconnect backfill): the last revision equals pandas."""
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    late_idx = set(range(3000, 19000, 997))  # every ~1000th trade, delivered 2000 trades later
    order = _delivered_late(trades, late_idx, 2000)
    assert len(order) == len(trades)
    await publish(redis, exchange, symbol, order, per_entry=40)
    app = await run_until_caught_up(redis, settings_for(redis_url, lateness_ms=10 * 60_000),
                                    [trades_stream(exchange, symbol)])
    assert app.status()["late_dropped"] == 0
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf, revised=True)
    revised_minutes = {c.ts for c in await read_candles(redis, exchange, symbol, "1m") if c.revision}
    late_minutes = {trades[i].ts // 60_000 * 60_000 for i in late_idx}
    assert revised_minutes and revised_minutes <= late_minutes


async def test_late_trades_after_a_restart_revise_what_the_first_builder_closed(redis, redis_url):
    """The kept bars (the lateness window's closed bars) are part of a pair's saved state: a second builder resuming
    from Redis revises the bars the first one closed with the trades that come late after the restart, and the last
    revisions equal pandas."""
    exchange, symbol, rel = RECORDINGS["btcusdt"]
    path = shared_data(rel)
    trades = read_trades(path)
    late_idx = set(range(2000, 9000, 499))  # delivered 3000 trades later: those before 6000 after the restart
    order = _delivered_late(trades, late_idx, 3000)
    settings = settings_for(redis_url, lateness_ms=30 * 60_000, read_count=20)
    await publish(redis, exchange, symbol, order[:6000], per_entry=40, final=False)
    await run_until_caught_up(redis, settings)
    await publish(redis, exchange, symbol, order[6000:], per_entry=40)
    app = await run_until_caught_up(redis, settings)
    assert app.status()["late_dropped"] == 0
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf, revised=True)
    revised = {c.ts for c in await read_candles(redis, exchange, symbol, "1m") if c.revision}
    before_restart = {trades[i].ts // 60_000 * 60_000 for i in late_idx if i < 6000 - 3000}
    assert before_restart and before_restart <= revised


async def _run_for(redis, settings: Settings, seconds: float) -> CandleBuilderApp:
    app = CandleBuilderApp(settings, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)
    return app


async def test_a_quiet_live_market_closes_its_candles_on_time(redis, redis_url):
    import time

    now = int(time.time() * 1000)
    second = now // 1000 * 1000
    trades = [Trade(i, second + 10 * i, Decimal(100 + i), Decimal("0.5"), i % 2 == 0) for i in range(5)
              if second + 10 * i <= now]
    await publish(redis, "live", "BTC/USDT", trades, per_entry=2, final=False)
    settings = settings_for(redis_url, timeframes=["1s", "1m"], close_grace_ms=200, timer_every_ms=20)
    app = CandleBuilderApp(settings, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        deadline = second + 1000 + 200 + 1500  # bucket end + grace + slack for this shared machine
        while not await redis.xlen(candles_stream("live", "BTC/USDT", "1s")):
            assert time.time() * 1000 < deadline, "the 1s candle was not closed on time"
            await asyncio.sleep(0.02)
        closed_at = time.time() * 1000
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert closed_at >= second + 1000 + 200  # never before bucket end + grace
    [candle] = await read_candles(redis, "live", "BTC/USDT", "1s")
    assert candle.ts == second and candle.trades == len(trades)
    assert candle.volume == sum((t.amount for t in trades), Decimal(0)) and candle.close == trades[-1].price
    assert app.timer_closed >= 1


async def test_a_replay_is_never_closed_by_the_clock(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["kraken"]
    trades = read_trades(shared_data(rel))
    await publish(redis, exchange, symbol, trades, per_entry=50, final=False)
    settings = settings_for(redis_url, timeframes=["1m", "5m"], close_grace_ms=0, timer_every_ms=20)
    app = await _run_for(redis, settings, 1.0)
    assert app.trades_in == len(trades) and app.timer_closed == 0
    last_minute = trades[-1].ts // 60_000 * 60_000
    assert (await read_candles(redis, exchange, symbol, "1m"))[-1].ts == last_minute - 60_000


async def test_subscribed_timeframes_are_built_and_others_not(redis, redis_url):
    exchange, symbol, rel = RECORDINGS["xrpeth"]
    path = shared_data(rel)
    trades = read_trades(path)
    await Subscriptions(redis, ttl_ms=3_600_000).publish("engine-1", {(exchange, symbol, "30m"): 0})
    await publish(redis, exchange, symbol, trades, per_entry=50)
    await run_until_caught_up(redis, settings_for(redis_url, timeframes=["1m"]), [trades_stream(exchange, symbol)])
    check_against_pandas(await read_candles(redis, exchange, symbol, "30m"), path, "30m")
    assert await redis.xlen(candles_stream(exchange, symbol, "4h")) == 0


async def test_a_gap_marker_flags_the_candles_it_overlaps_incomplete(redis, redis_url):
    from shared.feed_codec import encode_gap
    from shared.schemas import GapMarker

    exchange, symbol, rel = RECORDINGS["btcusdt"]
    trades = read_trades(shared_data(rel))
    first, rest = trades[:5000], trades[6500:]  # ~1000 trades lost in a reconnect
    gap = GapMarker(exchange, symbol, first[-1].ts + 1, rest[0].ts - 1, "reconnect")
    await publish(redis, exchange, symbol, first, per_entry=50, final=False)
    await Bus(redis).publish(trades_stream(exchange, symbol), encode_gap(gap))
    await publish(redis, exchange, symbol, rest, per_entry=50)
    await run_until_caught_up(redis, settings_for(redis_url), [trades_stream(exchange, symbol)])
    flagged = 0
    for tf, ms in (("1m", 60_000), ("5m", 300_000)):
        for c in await read_candles(redis, exchange, symbol, tf):
            overlaps = c.ts <= gap.end and gap.start < c.ts + ms
            assert c.incomplete == overlaps, (tf, c.ts)
            flagged += c.incomplete
    assert flagged >= 2


POISON = [  # (price, amount, reason fragment): each written as a real entry, as a faulty producer would
    ("NaN", "1", "got 'NaN'"), ("Infinity", "1", "got 'Infinity'"), ("0", "1", "got '0'"), ("-5", "1", "got '-5'"),
    (61000.5, "1", "got a float (61000.5)"), ("61000.5", "0", "amount must be"), ("61000.5", -1, "amount must be"),
    ("61000.5", 0.5, "got a float (0.5)"),
]


async def test_poison_trades_go_to_the_dead_letter_stream_with_their_reason_and_the_rest_flows(redis, redis_url):
    """Entries with a NaN, infinite, zero or negative price or amount, or a float one (only exact decimal text or
    integers are valid), injected among a real recording: each is dead-lettered naming what is wrong — alone or
    inside a batch of valid trades — and every candle still equals pandas' candles of the valid trades."""
    exchange, symbol, rel = RECORDINGS["kraken"]
    path = shared_data(rel)
    trades = read_trades(path)
    stream = trades_stream(exchange, symbol)
    await publish(redis, exchange, symbol, trades[:1000], per_entry=50, final=False)
    ts = trades[999].ts
    poison = []
    for n, (price, amount, _) in enumerate(POISON):
        rows = [[-n - 1, ts, price, amount, 1]]
        if n % 2:  # inside a batch of valid trades: the whole entry is refused, not a part of it
            rows = [[-100 - i, ts, "61000", "1", 0] for i in range(12)] + rows
        poison.append(msgpack.packb({"v": 1, "k": "trades", "x": exchange, "s": symbol, "t": rows}))
        await redis.xadd(stream, {FIELD: poison[-1]})
    await publish(redis, exchange, symbol, trades[1000:], per_entry=50)
    await run_until_caught_up(redis, settings_for(redis_url), [stream])
    dead = await redis.xrange(streams.DEAD_LETTER)
    assert [d[1][FIELD] for d in dead] == poison  # (small entries: kept whole)
    for (_, fields), (_, _, fragment) in zip(dead, POISON):
        assert fields[b"source"] == stream.encode() and fields[b"group"] == b"candle_builder"
        assert b"undecodable" in fields[b"reason"] and fragment.encode() in fields[b"reason"], fields[b"reason"]
    for tf in TIMEFRAMES:
        check_against_pandas(await read_candles(redis, exchange, symbol, tf), path, tf)


async def test_pairs_of_one_partition_are_committed_together_and_each_equals_pandas(redis, redis_url):
    """Two pairs sharing a partition (with 1 partition, every pair does) are read from one stream and committed
    together; each keeps its order (candles equal pandas) and a poison entry of one only costs itself."""
    settings = settings_for(redis_url, partitions=1)
    names = ["btcusdt", "kraken"]
    stream = streams.part_trades(0)
    bus = Bus(redis)
    for name in names:
        exchange, symbol, rel = RECORDINGS[name]
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
        trades = read_trades(shared_data(rel))
        entries = [encode_trades(exchange, symbol, trades[i:i + 50]) for i in range(0, len(trades), 50)]
        if name == "kraken":
            entries.insert(10, encode_trades(exchange, symbol,
                                             [Trade(-1, trades[499].ts, Decimal("NaN"), Decimal(1), True)]))
        entries.append(encode_watermark(Watermark(exchange, symbol, trades[-1].ts, final=True)))
        await bus.publish_many((stream, e) for e in entries)
    await run_until_caught_up(redis, settings)
    assert len(await redis.xrange(streams.DEAD_LETTER)) == 1
    for name in names:
        exchange, symbol, rel = RECORDINGS[name]
        for tf in TIMEFRAMES:
            check_against_pandas(await read_candles(redis, exchange, symbol, tf, partitions=1), shared_data(rel), tf)


async def test_series_streams_are_trimmed_per_timeframe_and_the_partition_stream_by_its_own_length(redis, redis_url):
    """``candle_retention`` trims each series' stream by its timeframe (approximately: whole stream nodes of 100
    entries), other timeframes keep ``candles_maxlen``, ``part_candles`` keeps ``part_candles_maxlen``; what is kept
    is the newest candles, equal to pandas'."""
    exchange, symbol, rel = RECORDINGS["xrpeth"]  # a whole day: 1,440 1m candles, 288 5m
    path = shared_data(rel)
    await publish(redis, exchange, symbol, read_trades(path), per_entry=50)
    settings = settings_for(redis_url, timeframes=["1m", "5m"], candle_retention={"1m": 150}, candles_maxlen=10_000,
                            part_candles_maxlen=500, live_candles=False)
    await run_until_caught_up(redis, settings)
    one = await read_candles(redis, exchange, symbol, "1m")
    assert 150 <= len(one) < 300  # MAXLEN ~: at most one stream node (100 entries) over
    want = pandas_candles(path, "1m")
    assert [c.ts for c in one] == list(want.index[-len(one):])
    assert [c.close for c in one] == list(want["close"].ffill().iloc[-len(one):])  # (flat candles: previous close)
    check_against_pandas(await read_candles(redis, exchange, symbol, "5m"), path, "5m")  # 288 < candles_maxlen: all
    part = streams.part_candles(partition_of(exchange, symbol, DEFAULT_PARTITIONS))
    assert 500 <= await redis.xlen(part) < 700
