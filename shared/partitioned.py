"""Running a partitioned service: one worker per owned partition, reading its streams from saved offsets.

``PartitionWorkers(ownership, work).run(stop)`` balances leases (``shared.ownership``) every third of their TTL and
keeps exactly one ``work(partition, stop)`` task per partition this replica holds: a partition gained starts its
worker, one lost (handed back to a replica that joined, or taken over after this one failed to renew) has its
worker's ``stop`` set and is awaited. A worker restores its partition's state from Redis, reads with
``read_streams`` from the offsets in that state, and writes through ``Ownership.fenced``; a ``FencedError`` (the
lease was lost under it) ends the worker quietly, and the next balance round says the partition is gone. A worker
that fails otherwise is restarted after a capped backoff, keeping its lease.

``moves`` remembers recent ownership changes (for ``/health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from shared import streams
from shared.errors import ConfigError
from shared.outage import REDIS_DOWN, Outage, backoff_delay, redis_unavailable
from shared.ownership import FencedError, Ownership
from shared.resp import RespClient

logger = logging.getLogger(__name__)

Work = Callable[[int, asyncio.Event], Awaitable[None]]

#: How long a lost partition's worker may take to finish what it is doing before it is cancelled.
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Move:
    """One ownership change seen by this replica."""

    at_ms: int
    partition: int
    gained: bool


@dataclass(slots=True)
class _Worker:
    task: asyncio.Task[None]
    stop: asyncio.Event


class PartitionWorkers:
    """One ``work`` task per partition this replica owns; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, ownership: Ownership, work: Work, *, name: str = "", outage: Outage | None = None) -> None:
        self.ownership = ownership
        self.work = work
        self.name = name or ownership.group
        self.outage = outage  # the service's own (one pair of lines per outage), else this logs its own
        self.workers: dict[int, _Worker] = {}
        self.moves: deque[Move] = deque(maxlen=100)
        self.restarts = 0
        self._failures: dict[int, int] = {}

    @property
    def owned(self) -> list[int]:
        return sorted(self.workers)

    async def run(self, stop: asyncio.Event) -> None:
        every = self.ownership.ttl_ms / 3000
        down = False
        try:
            while not stop.is_set():
                try:
                    gained, lost = await self.ownership.balance(int(time.time() * 1000))
                    if self.outage is not None:
                        self.outage.ok()
                    elif down:
                        logger.warning("%s: Redis is back; leases balanced again", self.name)
                    down = False
                except Exception as exc:  # Redis away, or a read-only node during a failover: keep what is held
                    if not redis_unavailable(exc):
                        raise
                    if self.outage is not None:
                        self.outage.lost(exc, "lease balancing")
                    elif not down:
                        logger.warning("%s: Redis unavailable (%s); partitions kept until their leases expire",
                                       self.name, exc)
                        down = True
                    gained, lost = [], []
                await self._apply(gained, lost)
                self._reap()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=every)
        finally:
            await self._stop_all()
            with contextlib.suppress(Exception):
                await self.ownership.leave()

    async def _apply(self, gained: list[int], lost: list[int]) -> None:
        now = int(time.time() * 1000)
        for partition in lost:
            self.moves.append(Move(now, partition, False))
            await self._stop_worker(partition)
        for partition in gained:
            self.moves.append(Move(now, partition, True))
            if partition in self.workers:
                # its previous worker still runs: the lease was dropped under it by another task's fenced write (a
                # timer tick, a backfill) and taken again. Never two workers on one partition (both would pass the
                # fence with the new lease): stop the old one first.
                await self._stop_worker(partition)
            self._start(partition)
        if gained or lost:
            logger.info("%s: partitions %s (gained %s, lost %s)", self.name, self.owned or "none", gained or "-",
                        lost or "-")

    def _start(self, partition: int) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self._guarded(partition, stop), name=f"{self.name}-p{partition}")
        self.workers[partition] = _Worker(task, stop)

    async def _guarded(self, partition: int, stop: asyncio.Event) -> None:
        """Run the worker; restart it after a failure (capped backoff) while the partition is held."""
        while not stop.is_set() and self.ownership.holds(partition):
            try:
                await self.work(partition, stop)
                return
            except FencedError as exc:
                logger.warning("%s: partition %d taken over (%s); its worker stops", self.name, partition, exc)
                return
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as exc:
                delay = backoff_delay(self._failures.get(partition, 0), base=0.1, cap=5.0)
                logger.debug("%s: partition %d waits for Redis (%s)", self.name, partition, exc)
            except Exception:
                delay = backoff_delay(self._failures.get(partition, 0), base=0.2, cap=10.0)
                logger.exception("%s: worker of partition %d failed; restarting in %.1fs", self.name, partition,
                                 delay)
            self._failures[partition] = self._failures.get(partition, 0) + 1
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def _reap(self) -> None:
        """Forget workers that ended (fenced): their partition is no longer held."""
        for partition, worker in list(self.workers.items()):
            if worker.task.done() and not self.ownership.holds(partition):
                del self.workers[partition]

    async def _stop_worker(self, partition: int) -> None:
        worker = self.workers.pop(partition, None)
        if worker is None:
            return
        worker.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(worker.task), timeout=STOP_GRACE_S)
        except (TimeoutError, Exception):
            worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker.task

    async def _stop_all(self) -> None:
        await asyncio.gather(*(self._stop_worker(p) for p in list(self.workers)))


# ---- reading a partition's streams ---------------------------------------------------------------------------------

Entries = list[tuple[bytes, Any]]  # (entry id, [field, value, ...] or {field: value}) as the server sent them


def raw_reader(redis: Any) -> Any:
    """A client on the same server(s) whose XREAD replies come as the server sent them (no dict per entry): the
    hot read path of a partition worker. One server reached by TCP or a Unix socket: ``shared.resp.RespClient``
    (~4x less CPU per XREAD than redis-py's asyncio client); a Redis Cluster, a Sentinel-managed master or TLS:
    redis-py (a Cluster client of its own; else one sharing ``redis``' connection pool)."""
    small = RespClient.of(redis)
    if small is not None:
        return small
    if isinstance(redis, RedisCluster):
        # (a client that has not sent a command yet knows only the nodes it was started with)
        nodes = redis.get_nodes() or list(redis.nodes_manager.startup_nodes.values())
        raw: Any = RedisCluster(startup_nodes=[ClusterNode(n.host, n.port) for n in nodes], decode_responses=False)
    else:
        raw = Redis(connection_pool=redis.connection_pool)
    raw.set_response_callback("XREAD", lambda response, **options: response)
    return raw


async def read_streams(raw: Any, offsets: dict[str, bytes | str], *, count: int,
                       block_ms: int | None) -> list[tuple[str, Entries]]:
    """XREAD ``offsets`` (stream -> last id processed; every stream in one partition's hash slot) with ``raw``
    (``raw_reader``): [(stream, [(id, fields)...])], only streams that had entries."""
    reply = await raw.xread(offsets, count=count, block=block_ms)
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    return [(name.decode() if isinstance(name, bytes) else name, entries) for name, entries in items if entries]


def entry_id(raw: bytes | str) -> tuple[int, int]:
    """A stream entry id as a comparable (ms, seq) pair."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def read_offset(redis: Any, partition: int, group: str, stream: str) -> bytes | None:
    """The last entry id of ``stream`` the owner of ``partition`` in ``group`` has processed (None: nothing yet)."""
    value = await redis.hget(streams.part_state(partition, group), streams.offset_field(stream))
    return value if value is None or isinstance(value, bytes) else str(value).encode()


async def caught_up(redis: Any, partitions: int, group: str, stream: Callable[[int], str]) -> bool:
    """Whether ``group`` has processed every entry of ``stream(p)`` for every partition ``p``."""
    for partition in range(partitions):
        last = await redis.xrevrange(stream(partition), count=1)
        if not last:
            continue
        offset = await read_offset(redis, partition, group, stream(partition))
        if offset is None or entry_id(offset) < entry_id(last[0][0]):
            return False
    return True


# ---- the partition count -------------------------------------------------------------------------------------------


async def check_partitions(redis: Any, partitions: int) -> None:
    """Record the partition count on first start; refuse (ConfigError) a service configured with another one: every
    pair would be read from the wrong streams."""
    await redis.hsetnx(streams.META, "partitions", partitions)
    recorded = await redis.hget(streams.META, "partitions")
    if recorded is not None and int(recorded) != partitions:
        raise ConfigError([f"partitions: {partitions}, but this Redis holds data partitioned {int(recorded)} ways "
                           f"(streams.META); every service must use partitions: {int(recorded)}"])
