"""Redis faults for market_feed tests, on the real server: a loopback TCP proxy that cuts a connection after Redis
executed a command but before its reply reaches the client, and a read-only spell (the server made a replica of an
address where nothing listens, as during a failover, then promoted back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.exceptions import ConnectionError as RedisConnectionError

from shared.embedded_redis import free_port


class ReplyCutter:
    """Proxy 127.0.0.1:port → Redis. ``await cut_next_reply(marker)`` arms it: the next client request containing
    ``marker`` (e.g. b"EVALSHA") is forwarded, Redis' reply is read and thrown away, and both sockets are closed —
    the write landed, the client saw a connection error. ``cut`` counts the replies thrown away."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = 0
        self.cut = 0
        self._armed: tuple[bytes, ...] = ()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> ReplyCutter:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cut_next_reply(self, *markers: bytes) -> None:
        self._armed = markers

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        cutting = asyncio.Event()

        async def down() -> None:  # Redis → client
            while data := await up_reader.read(65536):
                if cutting.is_set():
                    return  # the reply of the armed request: dropped, connection closed below
                writer.write(data)
                await writer.drain()

        downstream = asyncio.create_task(down())
        try:
            while data := await reader.read(65536):
                if self._armed and any(m in data for m in self._armed):
                    self._armed = ()
                    cutting.set()
                    up_writer.write(data)
                    await up_writer.drain()
                    await asyncio.wait_for(downstream, timeout=10)  # Redis executed it and replied
                    self.cut += 1
                    return
                up_writer.write(data)
                await up_writer.drain()
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            downstream.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def read_only_for(redis, seconds: float) -> AsyncIterator[None]:
    """Make the server a replica of a port where nothing listens (writes answer READONLY; it keeps its data, as it
    never reaches a master to sync from) for ``seconds``, then promote it back."""
    await _command(redis, "REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        await asyncio.sleep(seconds)
        yield
    finally:
        await _command(redis, "REPLICAOF", "NO", "ONE")


async def _command(redis, *args: str) -> None:
    """A command from a client whose pooled connections may be stale after a restart of the server."""
    for attempt in range(20):
        try:
            await redis.execute_command(*args)
            return
        except RedisConnectionError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.1)
