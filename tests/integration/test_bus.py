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


async def test_acks_behind_the_next_read_run_when_it_returns(redis):
    """``Consumer.ack(batch, behind_read=True)``: the next read and the batch's XACKs go in one write, the XACKs
    behind the read, and nothing waits for them: the batch stays pending while that read blocks and is acked when it
    returns; every entry is handled once, nothing is left pending."""
    bus = Bus(redis)
    other = streams.trades("test", "ETH/USDT")
    await bus.publish(STREAM, batch_of(0, 1))
    seen: list[int] = []
    pending_after_ack: list[int] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        seen.extend(t.id for e in batch.entries for t in e.value.trades)
        if batch.read_ahead is not None:
            await consumer.ack(batch, behind_read=True)
            assert batch.acked
            pending_after_ack.append((await redis.xpending(STREAM, "g"))["pending"])

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM, other],
                        block_ms=300)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await _until(lambda: seen == [0])
    await bus.publish(STREAM, batch_of(1, 1))  # delivered by a read sent ahead: its batch carries the next read
    await _until(lambda: pending_after_ack)
    assert pending_after_ack == [1]  # its XACK waits behind the read now blocking
    await bus.publish(other, batch_of(2, 1))  # that read returns: the XACK runs
    await _until(lambda: seen == [0, 1, 2])
    for _ in range(100):
        if (await redis.xpending(STREAM, "g"))["pending"] == 0:
            break
        await asyncio.sleep(0.01)
    assert (await redis.xpending(STREAM, "g"))["pending"] == 0
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await bus.caught_up(STREAM, "g") and await bus.caught_up(other, "g")


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


# ---- prefetch: the next XREADGROUP is out while the handler works on the batch before it ---------------------------

STREAM_B = streams.trades("test", "ETH/USDT")


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


async def test_prefetch_commit_failures_while_a_read_is_out_lose_and_repeat_nothing(redis):
    """With prefetch the next read is out while a batch is handled. One commit hits a WatchError and a later handler
    raises, each while such a read is out (its entries already delivered to this consumer): every entry of both
    streams is committed exactly once, in order per stream, and nothing stays pending."""
    bus = Bus(redis)
    published = await _publish_two_streams(bus, 60)
    committed: list[tuple[str, int]] = []
    faults = {"watch": False, "raise": False}
    on_commit_connection = 0
    consumer: Consumer

    async def handle(batch: Batch[TradeBatch]) -> None:
        nonlocal on_commit_connection
        pairs = [(e.stream, t.id) for e in batch.entries for t in e.value.trades]
        ahead = consumer._reads.outstanding
        if ahead:
            assert batch.pinned is consumer._commits and batch.read_ahead is None
            on_commit_connection += 1
        if ahead and len(committed) >= 20 and not faults["raise"] and faults["watch"]:
            faults["raise"] = True
            raise RuntimeError("handler bug, once")
        async with bus.pipeline(transaction=True, pinned=batch.pinned) as tx:
            await tx.watch("guard")
            if ahead and len(committed) >= 8 and not faults["watch"]:
                faults["watch"] = True
                await redis.set("guard", "changed")  # between WATCH and EXEC: this commit fails
            tx.multi()
            tx.rpush("committed", *(f"{s}|{tid}" for s, tid in pairs))
            batch.ack_with(tx)
            await tx.execute(read_ahead=batch.read_ahead)
        committed.extend(pairs)

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM, STREAM_B],
                        count=4, block_ms=20, prefetch=True)
    await _consume_until(consumer, lambda: len(committed) >= 120)
    assert faults == {"watch": True, "raise": True} and on_commit_connection > 5
    stored = [tuple(x.decode().split("|")) for x in await redis.lrange("committed", 0, -1)]
    assert _per_stream([(s, int(t)) for s, t in stored]) == published
    assert _per_stream(committed) == published and len(committed) == 120
    assert await _nothing_pending(redis, bus)


async def test_prefetch_stop_while_a_read_is_out_then_restart_loses_and_repeats_nothing(redis):
    """stop is set while a prefetched read (with entries) is out: that read is handled before run() returns (nothing
    left pending, the connection not handed back with a reply on it), and a restarted consumer of the same name
    takes the rest, in order: every entry handled exactly once across the restart."""
    bus = Bus(redis)
    published = await _publish_two_streams(bus, 40)
    seen: list[tuple[str, int]] = []
    stopped_with_read_out = False
    stop = asyncio.Event()
    consumer: Consumer

    async def handle(batch: Batch[TradeBatch]) -> None:
        nonlocal stopped_with_read_out
        seen.extend((e.stream, t.id) for e in batch.entries for t in e.value.trades)
        if consumer._reads.outstanding and len(seen) >= 12 and not stop.is_set():
            stopped_with_read_out = True
            stop.set()

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM, STREAM_B],
                        count=3, block_ms=20, prefetch=True)
    await asyncio.wait_for(consumer.run(stop), 5)
    assert stopped_with_read_out and 12 < len(seen) < 80  # the read that was out was handled too
    assert not consumer._reads.outstanding
    for s in (STREAM, STREAM_B):
        assert (await redis.xpending(s, "g"))["pending"] == 0  # what was delivered was handled and acked
    first_run = len(seen)

    restarted = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle,
                         streams=[STREAM, STREAM_B], count=3, block_ms=20, prefetch=True)
    await _consume_until(restarted, lambda: len(seen) >= 80, settle=0.1)
    assert len(seen) > first_run
    assert _per_stream(seen) == published and len(seen) == 80
    assert await _nothing_pending(redis, bus)


class _CuttingProxy:
    """A TCP relay to the test's redis-server. ``cut_reader()`` stops passing the server's replies to the
    connection that last sent an XREADGROUP and closes it shortly after: a reply the server already produced (its
    entries delivered to the consumer, pending) never reaches the consumer — a network fault, not a mock."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.reader_link: dict | None = None
        self.cut = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{self.port}/0"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        link = {"client": client_w, "server": server_w, "frozen": False}
        for coro in (self._up(client_r, server_w, link), self._down(server_r, client_w, link)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _up(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, link: dict) -> None:
        try:
            while data := await r.read(65536):
                if b"XREADGROUP" in data:
                    self.reader_link = link
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(link)

    async def _down(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, link: dict) -> None:
        try:
            while data := await r.read(65536):
                if link["frozen"]:
                    continue  # the server's reply is lost on the way
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(link)

    @staticmethod
    def _close(link: dict) -> None:
        for side in ("client", "server"):
            link[side].close()

    def cut_reader(self, after_s: float) -> None:
        link = self.reader_link
        assert link is not None
        link["frozen"] = True
        self.cut += 1
        asyncio.get_running_loop().call_later(after_s, self._close, link)


async def test_prefetch_reply_lost_to_a_connection_fault_loses_and_repeats_nothing(redis, redis_server):
    """The read connection fails while a prefetched read is out, after the server ran it: its entries are pending
    for this consumer but their reply never arrives. They are re-read from own pending (in order) once the consumer
    reconnects: every entry handled exactly once, nothing left pending."""
    from shared.runtime import connect
    proxy = _CuttingProxy(redis_server.port)
    client = connect(await proxy.start())
    bus = Bus(client)
    published = await _publish_two_streams(Bus(redis), 60)
    seen: list[tuple[str, int]] = []
    consumer: Consumer

    async def handle(batch: Batch[TradeBatch]) -> None:
        seen.extend((e.stream, t.id) for e in batch.entries for t in e.value.trades)
        if consumer._reads.outstanding and len(seen) >= 10 and not proxy.cut:
            proxy.cut_reader(after_s=0.2)  # this read's reply (or the next one's) is lost

    consumer = Consumer(bus, group="g", consumer="c1", decode=decode_feed, handler=handle, streams=[STREAM, STREAM_B],
                        count=4, block_ms=20, prefetch=True)
    try:
        await _consume_until(consumer, lambda: len(seen) >= 120, settle=0.1)
    finally:
        await client.aclose()
        await proxy.close()
    assert proxy.cut == 1
    assert _per_stream(seen) == published and len(seen) == 120
    assert await _nothing_pending(redis, bus=Bus(redis))


@pytest.mark.parametrize("prefetch", [False, True])
async def test_linger_reads_a_busy_stream_in_fewer_larger_batches_and_loses_nothing(redis, prefetch):
    """``linger_ms``: after a read that delivered entries the consumer waits before the next one, so entries written
    one by one, a millisecond apart, are handled a linger's worth at a time (prefetch is off with it: a read sent
    ahead would come back at once with the next entry)."""
    bus = Bus(redis)
    batches: list[list[int]] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        batches.append([t.id for e in batch.entries for t in e.value.trades])

    consumer = Consumer(bus, group="g", consumer="c", streams=[STREAM], decode=decode_feed, handler=handle,
                        block_ms=50, prefetch=prefetch, linger_ms=40)

    async def produce() -> float:
        start = asyncio.get_running_loop().time()
        for i in range(150):
            await bus.publish(STREAM, batch_of(i, 1))
            await asyncio.sleep(0.001)
        return asyncio.get_running_loop().time() - start

    producer = asyncio.create_task(produce())
    await _consume_until(consumer, lambda: sum(map(len, batches)) >= 150)
    took = await producer
    assert [i for b in batches for i in b] == list(range(150))
    # a read at most every 40 ms while entries kept coming (without linger: about one batch per entry)
    assert len(batches) <= took / 0.040 + 2, (took, [len(b) for b in batches])
    assert await bus.caught_up(STREAM, "g") and (await redis.xpending(STREAM, "g"))["pending"] == 0


async def test_a_linger_callable_is_asked_after_each_read_and_zero_reads_at_once(redis):
    """``linger``: asked after each read that delivered entries how long to wait (it overrides ``linger_ms``). While it
    answers 40 ms, entries written 2 ms apart are read a linger's worth at a time; once it answers 0, each read follows
    at once (about one read per entry). One answer per read; every entry handled once, in order."""
    bus = Bus(redis)
    batches: list[list[int]] = []
    answer = {"ms": 40.0}
    asked: list[float] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        batches.append([t.id for e in batch.entries for t in e.value.trades])

    def linger() -> float:
        asked.append(answer["ms"])
        return answer["ms"]

    consumer = Consumer(bus, group="g", consumer="c", streams=[STREAM], decode=decode_feed, handler=handle,
                        block_ms=50, linger=linger)
    took: list[float] = []

    async def produce() -> None:
        loop = asyncio.get_running_loop()
        for phase in (0, 1):
            start = loop.time()
            for i in range(phase * 80, phase * 80 + 80):
                await bus.publish(STREAM, batch_of(i, 1))
                await asyncio.sleep(0.002)
            took.append(loop.time() - start)
            if phase == 0:
                await asyncio.sleep(0.1)  # the last lingering read is taken
                answer["ms"] = 0.0

    producer = asyncio.create_task(produce())
    await _consume_until(consumer, lambda: sum(map(len, batches)) >= 160)
    await producer
    assert [i for b in batches for i in b] == list(range(160))
    assert len(asked) == len(batches)
    lingered = [b for b in batches if b[0] < 80]
    at_once = [b for b in batches if b[0] >= 80]
    assert len(lingered) <= took[0] / 0.040 + 2, [len(b) for b in lingered]
    assert len(at_once) >= 40, [len(b) for b in at_once]  # lingering 40 ms would give about 5


@pytest.mark.parametrize("top_up", [False, True, "early"])
async def test_top_up_reads_once_more_at_once_and_hands_both_reads_over_as_one_batch(redis, top_up):
    """Entries written together to three streams (one pipeline) while the consumer is blocked: the blocked read returns
    with the first one alone (Redis serves it at the first XADD). Asked with that read's entries, ``top_up`` answering
    True makes the consumer read again at once and hand all three over in one batch; without it the first comes alone.
    ``top_up_early`` answering True does the same before the entry is decoded (``top_up`` is then not asked). Both
    are asked only after blocking reads (not in ``drain``); nothing is lost or handled twice."""
    bus = Bus(redis)
    names = [streams.trades("test", s) for s in ("A/USDT", "B/USDT", "C/USDT")]
    batches: list[list[str]] = []
    asked: list[int] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        batches.append([e.stream for e in batch.entries])

    def wants(entries: list) -> bool:
        asked.append(len(entries))
        return True

    early: list[int] = []

    def now() -> bool:
        early.append(1)
        return True

    consumer = Consumer(bus, group="g", consumer="c", streams=names, decode=decode_feed, handler=handle, block_ms=500,
                        top_up=wants if top_up else None, top_up_early=now if top_up == "early" else None)
    await consumer.poll(None)  # groups created
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        for round_ in range(5):
            await asyncio.sleep(0.05)  # the consumer is blocked
            async with redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.xadd(name, {FIELD: batch_of(round_, 1)})
                await pipe.execute()
        await _until(lambda: sum(map(len, batches)) >= 15)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert sorted(s for b in batches for s in b) == sorted(names * 5)
    if top_up == "early":
        assert batches == [names] * 5 and early == [1] * 5 and not asked and consumer.topped_up == 5
    elif top_up:
        assert batches == [names] * 5 and asked == [1] * 5 and consumer.topped_up == 5
    else:
        assert [len(b) for b in batches].count(1) >= 5  # the first entry of each round alone
    for name in names:
        await bus.publish(name, batch_of(9, 1))
    batches.clear()
    asked.clear()
    early.clear()
    assert await consumer.drain() == 3 and not asked and not early and len(batches) == 1


async def test_a_top_up_whose_reply_is_lost_loses_and_repeats_nothing(redis, redis_server):
    """The read connection fails while a top-up read is out, after the server ran it: the entries of both reads are
    pending for this consumer, none was handled. They are re-read from own pending once it reconnects: every entry
    handled exactly once, in order per stream, nothing left pending."""
    from shared.runtime import connect
    proxy = _CuttingProxy(redis_server.port)
    client = connect(await proxy.start())
    names = [streams.trades("test", s) for s in ("A/USDT", "B/USDT", "C/USDT")]
    seen: list[tuple[str, int]] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        seen.extend((e.stream, t.id) for e in batch.entries for t in e.value.trades)

    def wants(entries: list) -> bool:
        if len(seen) >= 6 and not proxy.cut:
            proxy.cut_reader(after_s=0.1)  # the top-up about to be sent: its reply never arrives
        return True

    consumer = Consumer(Bus(client), group="g", consumer="c", streams=names, decode=decode_feed, handler=handle,
                        block_ms=200, top_up=wants)
    published: list[tuple[str, int]] = []
    stop = asyncio.Event()
    try:
        await consumer.poll(None)  # groups created
        task = asyncio.create_task(consumer.run(stop))
        for round_ in range(6):
            await asyncio.sleep(0.15)  # the consumer is blocked (or reconnecting)
            async with redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.xadd(name, {FIELD: batch_of(round_, 1)})
                    published.append((name, round_))
                await pipe.execute()
        await _until(lambda: len(seen) >= len(published))
        await asyncio.sleep(0.2)  # a duplicate would show up now
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()
        await proxy.close()
    assert proxy.cut == 1
    assert len(seen) == len(published)
    assert all([tid for stream, tid in seen if stream == name] == list(range(6)) for name in names), seen
    assert [(await redis.xpending(name, "g"))["pending"] for name in names] == [0, 0, 0]


async def test_top_ups_that_keep_coming_back_empty_are_tried_only_now_and_then(redis):
    """Entries written one at a time (a quiet market): every top-up comes back empty and costs a round trip; after
    TOP_UP_MISSES in a row the consumer tries none for ``top_up_backoff_s``. Entries written together again: the
    first top-up tried after that finds them, and every read is topped up again."""
    from shared.bus import TOP_UP_MISSES

    bus = Bus(redis)
    names = [streams.trades("test", s) for s in ("A/USDT", "B/USDT", "C/USDT")]
    batches: list[int] = []

    async def handle(batch: Batch[TradeBatch]) -> None:
        batches.append(len(batch.entries))

    consumer = Consumer(bus, group="g", consumer="c", streams=names, decode=decode_feed, handler=handle, block_ms=500,
                        top_up=lambda entries: False, top_up_early=lambda: True)
    consumer.top_up_backoff_s = 0.5
    await consumer.poll(None)  # groups created
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    loop = asyncio.get_running_loop()
    try:
        start = loop.time()
        n = 0
        while loop.time() - start < 0.3:  # one entry at a time, for less than the back-off
            await asyncio.sleep(0.005)
            await bus.publish(names[n % 3], batch_of(n, 1))
            n += 1
        await _until(lambda: sum(batches) >= n)
        assert n > 2 * TOP_UP_MISSES and consumer.topped_up == consumer.top_ups_empty == TOP_UP_MISSES
        batches.clear()
        start = loop.time()
        while loop.time() - start < 1.0:  # three together: a blocked read is served at the first
            await asyncio.sleep(0.01)
            async with redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.xadd(name, {FIELD: batch_of(100 + n, 1)})
                await pipe.execute()
            n += 1
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert 1 in batches[:10] and batches[-10:] == [3] * 10, batches  # waited out, then topped up again
    assert consumer.top_ups_empty == TOP_UP_MISSES  # (the first one tried found the others)
