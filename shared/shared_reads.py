"""The blocking reads of a replica's partition workers, sent as one XREAD when the server allows it.

Each worker of a partitioned service (``shared.partitioned``) reads its partition's stream from its own offset. With
one blocking XREAD per worker, every entry wakes one worker, which then sends its next XREAD: on a live feed
that is a read, a write and a task wake-up per entry and partition, and on a loopback socket those cost more than
the entry's own work (a whole market: 16 partitions read on every tick of the feed).

``SharedReads.read(worker, offsets)`` answers as ``read_streams(raw, offsets)`` does (the entries after each offset of
the worker's streams, or nothing once they have been quiet for ``block_ms``), but one reader task sends one XREAD
naming the streams of every worker waiting, and hands each worker its own entries. Workers resumed together (one
reply served them, or the replies to their commits came in one read) ask again in the same turn of the event loop, so
they are in one XREAD again; a worker still busy when the reader reads is not in that XREAD, which therefore blocks at
most ``BUSY_BLOCK_MS`` (unless the worker has been busy for over ``block_ms``): it is read again at the latest that
long after it asks. No worker waits for another.

One XREAD of several streams needs them in one hash slot: ``shared_reads(raw, ...)`` gives ``SharedReads`` on a
single server (``shared.resp.RespClient``) and ``SeparateReads`` (one XREAD per call, as before) on a Redis Cluster
or through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from typing import Any, NamedTuple

from shared.partitioned import Entries, read_streams
from shared.resp import RespClient

#: Longest an XREAD blocks while a worker it does not name is busy (that worker's next read waits at most this long).
BUSY_BLOCK_MS = 1


class SeparateReads:
    """One XREAD per call (every partition in a slot of its own: a Redis Cluster)."""

    def __init__(self, raw: Any, *, count: int, block_ms: int) -> None:
        self.raw, self.count, self.block_ms = raw, count, block_ms

    async def read(self, worker: Hashable, offsets: dict[str, bytes | str]) -> list[tuple[str, Entries]]:
        """``read_streams(raw, offsets, count=count, block_ms=block_ms)``."""
        return await read_streams(self.raw, offsets, count=self.count, block_ms=self.block_ms)

    def leave(self, worker: Hashable) -> None:
        """(Nothing to forget: see ``SharedReads.leave``.)"""

    async def aclose(self) -> None:
        """(No task to stop.)"""


class _Waiting(NamedTuple):
    offsets: dict[str, bytes | str]
    reply: asyncio.Future[list[tuple[str, Entries]]]
    since: float  # loop time it asked


class SharedReads:
    """``await reads.read(worker, offsets)`` from many workers (each with streams of its own); one XREAD for all."""

    def __init__(self, raw: Any, *, count: int, block_ms: int) -> None:
        self.raw, self.count, self.block_ms = raw, count, block_ms
        self._waiting: dict[Hashable, _Waiting] = {}
        self._busy: dict[Hashable, float] = {}  # served (loop time), not asking again yet
        self._asked: asyncio.Future[None] | None = None  # done when a worker asks or leaves (the reader waits for one)
        self._task: asyncio.Task[None] | None = None

    async def read(self, worker: Hashable, offsets: dict[str, bytes | str]) -> list[tuple[str, Entries]]:
        """The entries after ``offsets`` (stream -> last id processed; at most ``count`` per stream) of the streams
        that have some, as ``read_streams`` gives them; [] once none came for ``block_ms``. One call per worker at a
        time; no stream read by two workers."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[tuple[str, Entries]]] = loop.create_future()
        self._waiting[worker] = _Waiting(offsets, reply, loop.time())
        self._returned(worker)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="shared-reads")
        try:
            return await reply
        finally:
            if reply.cancelled() or not reply.done():  # (the worker was cancelled: it is going away)
                self.leave(worker)

    def leave(self, worker: Hashable) -> None:
        """Forget ``worker``: it stopped."""
        waiting = self._waiting.get(worker)
        if waiting is not None and not waiting.reply.done():
            del self._waiting[worker]
        self._returned(worker)

    def _returned(self, worker: Hashable) -> None:
        self._busy.pop(worker, None)
        if self._asked is not None and not self._asked.done():
            self._asked.set_result(None)

    async def aclose(self) -> None:
        """Stop the reader (callers still waiting are cancelled)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting or self._busy:
                if not self._waiting:  # every worker is busy: wait until one asks (or leaves)
                    self._asked = loop.create_future()
                    await self._asked
                    continue
                now = loop.time()
                # (a worker busy longer than block_ms, a backfill say, no longer shortens the wait of the others)
                busy = any(now - since < self.block_ms / 1000 for since in self._busy.values())
                block_ms = min([self.block_ms, *([BUSY_BLOCK_MS] if busy else [])]
                               + [int((w.since - now) * 1000) + self.block_ms for w in self._waiting.values()])
                if self._serve(await self._read(max(1, block_ms))) and self._waiting:
                    # a blocked XREAD answers with the stream that woke it only: what the other streams got
                    # meanwhile is read at once (while the workers served run)
                    self._serve(await self._read(None))
        except BaseException as exc:  # Redis away, or cancelled: every caller waiting gets it
            waiting, self._waiting = self._waiting, {}
            self._busy.clear()
            for w in waiting.values():
                if not w.reply.done():
                    if isinstance(exc, asyncio.CancelledError):
                        w.reply.cancel()
                    else:
                        w.reply.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._asked = None

    async def _read(self, block_ms: int | None) -> tuple[list[tuple[Hashable, _Waiting]], dict[str, Entries]]:
        asked = list(self._waiting.items())
        offsets = {stream: offset for _, w in asked for stream, offset in w.offsets.items()}
        return asked, dict(await read_streams(self.raw, offsets, count=self.count, block_ms=block_ms))

    def _serve(self, read: tuple[list[tuple[Hashable, _Waiting]], dict[str, Entries]]) -> bool:
        """Hand each worker asked its entries, or nothing if its streams were quiet for ``block_ms``; whether any
        entries came."""
        asked, got = read
        now = asyncio.get_running_loop().time()
        for worker, w in asked:
            if self._waiting.get(worker) is not w:  # (it left meanwhile)
                continue
            mine = [(stream, got[stream]) for stream in w.offsets if stream in got]
            if mine or now - w.since >= self.block_ms / 1000:
                del self._waiting[worker]
                self._busy[worker] = now
                if not w.reply.done():
                    w.reply.set_result(mine)
        return bool(got)


def shared_reads(raw: Any, *, count: int, block_ms: int) -> SharedReads | SeparateReads:
    """``SharedReads`` when ``raw`` (``shared.partitioned.raw_reader``) talks to one server, else ``SeparateReads``."""
    kind = SharedReads if isinstance(raw, RespClient) else SeparateReads
    return kind(raw, count=count, block_ms=block_ms)
