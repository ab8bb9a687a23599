"""The Redis Streams bus against a real redis-server: groups, ack-after-success, recovery, claiming, dead letters."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared import streams
from shared.bus import FIELD, Batch, Bus, Consumer
from shared.schemas import Trade, TradeBatch, decode_feed, encode_trades

STREAM = streams.trades("test", "BTC/USDT")


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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM], count=7)
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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM])
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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM],
                        max_deliveries=3)
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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM])
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

    consumer = Consumer(bus, group="g", consumer="alive", decode=decode_feed, handler=handle, streams=[STREAM],
                        claim_idle_ms=50)
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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM])
    await consumer.drain()
    assert await redis.get("state") == b"after-batch"
    assert await bus.caught_up(STREAM, "g")


async def test_publish_trims_approximately(redis):
    bus = Bus(redis, maxlen=100)
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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM],
                        block_ms=100)
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

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM],
                        max_deliveries=10, block_ms=20)
    assert await consumer.poll(20) == 1  # fails, will be retried
    await bus.publish(STREAM, batch_of(1, 1))
    await bus.publish(STREAM, batch_of(2, 1))
    for _ in range(200):
        await consumer.poll(20)
        if len(seen) == 3:
            break
    assert seen == [0, 1, 2]


async def test_read_ahead_commit_and_next_read_in_one_write_lose_nothing_when_a_commit_fails(redis):
    """A handler commits (MULTI/EXEC) on the consumer's connection with the next XREADGROUP in the same write. When
    one commit fails (WATCH tripped) after the read-ahead went out, the entries it delivered stay pending and are
    handled after the failed batch's retry: every entry committed exactly once, in order, nothing left pending."""
    bus = Bus(redis)
    await bus.publish_many((STREAM, batch_of(i * 10, 10)) for i in range(40))
    committed: list[int] = []
    sent_ahead = 0
    tripped = False

    async def handle(batch: Batch[TradeBatch]) -> None:
        nonlocal sent_ahead, tripped
        ids = [t.id for e in batch.entries for t in e.value.trades]
        async with bus.pipeline(transaction=True, pinned=batch.pinned) as tx:
            await tx.watch("guard")
            if not tripped and ids[0] >= 150:  # the key changes between WATCH and EXEC: this commit fails
                tripped = True
                await redis.set("guard", "x")
            tx.multi()
            tx.rpush("committed", *ids)
            batch.ack_with(tx)
            sent_ahead += batch.read_ahead is not None
            await tx.execute(read_ahead=batch.read_ahead)
        committed.extend(ids)

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM], count=3)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for _ in range(400):
        if await redis.llen("committed") >= 400:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert tripped and sent_ahead > 5  # the read-ahead path was taken
    assert [int(x) for x in await redis.lrange("committed", 0, -1)] == list(range(400))
    assert committed == list(range(400))
    assert await bus.caught_up(STREAM, "g")


async def test_read_ahead_reply_is_handled_before_stopping(redis):
    """The default ack path carries the read-ahead too; entries it delivered are handled, not left pending, when
    the consumer stops."""
    bus = Bus(redis)
    seen: list[int] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        seen.extend(t.id for e in batch.entries for t in e.value.trades)

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM], count=1,
                        block_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    for i in range(30):
        await bus.publish(STREAM, batch_of(i, 1))
        await asyncio.sleep(0.001)
    for _ in range(300):
        if len(seen) == 30:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seen == list(range(30))
    assert await bus.caught_up(STREAM, "g")
    assert not consumer._reads.outstanding
