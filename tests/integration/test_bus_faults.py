"""The bus under faults, against real redis-servers: bounded dead letters, oversized entries refused at the producer,
dead consumers pruned, subscriptions that die with their subscriber, and a Redis outage told once per service."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
from decimal import Decimal


from services.candle_builder.app import CandleBuilderApp
from services.candle_builder.settings import Settings as BuilderSettings
from services.notifier.app import NotifierApp
from services.notifier.settings import Settings as NotifierSettings
from shared import streams
from shared.bus import FIELD, Batch, Bus, BusSettings, Consumer, ConsumerSettings
from shared.feed_codec import decode_feed, encode_trades
from shared.runtime import connect
from shared.schemas import Trade
from shared.subscriptions import Subscriptions
from tests.conftest import REPO

STREAM = streams.part_trades(0)


def entry(i: int) -> bytes:
    return encode_trades("test", "BTC/USDT", [Trade(i, 1000 + i, Decimal("1.5"), Decimal("2"), True)])


async def _ignore(batch: Batch) -> None:
    return None


def consumer_of(bus: Bus, name: str = "c1", handler=_ignore, **options) -> Consumer:
    return Consumer(bus, ConsumerSettings(group="g", consumer=name, **options), decode=decode_feed, handler=handler,
                    streams=[STREAM])


# ---- dead letters: bounded ------------------------------------------------------------------------------------------


async def test_a_20_mb_entry_is_refused_at_the_producer_and_kept_as_a_bounded_dead_letter(redis):
    bus = Bus(redis)  # defaults: entries over 1 MB refused, 1 KiB of a dead payload kept
    huge = os.urandom(20 * 1024 * 1024)
    assert await bus.publish(STREAM, huge) is None
    replies = await bus.publish_many([(STREAM, entry(1)), (STREAM, huge), (STREAM, entry(2))])
    assert len(replies) == 3
    assert [decode_feed(f[FIELD]).trades[0].id for _, f in await redis.xrange(STREAM)] == [1, 2]  # only the valid
    dead = await redis.xrange(streams.DEAD_LETTER)
    assert len(dead) == 2 and bus.refused == 2
    for _, fields in dead:
        assert fields[b"source"] == STREAM.encode() and b"oversized: 20971520 bytes" in fields[b"reason"]
        assert int(fields[b"size"]) == len(huge) and fields[b"sha256"].decode() == hashlib.sha256(huge).hexdigest()
        assert fields[FIELD] == huge[:1024] and fields[b"truncated"] == b"1"
    assert await redis.memory_usage(streams.DEAD_LETTER) < 64 * 1024  # not 40 MB


async def test_the_dead_letter_stream_and_each_stored_payload_are_capped(redis):
    """Undecodable entries read by a consumer (written around the bus, as a faulty producer would): the dead-letter
    stream stays near ``dead_letter_maxlen`` and each record keeps only ``dead_letter_keep_bytes`` of the payload."""
    bus = Bus(redis, BusSettings(dead_letter_maxlen=100, dead_letter_keep_bytes=16))
    payload = b"\xc1" + b"x" * 5000
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(1000):
            pipe.xadd(STREAM, {FIELD: payload})
        await pipe.execute()
    consumer = consumer_of(bus)
    assert await consumer.drain() == 1000 and consumer.dead_lettered == 1000
    length = await redis.xlen(streams.DEAD_LETTER)
    assert 100 <= length <= 300, length  # approximate MAXLEN trims whole nodes (100 entries each)
    last = (await redis.xrevrange(streams.DEAD_LETTER, count=1))[0][1]
    assert last[FIELD] == payload[:16] and int(last[b"size"]) == len(payload)
    assert last[b"sha256"].decode() == hashlib.sha256(payload).hexdigest() and b"undecodable" in last[b"reason"]
    assert await bus.caught_up(STREAM, "g")


# ---- dead consumers are pruned --------------------------------------------------------------------------------------


async def _consumers(redis) -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in await redis.xinfo_consumers(STREAM, "g")}


async def test_idle_consumers_without_pending_entries_are_deleted_by_a_live_one(redis):
    """Killed instances (here: consumers that read once and went away) are removed from the group once idle longer
    than ``dead_consumer_idle_ms`` — but one with entries still pending is kept (its entries stay claimable)."""
    bus = Bus(redis)
    await bus.publish_many((STREAM, entry(i)) for i in range(3))
    await bus.ensure_group(STREAM, "g")
    for name in ("killed-1", "killed-2"):
        await redis.xreadgroup("g", name, {STREAM: "0"}, count=1)  # created, nothing delivered (id 0: own pending)
    await redis.xreadgroup("g", "killed-with-work", {STREAM: ">"}, count=1)  # one entry pending there
    await asyncio.sleep(0.3)
    consumer = consumer_of(bus, "alive", dead_consumer_idle_ms=200, claim_idle_ms=3_600_000)
    await consumer.drain()
    assert await _consumers(redis) == {"alive": 0, "killed-with-work": 1}
    assert consumer.pruned == 2


# ---- subscriptions die with their subscriber -------------------------------------------------------------------------

SUBSCRIBER = textwrap.dedent("""
    import asyncio, sys
    from shared.runtime import connect, heartbeat
    from shared.subscriptions import Subscriptions

    async def main():
        redis = connect(sys.argv[1])
        subs = Subscriptions(redis, ttl_ms=600)
        await subs.publish("engine-doomed", {("binance", "BTC/USDT", "30m"): 50, ("binance", "ETH/USDT", "4h"): 0})
        print("published", flush=True)
        await heartbeat(redis, "doomed", asyncio.Event(), every=0.2, beat=lambda: subs.refresh("engine-doomed"))

    asyncio.run(main())
""")


async def test_a_sigkilled_subscribers_series_vanish_within_a_few_heartbeats_and_a_live_ones_stay(redis, redis_url):
    live = Subscriptions(redis, ttl_ms=600)
    await live.publish("api-1", {("binance", "BTC/USDT", "30m"): 20, ("kraken", "BTC/USD", "1h"): 0})
    proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, redis_url], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "published"
        for _ in range(8):  # well past the TTL: each one's heartbeat keeps its series alive
            await live.refresh("api-1")
            await asyncio.sleep(0.2)
        both = await live.read_all()
        assert both == {("binance", "BTC/USDT", "30m"): 50, ("binance", "ETH/USDT", "4h"): 0,
                        ("kraken", "BTC/USD", "1h"): 0}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        while ("binance", "ETH/USDT", "4h") in await live.read_all():
            await live.refresh("api-1")  # (the live subscriber's own heartbeat)
            assert loop.time() - killed_at < 3.0, "the killed subscriber's series did not expire"
            await asyncio.sleep(0.05)
        assert await live.read_all() == {("binance", "BTC/USDT", "30m"): 20, ("kraken", "BTC/USD", "1h"): 0}
        assert await redis.smembers(streams.SUBSCRIBERS) == {b"api-1"}  # the index pruned too
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- a Redis outage is told once per service ------------------------------------------------------------------------


async def test_a_redis_outage_gives_one_warning_and_one_recovery_line_per_service(own_redis, tmp_path, caplog):
    """candle_builder (consumer, discovery, closing timer, lease-less heartbeat) and notifier run while their
    redis-server is stopped for 3 s and started again: each logs exactly one 'unreachable' and one 'back' line, and no
    error or traceback at all."""
    redis = connect(own_redis.url)
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member("test", "BTC/USDT"))
    builder = CandleBuilderApp(BuilderSettings(redis_url=own_redis.url, block_ms=50, discover_every_s=0.05,
                                               timer_every_ms=50), redis)
    notifier = NotifierApp(NotifierSettings(jsonl_path=tmp_path / "a.jsonl", console=False, consumer_name="n1",
                                            block_ms=50), redis)
    stop = asyncio.Event()
    caplog.set_level(logging.DEBUG)
    tasks = [asyncio.create_task(builder.run(stop)), asyncio.create_task(notifier.run(stop))]
    try:
        await asyncio.sleep(0.5)
        caplog.clear()
        own_redis.stop()
        await asyncio.sleep(3.0)
        own_redis.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while builder.bus.outage.down or notifier.bus.outage.down or not builder.bus.outage.outages:
            assert loop.time() < deadline, "the services did not see Redis come back"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    for service in ("candle_builder", "notifier"):
        mine = [r.getMessage() for r in records if r.getMessage().startswith(f"{service}: Redis")]
        assert len(mine) == 2, mine
        assert "is unreachable" in mine[0] and "is back after" in mine[1], mine
    others = [r for r in records if r.getMessage().split(":")[0] not in ("candle_builder", "notifier")
              or r.levelno >= logging.ERROR or r.exc_info]
    assert not others, [(r.name, r.getMessage()) for r in others]


HOLDER = textwrap.dedent("""
    import asyncio, sys
    from shared.runtime import connect
    from shared.subscriptions import HeldSeries

    async def main():
        held = HeldSeries(connect(sys.argv[1]), kind="client", ttl_ms=600)
        await held.hold([("kraken", "BTC/USD", "1h")])
        print("held", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_held_series_count_views_in_memory_and_a_killed_holder_leaves_nothing(redis, redis_url):
    """Two views of one series hold it once; the last release withdraws it at once; a SIGKILLed holder's series
    vanish within the TTL and the grace period, while a live holder keeps its own."""
    from shared.subscriptions import HeldSeries

    btc, eth, kraken = ("binance", "BTC/USDT", "1m"), ("binance", "ETH/USDT", "5m"), ("kraken", "BTC/USD", "1h")
    views = HeldSeries(redis, kind="api", ttl_ms=600)
    subs = Subscriptions(redis, ttl_ms=600)  # the reader's grace period after a set expired: its TTL
    await views.hold([btc])
    await views.hold([btc, eth])
    await views.release([btc])
    assert await subs.read_all() == {btc: 0, eth: 0}  # one view still watches btc
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        await asyncio.sleep(1.2)  # two TTLs: each holder's refresh keeps its series
        assert await subs.read_all() == {btc: 0, eth: 0, kraken: 0}
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for _ in range(50):  # gone within the TTL and the reader's grace period (0.6 s each)
            if kraken not in await subs.read_all():
                break
            await asyncio.sleep(0.1)
        assert await subs.read_all() == {btc: 0, eth: 0}
    finally:
        proc.kill()
    await views.release([btc, eth])
    assert await subs.read_all() == {} and await redis.smembers(streams.SUBSCRIBERS) == set()
