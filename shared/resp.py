"""A small Redis client for the loop of a partition worker (its XREAD, the alert engine's commit script): RESP2 over an
``asyncio.Protocol``, commands packed by ``hiredis.pack_command`` and replies parsed by ``hiredis.Reader`` (both
public hiredis APIs).

Why: a worker's XREAD is on the path of every trade, candle and book update, its commit on the path of every alert.
Through redis-py's asyncio client one call cost ~110-150 µs of CPU here (pool checkout, retry wrapper, a task per
send for its socket timeout, the stream reader, the response callback); through this client ~25-30 µs, for the same
bytes on the wire (``bench/bench_alerts.py --reference``, ``bench/bench_book_alerts.py --reference``;
``tests/integration/test_resp.py`` compares the replies with redis-py's). A call's deadline is checked by one timer
per connection (``WATCH_EVERY_S``): an ``asyncio.timeout`` per call cost as much as the rest of the call.

What it serves: one server reached by plain TCP or a Unix socket, with the URL's user, password and database
(``RespClient.of``). Anything else (TLS, a Redis Cluster, a master found through Sentinel, a credential provider)
keeps redis-py, which knows how to follow it: ``shared.partitioned.raw_reader`` decides.

Errors are redis-py's, so callers keep one ``except``: a lost or refused connection is ``ConnectionError``, no reply
within the socket timeout (plus the command's own ``BLOCK``) ``TimeoutError``, an error reply ``ResponseError`` (a
``LOADING`` server ``BusyLoadingError``, as redis-py maps it: "Redis is unavailable" for the services). A blocking
call's connection is closed when the call failed or was cancelled (its reply, if one comes, belongs to nobody); a
cancelled call leaves the shared connection open (its reply is read and dropped). One found closed before a call is
replaced, and a call whose reused connection fails is sent once more on a new one, as redis-py's default
retry does (what goes through this client may run twice: a read, or the alert commit, idempotent by its fence,
alert ids and offsets).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

#: How long a connect, or a reply beyond a command's own BLOCK, may take (redis-py's default socket timeout).
SOCKET_TIMEOUT_S = 5.0
#: How often a connection waiting for a reply checks whether it is late (a late reply fails up to this much later).
WATCH_EVERY_S = 0.25


class _Link(asyncio.Protocol):
    """One connection: requests answered in order (a future per request), replies parsed as bytes arrive."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=redis_errors.ResponseError)
        self.waiting: deque[tuple[asyncio.Future[Any], float, float]] = deque()  # (reply, loop time due by, timeout)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._watch: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []  # requests not yet written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(redis_errors.ConnectionError(f"protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            fut, _, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(redis_errors.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _fail(self, error: Exception) -> None:
        self.close()
        while self.waiting:
            fut, _, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)

    def request(self, packed: bytes, timeout_s: float) -> asyncio.Future[Any]:
        """The reply to ``packed``; ``TimeoutError`` (and the connection closed) if none came within ``timeout_s``
        (checked every ``WATCH_EVERY_S``: one timer per connection, not one per call, which cost as much CPU as the
        rest of a call)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(redis_errors.ConnectionError("connection to Redis closed"))
            return fut
        self.waiting.append((fut, loop.time() + timeout_s, timeout_s))
        if self._watch is None:
            self._watch = loop.call_later(WATCH_EVERY_S, self._check)
        # sent when the loop has run what is ready now: requests of several tasks resumed together (the workers
        # served by one burst of replies) leave in one write
        self._out.append(packed)
        if len(self._out) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check(self) -> None:
        self._watch = None
        if self.closed or not self.waiting:
            return
        loop = asyncio.get_running_loop()
        _, due, timeout_s = self.waiting[0]  # (replies come in order: the oldest request is the one late)
        if loop.time() >= due:
            self._fail(redis_errors.TimeoutError(f"no reply from Redis within {timeout_s:.1f}s"))
            return
        self._watch = loop.call_later(WATCH_EVERY_S, self._check)

    def close(self) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.transport is not None:
            self.transport.close()


class RespClient:
    """Connections to one Redis server, kept between calls: one per blocking call (a blocked XREAD holds its own),
    and one that every call answering at once shares, pipelined (the commits of workers resumed together leave in one
    write).

    ``await client.execute("XREAD", ...)``, ``await client.xread({stream: offset}, count=, block=)`` (redis-py's
    ``xread`` signature; the reply as the server sent it: ``[[stream, [[id, [field, value, ...]], ...]], ...]`` or
    None), ``await client.aclose()``."""

    def __init__(self, *, host: str = "localhost", port: int = 6379, path: str | None = None,
                 username: str | None = None, password: str | None = None, db: int = 0,
                 socket_timeout: float = SOCKET_TIMEOUT_S, keepalive: bool = True) -> None:
        self.host, self.port, self.path = host, port, path
        self.username, self.password, self.db = username, password, db
        self.socket_timeout = socket_timeout
        self.keepalive = keepalive
        self._idle: list[_Link] = []  # connections for blocking calls, between calls
        self._shared: _Link | None = None  # the connection of every call that answers at once
        self._connecting = asyncio.Lock()

    @classmethod
    def of(cls, redis: Any) -> RespClient | None:
        """A client on the server of the redis-py asyncio client ``redis``, if it is one this client serves (a
        plain TCP or Unix socket connection, no credential provider); None otherwise (TLS, Sentinel, Cluster)."""
        pool = getattr(redis, "connection_pool", None)  # (a RedisCluster has none)
        if pool is None or pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        kw = pool.connection_kwargs
        if kw.get("credential_provider") is not None:
            return None
        timeout = kw.get("socket_timeout") or SOCKET_TIMEOUT_S
        common = {"username": kw.get("username"), "password": kw.get("password"), "db": int(kw.get("db") or 0),
                  "socket_timeout": float(timeout)}
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"], keepalive=False, **common)
        return cls(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)),
                   keepalive=bool(kw.get("socket_keepalive", True)), **common)

    async def execute(self, *args: Any, block_s: float | None = None) -> Any:
        """Send one command and return its reply. Raises the reply when it is an error.

        ``block_s`` None: the command answers at once, and is pipelined on one connection with the other such calls
        (commits of several workers leave in one write, their replies come in one read). Else the server may hold it
        that long (a BLOCK argument): it gets a connection of its own for the wait."""
        packed = _pack(*args)
        if block_s is None:
            reply = await self._pipelined(packed)
        else:
            link, reused = await self._take()
            try:
                reply = await self._call(link, packed, block_s)
            except redis_errors.ConnectionError:
                if not reused:
                    raise
                link, _ = await self._take(fresh=True)  # (a connection that died while idle: once more, on a new one)
                reply = await self._call(link, packed, block_s)
            self._idle.append(link)
        if isinstance(reply, redis_errors.ResponseError):
            raise _mapped(reply)
        return reply

    async def _pipelined(self, packed: bytes) -> Any:
        link, reused = self._shared, True
        if link is None or link.closed:
            link, reused = await self._shared_link(), False
        try:
            # (cancelled: the connection stays, its reply is read and dropped, the other calls on it go on)
            return await link.request(packed, self.socket_timeout)
        except redis_errors.ConnectionError:
            if not reused:
                raise
            link = await self._shared_link()  # (the connection died while idle: once more, on a new one)
            return await link.request(packed, self.socket_timeout)

    async def _shared_link(self) -> _Link:
        async with self._connecting:  # (callers that find it closed together open one connection, not one each)
            if self._shared is None or self._shared.closed:
                self._shared = await self._connect()
            return self._shared

    async def xread(self, streams: dict[Any, Any], count: int | None = None, block: int | None = None) -> Any:
        """XREAD [COUNT count] [BLOCK block] STREAMS ... (redis-py's ``xread`` arguments), the reply unchanged."""
        args: list[Any] = ["XREAD"]
        if count is not None:
            args += ["COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", *streams.keys(), *streams.values()]
        return await self.execute(*args, block_s=None if block is None else block / 1000)

    async def aclose(self) -> None:
        """Close the idle connections and the shared one (calls waiting on it fail); one in use by a blocking call is
        closed when its call fails."""
        idle, self._idle = self._idle, []
        if self._shared is not None:
            idle.append(self._shared)
            self._shared = None
        for link in idle:
            link.close()

    async def _call(self, link: _Link, packed: bytes, block_s: float) -> Any:
        try:
            return await link.request(packed, self.socket_timeout + block_s)
        except BaseException:
            # no reply in time, cancelled, or the connection failed: a reply may still come, to nobody
            link.close()
            raise

    async def _take(self, *, fresh: bool = False) -> tuple[_Link, bool]:
        while self._idle and not fresh:
            link = self._idle.pop()
            if not link.closed:
                return link, True
        return await self._connect(), False

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        link: _Link | None = None
        try:
            async with asyncio.timeout(self.socket_timeout):
                if self.path is not None:
                    _, link = await loop.create_unix_connection(_Link, self.path)
                else:
                    transport, link = await loop.create_connection(_Link, self.host, self.port)
                    sock = transport.get_extra_info("socket")
                    if sock is not None and self.keepalive:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if self.password is not None:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    _check(await link.request(_pack(*auth), self.socket_timeout))
                if self.db:
                    _check(await link.request(_pack("SELECT", self.db), self.socket_timeout))
            return link
        except BaseException as exc:
            if link is not None:
                link.close()
            if isinstance(exc, TimeoutError):
                raise redis_errors.TimeoutError(f"connecting to Redis took over {self.socket_timeout:.1f}s") from None
            if isinstance(exc, OSError):
                raise redis_errors.ConnectionError(f"cannot connect to Redis: {exc}") from exc
            raise


class Script:
    """A Lua script called as redis-py's ``Script`` is (``await script(keys=, args=, client=)``): through ``small``
    (a ``RespClient`` on ``redis``' server, ``RespClient.of(redis)``) when there is one, by EVALSHA (EVAL after a
    NOSCRIPT: a restarted or flushed server); else through redis-py (``client``, by default ``redis``), which loads
    it again after a NOSCRIPT itself."""

    def __init__(self, redis: Any, text: str, small: RespClient | None) -> None:
        self.text = text
        self.script = redis.register_script(text)
        self.small = small

    async def __call__(self, *, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        if self.small is None:
            return await self.script(keys=keys, args=args, client=client)
        try:
            return await self.small.execute("EVALSHA", self.script.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await self.small.execute("EVAL", self.text, len(keys), *keys, *args)


def _pack(*args: Any) -> bytes:
    packed: bytes = hiredis.pack_command(args)
    return packed


def _mapped(error: redis_errors.ResponseError) -> redis_errors.RedisError:
    """An error reply as redis-py raises it for the errors the services tell apart."""
    text = str(error)
    if text.startswith("LOADING"):
        return redis_errors.BusyLoadingError(text)
    if text.startswith("READONLY"):
        return redis_errors.ReadOnlyError(text)
    if text.startswith("NOSCRIPT"):
        return redis_errors.NoScriptError(text)
    return error


def _check(reply: Any) -> None:
    if isinstance(reply, redis_errors.ResponseError):
        if str(reply).startswith(("WRONGPASS", "NOAUTH", "ERR invalid password")):
            raise redis_errors.AuthenticationError(str(reply))
        raise _mapped(reply)
