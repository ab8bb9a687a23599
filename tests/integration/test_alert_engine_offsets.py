"""A partition's read that publishes nothing (no fire, or only fires in a cooldown this engine started) does not
cost a commit (``offsets_every_ms``): its offsets are saved with
the next commit that has alerts, when the partition goes quiet, or once that long has passed. A crash in between
re-reads from the saved offsets, and the alert ids keep that exact: every alert of the real 2024-08-08 BTCUSDT book
(checked against a plain-Python reference over the whole book) is published once."""

from __future__ import annotations

from decimal import Decimal

from services.alert_engine.app import AlertEngineApp
from services.alert_engine.settings import Settings
from shared import streams
from shared.bus import Bus
from shared.ownership import Ownership
from shared.partitions import partition_of
from tests.support.alerts import count_alerts, read_alerts
from tests.unit.alert_engine.test_ae_feed_operands import _books, _reference

EX, SYM = "binance", "BTC/USDT"
P = partition_of(EX, SYM, 16)
BOOKS = streams.part_books(P)
RULES = f"""
rules:
  - {{name: bid_heavy, exchange: {EX}, symbols: [{SYM}], frequency: every_time, cooldown: 2s,
     condition: {{left: {{imbalance: 10}}, op: greater_than, right: 0}}}}
"""


def _settings(tmp_path, every_ms: int, state_every_ms: int = 2_000) -> Settings:
    """(batch 4: many reads)"""
    (tmp_path / "rules.yaml").write_text(RULES)
    return Settings(rules_file=tmp_path / "rules.yaml", consumer_name="e1", redis_url="redis://unused",
                    clock="exchange", batch=4, offsets_every_ms=every_ms, state_every_ms=state_every_ms)


def _want(books) -> set[tuple[str, int]]:
    """Independent: the updates where the whole book's imbalance within 10 bps is above 0, thinned by the 2 s
    cooldown in exchange time."""
    want, until = set(), None
    for snap, bids, asks in books:
        x = _reference(bids, asks, Decimal(10))["imbalance"]
        if x is not None and x > 0 and (until is None or snap.ts >= until):
            want.add((SYM, snap.ts))
            until = snap.ts + 2000
    return want


async def _saved(redis) -> bytes | None:
    return await redis.hget(streams.part_state(P, streams.GROUP_ALERT_ENGINE), streams.offset_field(BOOKS))


async def _evalsha(redis) -> int:
    """Scripts run (a first EVALSHA answered NOSCRIPT, then loaded and sent again, is one)."""
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) - int(stats.get(f"cmdstat_{c}", {}).get(
        "failed_calls", 0)) for c in ("evalsha", "eval"))


async def test_reads_without_alerts_save_no_offsets_and_a_crash_between_re_reads_exactly(redis, tmp_path):
    books = _books()
    want = _want(books)
    assert len(want) >= 5
    await Bus(redis).publish_many((BOOKS, snap.encode()) for snap, _, _ in books)
    last_id = (await redis.xrevrange(BOOKS, count=1))[0][0]

    app = AlertEngineApp(_settings(tmp_path, every_ms=3_600_000), redis)
    await app.warm_up(EX, SYM)
    pe = app.engines[P]
    owner = Ownership(redis, streams.GROUP_ALERT_ENGINE, "e1", 16, ttl_ms=60_000)
    assert await owner.acquire(P)
    await redis.config_resetstat()
    steps = deferred = published = 0
    while len({a.ts for a in await read_alerts(redis)}) < len(want) // 2:  # about half of the alerts, then a crash
        before = await count_alerts(redis)
        assert await pe.step(owner, block_ms=None)
        steps += 1
        if await count_alerts(redis) > before:
            published += 1
        elif await _saved(redis) != pe.offsets[BOOKS]:
            deferred += 1  # read, evaluated, published nothing: its offset is not in Redis yet
    for _ in range(20):  # on until reads after the last commit (the crash then loses them)
        if await _saved(redis) != pe.offsets[BOOKS]:
            break
        before = await count_alerts(redis)
        assert await pe.step(owner, block_ms=None)
        steps += 1
        published += await count_alerts(redis) > before
    commits = await _evalsha(redis)
    assert steps >= 10 and deferred >= steps // 3
    # the first read commits, then only reads with an alert to publish: not those whose fires all fall in a cooldown
    # this engine's own alert started (every_time: the rule fires on each update while the imbalance holds)
    assert commits <= 1 + published < steps
    saved = await _saved(redis)
    assert saved is not None and saved != pe.offsets[BOOKS]
    await owner.release(P)  # the engine "crashes" here: what it read after its last commit is not saved

    again = AlertEngineApp(_settings(tmp_path, every_ms=3_600_000), redis)
    await again.drain()
    assert await _saved(redis) == last_id  # (the last read found nothing more: the partition is quiet, saved)
    got = [(a.symbol, a.ts) for a in await read_alerts(redis) if a.rule == "bid_heavy"]
    assert set(got) == want
    assert len(got) == len(want)  # every alert once: the re-read ones were duplicates by id, not published


async def test_with_offsets_every_ms_0_every_read_commits(redis, tmp_path):
    books = _books()[:60]
    await Bus(redis).publish_many((BOOKS, snap.encode()) for snap, _, _ in books)
    # (the rule states go with every commit too: the quiet read after the last has nothing left to write)
    app = AlertEngineApp(_settings(tmp_path, every_ms=0, state_every_ms=0), redis)
    await app.warm_up(EX, SYM)
    pe = app.engines[P]
    owner = Ownership(redis, streams.GROUP_ALERT_ENGINE, "e1", 16, ttl_ms=60_000)
    assert await owner.acquire(P)
    await redis.config_resetstat()
    steps = 0
    while await pe.step(owner, block_ms=None):
        steps += 1
        assert await _saved(redis) == pe.offsets[BOOKS]
    assert steps == 15 and await _evalsha(redis) == steps
    await owner.release(P)
