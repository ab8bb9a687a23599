"""The Redis Streams bus against a real redis-server: groups, ack-after-success, recovery, claiming, dead letters."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared import streams
from shared.bus import FIELD, Batch, Bus, BusSettings, Consumer, ConsumerSettings
from shared.feed_codec import decode_feed, encode_trades
from shared.schemas import Trade, TradeBatch
from tests.support.redis_proxy import CuttingProxy

STREAM = streams.part_trades(0)
STREAM_B = streams.part_trades(1)


def consumer_of(bus: Bus, handle, names=(STREAM,), name: str = "c1", **options) -> Consumer:
    """A consumer in group ``g`` reading trades streams with ``decode_feed``."""
    return Consumer(bus, ConsumerSettings(group="g", consumer=name, **options), decode=decode_feed, handler=handle,
                    streams=names)


def batch_of(n0: int, n: int) -> bytes:
    return encode_trades("test", "BTC/USDT", [Trade(i, 1000 + i, Decimal("1.5"), Decimal("2"), i % 2 == 0)
                                             for i in range(n0, n0 + n)])


async def test_consumer_receives_every_entry_once_and_acks(redis):
    bus = Bus(redis)
    await bus.publish_many((STREAM, batch_of(i * 10, 10)) for i in range(50))
    seen: list[int] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        for entry in batch.entries:
            seen.extend(t.id for t in entry.value.trades)

    consumer = consumer_of(bus, handle, count=7)
    assert await consumer.drain() == 50
    assert seen == list(range(500))
    assert await bus.caught_up(STREAM, "g")
    assert (await bus.group_status(STREAM, "g")) == {"pending": 0, "lag": 0, "length": 50}


async def test_undecodable_entries_go_to_dead_letter_and_the_rest_flows(redis):
    bus = Bus(redis)
    await bus.publish(STREAM, batch_of(0, 3))
    await bus.publish(STREAM, b"\xc1garbage")
    await redis.xadd(STREAM, {b"other": b"x"})
    await bus.publish(STREAM, batch_of(3, 3))
    seen: list[int] = []

    async def handle(batch):
        for entry in batch.entries:
            seen.extend(t.id for t in entry.value.trades)

    consumer = consumer_of(bus, handle)
    await consumer.drain()
    assert seen == [0, 1, 2, 3, 4, 5]
    dead = await redis.xrange(streams.DEAD_LETTER)
    assert len(dead) == 2
    assert dead[0][1][FIELD] == b"\xc1garbage" and dead[0][1][b"source"] == STREAM.encode()
    assert b"undecodable" in dead[0][1][b"reason"] and b"no 'd' field" in dead[1][1][b"reason"]
    assert await bus.caught_up(STREAM, "g")


async def test_handler_failure_means_no_ack_then_retry_then_dead_letter(redis):
    bus = Bus(redis)
    for i in range(4):
        await bus.publish(STREAM, batch_of(i, 1))
    attempts: dict[int, int] = {}
    seen: list[int] = []

    async def handle(batch):
        for entry in batch.entries:
            tid = entry.value.trades[0].id
            attempts[tid] = attempts.get(tid, 0) + 1
            if tid == 2:
                raise RuntimeError("poison")
        for entry in batch.entries:
            seen.append(entry.value.trades[0].id)

    consumer = consumer_of(bus, handle, max_deliveries=3)
    await consumer.drain()
    # 0 and 1 succeed once; 2 is tried until its third delivery, then dead-lettered; 3 waits behind it, then succeeds.
    assert seen == [0, 1, 3]
    assert attempts[2] >= 3  # tried alone on deliveries 1, 2 and 3 (plus in batches)
    dead = await redis.xrange(streams.DEAD_LETTER)
    assert len(dead) == 1 and b"handler failed 3 times" in dead[0][1][b"reason"]
    assert decode_feed(dead[0][1][FIELD]).trades[0].id == 2
    assert await bus.caught_up(STREAM, "g")


async def test_a_restarted_consumer_rereads_its_own_unacked_entries(redis):
    bus = Bus(redis)
    await bus.publish(STREAM, batch_of(0, 1))
    # A first run reads the entry and "crashes" before acking: simulate with a raw XREADGROUP.
    await bus.ensure_group(STREAM, "g")
    await redis.xreadgroup("g", "c1", {STREAM: ">"}, count=10)
    seen = []

    async def handle(batch):
        seen.extend(e.value.trades[0].id for e in batch.entries)

    consumer = consumer_of(bus, handle)
    await consumer.drain()
    assert seen == [0]
    assert await bus.caught_up(STREAM, "g")


async def test_stale_entries_of_a_dead_consumer_are_claimed(redis):
    bus = Bus(redis)
    await bus.publish(STREAM, batch_of(0, 1))
    await bus.ensure_group(STREAM, "g")
    await redis.xreadgroup("g", "dead", {STREAM: ">"}, count=10)
    await asyncio.sleep(0.06)
    seen = []

    async def handle(batch):
        seen.extend(e.value.trades[0].id for e in batch.entries)

    consumer = consumer_of(bus, handle, name="alive", claim_idle_ms=50)
    await consumer.drain()
    assert seen == [0]
    assert await bus.caught_up(STREAM, "g")


async def test_ack_with_puts_the_ack_in_the_handlers_transaction(redis):
    bus = Bus(redis)
    await bus.publish(STREAM, batch_of(0, 2))

    async def handle(batch):
        async with redis.pipeline(transaction=True) as tx:
            tx.set("state", "after-batch")
            batch.ack_with(tx)
            await tx.execute()

    consumer = consumer_of(bus, handle)
    await consumer.drain()
    assert await redis.get("state") == b"after-batch"
    assert await bus.caught_up(STREAM, "g")


async def test_publish_trims_approximately(redis):
    bus = Bus(redis, BusSettings(maxlen=100))
    await bus.publish_many((STREAM, batch_of(i, 1)) for i in range(2000))
    length = await redis.xlen(STREAM)
    assert 100 <= length < 2000


async def test_run_survives_a_redis_restart(own_redis):
    from shared.runtime import connect
    client = connect(own_redis.url)
    bus = Bus(client)
    seen = []

    async def handle(batch):
        seen.extend(e.value.trades[0].id for e in batch.entries)

    consumer = consumer_of(bus, handle, block_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await bus.publish(STREAM, batch_of(0, 1))
    await _until(lambda: seen == [0])
    own_redis.stop()  # SIGTERM: the AOF is flushed
    await asyncio.sleep(0.3)
    own_redis.start()
    await bus.publish(STREAM, batch_of(1, 1))
    await _until(lambda: seen == [0, 1], timeout=15)
    stop.set()
    await task
    await client.aclose()


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


async def _consume_until(consumer: Consumer, predicate, settle: float = 0.0) -> None:
    """Run ``consumer`` until ``predicate()`` holds, ``settle`` s more (a duplicate would show up then), and stop it
    (within 5 s, whatever happened)."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await _until(predicate)
        await asyncio.sleep(settle)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_entries_after_a_failed_one_wait_for_it(redis):
    """Order within a stream holds through retries: nothing newer is handled before the failed entry succeeds."""
    bus = Bus(redis)
    await bus.publish(STREAM, batch_of(0, 1))
    seen: list[int] = []
    failures = {0: 2}  # entry 0 fails twice, then succeeds

    async def handle(batch):
        for entry in batch.entries:
            tid = entry.value.trades[0].id
            if failures.get(tid, 0) > 0:
                failures[tid] -= 1
                raise RuntimeError("transient")
            seen.append(tid)

    consumer = consumer_of(bus, handle, max_deliveries=10, block_ms=20)
    assert await consumer.poll(20) == 1  # fails, will be retried
    await bus.publish(STREAM, batch_of(1, 1))
    await bus.publish(STREAM, batch_of(2, 1))
    for _ in range(200):
        await consumer.poll(20)
        if len(seen) == 3:
            break
    assert seen == [0, 1, 2]


async def _publish_two_streams(bus: Bus, n: int) -> dict[str, list[int]]:
    """n one-trade entries on each of two streams, interleaved; returns the trade ids published per stream."""
    await bus.publish_many(pair for i in range(n) for pair in ((STREAM, batch_of(i, 1)), (STREAM_B, batch_of(i, 1))))
    return {STREAM: list(range(n)), STREAM_B: list(range(n))}


def _per_stream(pairs: list[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {STREAM: [], STREAM_B: []}
    for stream, tid in pairs:
        out[stream].append(tid)
    return out


async def _nothing_pending(redis, bus: Bus) -> bool:
    return all([await bus.caught_up(s, "g") for s in (STREAM, STREAM_B)]) and \
        all([(await redis.xpending(s, "g"))["pending"] == 0 for s in (STREAM, STREAM_B)])


async def test_every_stream_of_a_read_comes_as_one_batch_in_order_and_a_transaction_acks_it(redis):
    """Two streams read together: each batch holds entries of both (one handler commit per read), each stream's
    entries in order; state and XACKs land in one MULTI/EXEC."""
    bus = Bus(redis)
    published = await _publish_two_streams(bus, 40)
    seen: list[tuple[str, int]] = []
    mixed = 0

    async def handle(batch: Batch[TradeBatch]) -> None:
        nonlocal mixed
        mixed += len({e.stream for e in batch.entries}) == 2
        async with bus.pipeline(transaction=True) as tx:
            for entry in batch.entries:
                seen.extend((entry.stream, t.id) for t in entry.value.trades)
                tx.hset("seen", f"{entry.stream}:{entry.value.trades[0].id}", 1)
            batch.ack_with(tx)
            await tx.execute()

    consumer = consumer_of(bus, handle, names=(STREAM, STREAM_B), count=7)
    assert await consumer.drain() == 80
    assert _per_stream(seen) == published and await redis.hlen("seen") == 80
    assert mixed > 0
    assert await _nothing_pending(redis, bus)


async def test_a_read_reply_lost_to_a_connection_fault_loses_and_repeats_nothing(redis, redis_server):
    """The connection fails after the server ran an XREADGROUP (its entries delivered, pending here) and before the
    reply arrived. The consumer re-reads its own pending entries first once it reconnects: every entry handled exactly
    once, in order, nothing left pending."""
    from shared.runtime import connect
    proxy = CuttingProxy(redis_server.port)
    client = connect(await proxy.start())
    bus = Bus(client)
    published = await _publish_two_streams(Bus(redis), 60)
    seen: list[tuple[str, int]] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        seen.extend((e.stream, t.id) for e in batch.entries for t in e.value.trades)
        if len(seen) >= 10 and not proxy.cut:
            proxy.cut_reader(after_s=0.2)  # the next read's reply is lost

    consumer = consumer_of(bus, handle, names=(STREAM, STREAM_B), count=4, block_ms=20)
    try:
        await _consume_until(consumer, lambda: len(seen) >= 120, settle=0.1)
    finally:
        await client.aclose()
        await proxy.close()
    assert proxy.cut == 1
    assert _per_stream(seen) == published and len(seen) == 120
    assert await _nothing_pending(redis, bus=Bus(redis))


async def test_a_restarted_instance_with_its_stable_name_resumes_its_pending_entries_at_once(redis):
    """A consumer killed with entries pending comes back under the same name: it handles them first, without
    waiting ``claim_idle_ms`` (an hour here) for anyone to claim them."""
    bus = Bus(redis)
    await bus.publish_many((STREAM, batch_of(i, 1)) for i in range(5))
    await bus.ensure_group(STREAM, "g")
    await redis.xreadgroup("g", "notifier-host1", {STREAM: ">"}, count=3)  # delivered, then "SIGKILL"
    seen: list[int] = []

    async def handle(batch):
        seen.extend(e.value.trades[0].id for e in batch.entries)

    consumer = consumer_of(bus, handle, name="notifier-host1", claim_idle_ms=3_600_000, block_ms=20)
    await _consume_until(consumer, lambda: len(seen) >= 5, settle=0.05)
    assert seen == [0, 1, 2, 3, 4]
    assert consumer.claimed == 0
