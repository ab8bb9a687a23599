"""shared.partitioned: workers follow ownership, resume from fenced offsets, and count every entry exactly once
through a replica's death, on one Redis and on a 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio.cluster import RedisCluster

from shared import streams
from shared.errors import ConfigError
from shared.ownership import Ownership
from shared.partitioned import PartitionWorkers, check_partitions, raw_reader, read_streams
from shared.runtime import connect
from shared.stream_entries import entry_data

PARTITIONS = 8
GROUP = "counter"


class Counter:
    """A toy partitioned service: sums the integers written to each partition's trades stream, exactly once."""

    def __init__(self, redis, name: str, ttl_ms: int) -> None:
        self.redis = redis
        self.raw = raw_reader(redis)
        self.ownership = Ownership(redis, GROUP, name, PARTITIONS, ttl_ms=ttl_ms)
        self.workers = PartitionWorkers(self.ownership, self.work)
        self.handled = 0

    async def work(self, partition: int, stop: asyncio.Event) -> None:
        state = streams.part_state(partition, GROUP)
        stream = streams.part_trades(partition)
        offset = await self.redis.hget(state, "offset") or b"0"
        while not stop.is_set():
            read = await read_streams(self.raw, {stream: offset}, count=50, block_ms=50)
            for _, entries in read:
                total = sum(int(entry_data(fields)) for _, fields in entries)
                offset = entries[-1][0]
                await self.ownership.fenced(partition, [("HINCRBY", state, "sum", total),
                                                        ("HINCRBY", state, "entries", len(entries)),
                                                        ("HSET", state, "offset", offset)])
                self.handled += len(entries)


async def _write(redis, n: int) -> list[int]:
    sums = [0] * PARTITIONS
    for i in range(n):
        p = i % PARTITIONS
        await redis.xadd(streams.part_trades(p), {streams.FIELD: str(i)})
        sums[p] += i
    return sums


async def test_replicas_split_the_partitions_and_a_dead_ones_are_taken_over_exactly_once(client) -> None:
    a, b = Counter(client, "a", ttl_ms=600), Counter(client, "b", ttl_ms=600)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    run_a = asyncio.create_task(a.workers.run(stop_a))
    run_b = asyncio.create_task(b.workers.run(stop_b))
    try:
        writer = asyncio.create_task(_write(client, 2000))
        await asyncio.sleep(1.0)
        assert a.workers.owned and b.workers.owned
        assert set(a.workers.owned).isdisjoint(b.workers.owned)
        # a dies: no clean leave, its leases simply stop being renewed (what a SIGKILL leaves behind)
        run_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run_a
        sums = await writer
        await asyncio.sleep(0.3)
        await _write_nothing_until(lambda: len(b.workers.owned) == PARTITIONS, 5)
        for p in range(PARTITIONS):
            await _write_nothing_until(lambda p=p: _caught_up(client, p), 10)
            state = streams.part_state(p, GROUP)
            assert int(await client.hget(state, "sum")) == sums[p]
            assert int(await client.hget(state, "entries")) == 2000 // PARTITIONS
        assert b.workers.moves and any(m.gained for m in b.workers.moves)
    finally:
        stop_b.set()
        await asyncio.wait_for(run_b, 10)
        await a.raw.aclose()
        await b.raw.aclose()


async def _caught_up(redis, partition: int) -> bool:
    last = await redis.xrevrange(streams.part_trades(partition), count=1)
    offset = await redis.hget(streams.part_state(partition, GROUP), "offset")
    return bool(last) and offset == last[0][0]


async def _write_nothing_until(check, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_service_with_another_partition_count_refuses_to_start(client) -> None:
    await check_partitions(client, 16)
    await check_partitions(client, 16)
    with pytest.raises(ConfigError, match="partitions: 8, but this Redis holds data partitioned 16 ways"):
        await check_partitions(client, 8)


async def test_a_raw_reader_of_a_cluster_client_that_sent_no_command_yet_reads(redis_cluster):
    """A service builds its raw reader before its first command: the cluster client knows only its start-up node then
    (it raised 'RedisCluster requires at least one node')."""
    client = RedisCluster.from_url(redis_cluster.url)
    raw = raw_reader(client)
    try:
        stream = streams.part_trades(3)
        entry = await client.xadd(stream, {streams.FIELD: b"x"})
        read = await read_streams(raw, {stream: b"0-0"}, count=10, block_ms=None)
        assert [(name, [e[0] for e in entries]) for name, entries in read] == [(stream, [entry])]
    finally:
        await client.delete(streams.part_trades(3))
        await raw.aclose()
        await client.aclose()


async def test_a_partition_taken_again_while_its_old_worker_runs_never_has_two_workers(redis_url) -> None:
    """Another task's fenced write (candle_builder's timer tick, a backfill) can drop a lease while the partition's
    worker still runs; the next balance round takes the free partition again. The old worker must be stopped before
    the new one starts: both would pass the fence with the new lease and process the same entries (and the old one
    read a partition state the new one had reset: candle_builder's ``KeyError: <partition>``)."""
    redis = connect(redis_url)
    await redis.flushall()
    running: dict[int, int] = {}
    most: dict[int, int] = {}
    started: list[int] = []

    async def work(partition: int, stop: asyncio.Event) -> None:
        running[partition] = running.get(partition, 0) + 1
        most[partition] = max(most.get(partition, 0), running[partition])
        started.append(partition)
        try:
            await stop.wait()  # (a worker busy until told to stop)
        finally:
            running[partition] -= 1

    ownership = Ownership(redis, GROUP, "a", PARTITIONS, ttl_ms=600)
    workers = PartitionWorkers(ownership, work)
    stop = asyncio.Event()
    run = asyncio.create_task(workers.run(stop))
    try:
        await _write_nothing_until(lambda: len(started) == PARTITIONS, 5)
        ownership.leases.pop(3)  # what a failed fenced write by another task does ...
        await redis.delete(streams.lease(GROUP, 3))  # ... after the lease expired
        await _write_nothing_until(lambda: started.count(3) == 2, 5)  # taken again, a new worker
        assert most[3] == 1 and running[3] == 1
        assert workers.owned == list(range(PARTITIONS))
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
        await redis.aclose()
