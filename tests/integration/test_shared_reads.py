"""shared.shared_reads: workers of several streams read through one reader, each gets exactly its own entries, in
order, once; a quiet stream's worker hears so after ``block_ms`` even while the others stay busy; a slow or departed
worker does not hold the others; a Redis error reaches the workers waiting. On one redis-server (one XREAD for all
the streams) and on a 3-node Redis Cluster (one XREAD per stream)."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from shared import streams
from shared.partitioned import raw_reader
from shared.shared_reads import SeparateReads, SharedReads, shared_reads
from shared.stream_entries import entry_data

STREAMS = [streams.part_trades(p) for p in range(6)]


async def _xread_calls(redis) -> int:
    """XREADs the single server has run (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def _worker(reads, stream: str, got: list[int], stop: asyncio.Event, *, slow_s: float = 0.0,
                  idle: list[float] | None = None) -> None:
    offset: bytes | str = "0-0"
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time()
        read = await reads.read(stream, {stream: offset})
        if not read and idle is not None:
            idle.append(loop.time() - asked)
        assert all(name == stream for name, _ in read)
        entries = read[0][1] if read else []
        for entry_id, fields in entries:
            got.append(int(entry_data(fields)))
            offset = entry_id
        if entries and slow_s:
            await asyncio.sleep(slow_s)


async def _run_workers(reads, n_streams: int, *, slow: dict[int, float] | None = None):
    stop = asyncio.Event()
    got: list[list[int]] = [[] for _ in range(n_streams)]
    tasks = [asyncio.create_task(_worker(reads, STREAMS[i], got[i], stop, slow_s=(slow or {}).get(i, 0.0)))
             for i in range(n_streams)]
    return stop, got, tasks


async def _end(stop: asyncio.Event, tasks: list[asyncio.Task], reads) -> None:
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await reads.aclose()


async def _until(check, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_each_worker_gets_its_own_entries_once_in_order(client) -> None:
    raw = raw_reader(client)
    reads = shared_reads(raw, count=7, block_ms=100)
    assert isinstance(reads, SeparateReads if isinstance(client, RedisCluster) else SharedReads)
    stop, got, tasks = await _run_workers(reads, 4)
    sent: list[list[int]] = [[] for _ in range(4)]
    for i in range(400):  # bursts to every stream, then pauses: reads of many entries and of one
        s = (i * 7) % 4
        await client.xadd(STREAMS[s], {streams.FIELD: str(i)})
        sent[s].append(i)
        if i % 50 == 49:
            await asyncio.sleep(0.02)
    await _until(lambda: all(len(g) == len(s) for g, s in zip(got, sent)))
    await asyncio.sleep(0.25)  # nothing more comes (no entry twice)
    await _end(stop, tasks, reads)
    assert got == sent


async def test_one_xread_serves_every_waiting_stream_on_one_server(redis) -> None:
    reads = shared_reads(raw_reader(redis), count=100, block_ms=1000)
    stop, got, tasks = await _run_workers(reads, 6)
    await asyncio.sleep(0.1)  # every worker waits
    before = await _xread_calls(redis)
    for rnd in range(20):  # one entry to every stream at once, 20 times
        async with redis.pipeline(transaction=False) as pipe:
            for s in STREAMS:
                pipe.xadd(s, {streams.FIELD: str(rnd)})
            await pipe.execute()
        await _until(lambda: all(len(g) == rnd + 1 for g in got))
    after = await _xread_calls(redis)
    await _end(stop, tasks, reads)
    assert got == [list(range(20))] * 6
    # one XREAD per stream and entry would be 120; the shared reader needs about one per round (the one that woke on
    # the first stream, the one that took the rest), and the one left blocked
    assert after - before <= 20 * 3 + 1, after - before


async def test_a_quiet_stream_hears_so_while_the_others_stay_busy(redis) -> None:
    reads = SharedReads(raw_reader(redis), count=100, block_ms=150)
    stop = asyncio.Event()
    busy: list[int] = []
    idle: list[float] = []
    tasks = [asyncio.create_task(_worker(reads, STREAMS[0], busy, stop)),
             asyncio.create_task(_worker(reads, STREAMS[1], [], stop, idle=idle))]
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0
    i = 0
    while loop.time() < end:  # the first stream gets an entry every 5 ms: the shared XREAD never times out
        await redis.xadd(STREAMS[0], {streams.FIELD: str(i)})
        i += 1
        await asyncio.sleep(0.005)
    await _end(stop, tasks, reads)
    assert busy == list(range(i))
    # the quiet worker was told "nothing" about every 150 ms (5-6 times in the second), never much sooner or later
    assert 4 <= len(idle) <= 7, idle
    assert all(0.14 <= waited <= 0.35 for waited in idle), idle


async def test_a_slow_worker_is_read_again_once_it_asks_and_does_not_hold_the_others(redis) -> None:
    reads = SharedReads(raw_reader(redis), count=100, block_ms=2000)
    stop, got, tasks = await _run_workers(reads, 3, slow={0: 0.05})
    for i in range(30):
        async with redis.pipeline(transaction=False) as pipe:
            for s in STREAMS[:3]:
                pipe.xadd(s, {streams.FIELD: str(i)})
            await pipe.execute()
        await asyncio.sleep(0.01)
    # the fast workers keep up while the slow one takes 50 ms over each read
    await _until(lambda: len(got[1]) == 30 and len(got[2]) == 30, timeout=30 * 0.01 + 1.0)
    await _until(lambda: len(got[0]) == 30)
    await _end(stop, tasks, reads)
    assert got == [list(range(30))] * 3


async def test_a_departed_worker_leaves_the_others_reading(redis) -> None:
    reads = SharedReads(raw_reader(redis), count=100, block_ms=2000)
    stop, got, tasks = await _run_workers(reads, 2)
    await redis.xadd(STREAMS[0], {streams.FIELD: "1"})
    await _until(lambda: got[0] == [1])
    tasks[0].cancel()  # its partition was lost
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[0]
    await redis.xadd(STREAMS[1], {streams.FIELD: "2"})
    await _until(lambda: got[1] == [2], timeout=1.0)
    await _end(stop, tasks[1:], reads)


async def test_a_redis_error_reaches_every_waiting_worker_and_reading_goes_on(redis) -> None:
    reads = SharedReads(raw_reader(redis), count=100, block_ms=2000)
    await redis.set(STREAMS[1], "not a stream")
    errors: list[Exception] = []

    async def ask(stream: str) -> None:
        try:
            await reads.read(stream, {stream: "0-0"})
        except ResponseError as exc:
            errors.append(exc)

    await asyncio.gather(ask(STREAMS[0]), ask(STREAMS[1]))
    assert len(errors) == 2 and all("WRONGTYPE" in str(e) for e in errors), errors
    await redis.delete(STREAMS[1])
    await redis.xadd(STREAMS[1], {streams.FIELD: "3"})
    got = await reads.read("w", {STREAMS[0]: "0-0", STREAMS[1]: "0-0"})
    assert [(name, [int(entry_data(fields)) for _, fields in entries]) for name, entries in got] == [(STREAMS[1], [3])]
    await reads.aclose()
