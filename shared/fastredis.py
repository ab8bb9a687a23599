"""Pre-packed Redis commands for the hot paths (pipelines, transactions, XREADGROUP with its raw reply).

Why: with redis-py 8.1 + hiredis, packing one XADD costs ~5 µs (``Connection.pack_command`` splits the command name,
encodes every argument through the encoder and joins buffers step by step), an XACK of 1,000 ids ~0.5 ms, and the
XREADGROUP response callback builds a dict per entry. On 2 cores shared by a producer, redis-server and the builder
those microseconds are the budget (bench/bench_candles.py prints the CPU per trade of each process). Here commands are
packed with one ``bytes.join`` and sent on a pooled connection of the same client; replies are read with the
client's own (hiredis) parser, so errors still arrive as redis-py's exception types.

- ``pack_command(*args)``: RESP bytes, with redis-py's encoding rules (bytes as is, str UTF-8, int/float repr,
  bool refused).
- ``RawPipeline(redis, transaction=...)``: the subset of redis-py's ``Pipeline`` the services use — every command
  method of ``AsyncCoreCommands`` queues, ``watch`` (immediate mode until ``multi``) with WatchError on a changed key,
  ``execute(raise_on_error=...)``, ``async with``. Replies go through the client's response callbacks as redis-py's
  would.
- ``raw_command(redis, *args)``: one command, its reply exactly as the server sent it (no response callback):
  XREADGROUP entries stay ``[id, [field, value, ...]]`` lists.
"""

from __future__ import annotations

import asyncio
import select
from typing import Any

from hiredis import pack_command as _hiredis_pack
from redis.asyncio import Redis
from redis.commands import AsyncCoreCommands
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis.exceptions import ConnectionError, DataError, RedisError, ResponseError, TimeoutError, WatchError

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_UNWATCH = b"*1\r\n$7\r\nUNWATCH\r\n"


def _arg(a: Any) -> bytes:
    t = type(a)
    if t is bytes:
        return a
    if t is str:
        return a.encode()
    if t is int:
        return b"%d" % a
    if isinstance(a, bool):
        raise DataError(f"Invalid input of type: 'bool'. Convert to a bytes, string, int or float first: {a!r}")
    if isinstance(a, (int, float)):
        return repr(a).encode()
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    if isinstance(a, str):
        return str(a).encode()
    raise DataError(f"Invalid input of type: {type(a).__name__!r}. Convert to a bytes, string, int or float first.")


def pack_command(*args: Any) -> bytes:
    """One command in RESP (``*N`` array of bulk strings). Multi-word names (``"CLIENT LIST"``) are split.

    hiredis packs str, bytes, int and float arguments in C (~3x faster: the engine's commit has ~100 arguments);
    anything else (bytearray, memoryview, bool: refused as redis-py refuses it) takes the loop below."""
    if type(args[0]) is str and " " in args[0]:
        args = (*args[0].split(), *args[1:])
    try:
        return _hiredis_pack(args)
    except TypeError:
        pass
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if type(a) is bytes else _arg(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def pack_xadd(stream: bytes, maxlen: int, field: bytes, data: bytes) -> bytes:
    """``XADD stream MAXLEN ~ maxlen * field data`` (the bus's publish), packed in one formatting step."""
    m = b"%d" % maxlen
    return b"*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%s\r\n$1\r\n*\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(stream), stream, len(m), m, len(field), field, len(data), data)


async def read_replies(conn: Any, n: int) -> list[Any]:
    """Read ``n`` replies; error replies come back as exception objects (the caller decides), in order.

    redis-py's ``read_response`` costs ~15 µs of CPU per reply when a socket timeout is set (an asyncio timeout
    context and a timer handle each time): replies already in the hiredis reader's buffer are taken from it
    directly, and only when it needs more bytes does ``read_response`` (with its timeout and error handling) run.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    gets = getattr(reader, "gets", None)
    push_type = getattr(parser, "_hiredis_PushNotificationType", None)
    out: list[Any] = []
    append = out.append
    while len(out) < n:
        reply = gets() if gets is not None else _NOT_ENOUGH_DATA
        if reply is _NOT_ENOUGH_DATA:
            try:
                append(await conn.read_response())
            except ResponseError as exc:
                append(exc)
            continue
        if isinstance(reply, ConnectionError):
            raise reply
        if push_type is not None and isinstance(reply, push_type):
            await parser.handle_push_response(reply)  # an out-of-band push, not one of ours
            continue
        append(reply)
    return out


async def send(conn: Any, data: bytes) -> None:
    """``conn.send_packed_command(data)`` without its per-call ``asyncio.wait_for`` (a Task per command when a
    socket timeout is set, as redis-py 8 does by default: ~30 µs). The write goes to the socket at once; only when
    the kernel buffer is full is there something to wait for, and then with the connection's timeout."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected:
        await conn.send_packed_command(data)  # (re)connects
        return
    if conn.health_check_interval and asyncio.get_running_loop().time() > conn.next_health_check:
        await conn.send_packed_command(data)  # redis-py's PING health check when due
        return
    try:
        writer.write(data)
        if writer.transport.get_write_buffer_size():
            await asyncio.wait_for(writer.drain(), conn.socket_timeout)
    except asyncio.TimeoutError:
        await conn.disconnect(nowait=True)
        raise TimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise ConnectionError(f"Error while writing to socket: {exc}") from exc


def _command_name(args: tuple) -> str:
    name = args[0]
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


async def raw_command(redis: Redis, *args: Any) -> Any:
    """Send one command and return its reply as the server sent it (redis-py's response callback is skipped)."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        await send(conn, pack_command(*args))
        return await conn.read_response()
    except ResponseError:
        raise  # the reply was read whole: the connection is in sync
    except BaseException:
        await conn.disconnect(nowait=True)  # cancelled or failed mid-reply: never reuse a desynchronised socket
        raise
    finally:
        await pool.release(conn)


def stream_items(reply: Any) -> Any:
    """(stream, entries) pairs of a raw XREAD/XREADGROUP reply: a map under RESP3 (redis-py 8's default), a list of
    pairs under RESP2; None (nothing within BLOCK) gives nothing."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def entry_field(fields: Any, name: bytes) -> bytes | None:
    """The value of field ``name`` of a raw stream entry (``[f, v, f, v...]``; a dict is accepted too; None when the
    entry was deleted while pending)."""
    if fields is None:
        return None
    if isinstance(fields, dict):
        return fields.get(name)
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


class PinnedConnection:
    """A pool connection kept by one reader (a consumer's XREADGROUP loop): no pool checkout per command.

    On any failure but an error reply the connection is dropped (closed and given back); the next command takes a
    new one. ``release()`` gives it back when the reader stops.

    Read-ahead: a ``RawPipeline(pinned=...)`` may send the reader's next command in the same write as its own
    MULTI/EXEC (one round trip per batch instead of two); that reply is then ``outstanding`` and must be taken with
    ``read_outstanding()`` before the connection carries anything else.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._conn: Any = None
        self.outstanding = False  # a read-ahead reply not read yet
        self.trailing = 0  # replies of commands sent after the outstanding one (``send_ahead(after=)``)
        self.trailing_replies: list[Any] = []  # theirs, as ``read_outstanding`` last read them (errors as objects)

    async def connection(self) -> Any:
        if self.outstanding:
            raise RedisError("a read-ahead reply is still outstanding on this connection")
        conn = self._conn
        if conn is None:
            conn = self._conn = await self.redis.connection_pool.get_connection()
        return conn

    async def command(self, *args: Any) -> Any:
        """One command; its reply as the server sent it (no response callback)."""
        await self.send_ahead(pack_command(*args))
        return await self.read_outstanding()

    async def send_ahead(self, packed: bytes, after: bytes = b"", replies_after: int = 0) -> None:
        """Send ``packed`` now; its reply is ``outstanding`` (taken later with ``read_outstanding()``). ``after``:
        ``replies_after`` more commands in the same write, run by the server once ``packed`` has returned, whose
        replies nobody waits for: ``read_outstanding`` takes them with it (``trailing_replies``). Behind a blocking
        read they wait for it, so only what may wait that long goes there (the consumer's XACKs of the batch just
        handled: its entries stay pending that long; a crash meanwhile re-delivers them, as before the ack)."""
        conn = await self.connection()
        try:
            await send(conn, packed + after if after else packed)
        except BaseException:
            await self.drop()
            raise
        self.outstanding = True
        self.trailing = replies_after

    async def read_outstanding(self) -> Any:
        """The reply of the command sent ahead (as the server sent it); the replies of the commands sent after it go
        to ``trailing_replies``. A failure other than an error reply drops the connection: it may be out of step with
        its replies."""
        conn = self._conn
        n, self.outstanding, self.trailing = 1 + self.trailing, False, 0
        if conn is None:
            raise ConnectionError("read-ahead connection was dropped")
        try:
            reply, *self.trailing_replies = await read_replies(conn, n)
        except BaseException:
            await self.drop()
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def reply_waiting(self) -> bool:
        """Whether the outstanding reply has begun to arrive: bytes in the parser, in the connection's stream buffer
        or on its socket (the check redis-py's own ``can_read`` makes, plus the socket). For optional work between a
        read sent ahead and its reply (the alert engine's speculation), which stops when the read has something.
        False when nothing is outstanding; True when the connection cannot tell (its reply then says why)."""
        conn = self._conn
        if not self.outstanding or conn is None:
            return False
        try:
            parser = conn._parser
            if parser._reader.has_data():
                return True
            stream = parser._stream
            if stream._buffer or stream.at_eof():
                return True
            return bool(select.select((conn._writer.transport.get_extra_info("socket"),), (), (), 0)[0])
        except Exception:  # not hiredis, or a connection going away: the caller's read finds out which
            return True

    async def drop(self) -> None:
        """Close the connection (a desynchronised or failed socket) and give it back; the next use takes a new one."""
        conn, self._conn = self._conn, None
        self.outstanding, self.trailing = False, 0
        if conn is not None:
            await conn.disconnect(nowait=True)
            await self.redis.connection_pool.release(conn)

    async def release(self) -> None:
        if self.outstanding:  # a reply nobody will read: never hand back a desynchronised socket
            await self.drop()
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.redis.connection_pool.release(conn)


class RawPipeline(AsyncCoreCommands):
    """A pipeline (``transaction=True``: MULTI/EXEC) whose commands are packed by ``pack_command``.

    Use like redis-py's: ``async with RawPipeline(redis, transaction=True) as tx: tx.xadd(...); await tx.execute()``.
    After ``await tx.watch(*keys)`` commands run immediately (``await tx.mget(...)``) until ``tx.multi()``.
    """

    def __init__(self, redis: Redis, *, transaction: bool = False, pinned: PinnedConnection | None = None) -> None:
        self.redis = redis
        self.transaction = transaction
        self.pinned = pinned  # use this reader's connection (and allow a read-ahead) instead of a pool checkout
        self._callbacks = redis.response_callbacks
        self._parts: list[bytes] = []
        self._commands: list[tuple[str, dict]] = []
        self._conn: Any = None  # pinned by watch()
        self._watching = False
        self._multi = False
        self._sent: tuple[list[tuple[str, dict]], bool] = ([], False)  # (commands, transaction) of send()

    async def __aenter__(self) -> RawPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.reset()

    def __len__(self) -> int:
        return len(self._commands)

    # ---- queueing --------------------------------------------------------------------------------------------------

    def execute_command(self, *args: Any, **options: Any) -> Any:  # type: ignore[override]
        if self._watching and not self._multi:
            return self._immediate(args, options)
        self._parts.append(pack_command(*args))
        self._commands.append((_command_name(args), options))
        return self

    def xadd(self, name: Any, fields: dict, id: Any = "*", maxlen: int | None = None,  # type: ignore[override]
             approximate: bool = True, nomkstream: bool = False, minid: Any = None, limit: int | None = None,
             **kwargs: Any) -> Any:
        """The bus's XADD (one field, MAXLEN ~, id ``*``) packed directly; anything else as redis-py builds it."""
        if (maxlen is not None and approximate and id == "*" and not nomkstream and minid is None and limit is None
                and not kwargs and len(fields) == 1 and not (self._watching and not self._multi)):
            (field, value), = fields.items()
            if type(value) is bytes and type(maxlen) is int:
                stream = name if type(name) is bytes else _arg(name)
                self._parts.append(pack_xadd(stream, maxlen, _arg(field), value))
                self._commands.append(("XADD", {}))
                return self
        return super().xadd(name, fields, id=id, maxlen=maxlen, approximate=approximate, nomkstream=nomkstream,
                            minid=minid, limit=limit, **kwargs)

    def multi(self) -> None:
        if self._multi:
            raise RedisError("Cannot issue nested calls to MULTI")
        if self._commands:
            raise RedisError("Commands without an initial WATCH have already been issued")
        self._multi = True

    async def watch(self, *names: Any) -> bool:
        if self._multi:
            raise RedisError("Cannot issue a WATCH after a MULTI")
        if self._conn is None:
            self._conn = await self._checkout()
        self._watching = True
        return await self._immediate(("WATCH", *names), {})

    # ---- sending ---------------------------------------------------------------------------------------------------

    def _callback(self, name: str, reply: Any, options: dict) -> Any:
        if isinstance(reply, ResponseError):
            return reply
        cb = self._callbacks.get(name)
        return cb(reply, **options) if cb is not None else reply

    async def _immediate(self, args: tuple, options: dict) -> Any:
        conn = self._conn
        try:
            await send(conn, pack_command(*args))
            reply = await conn.read_response()
        except ResponseError:
            raise
        except BaseException:
            await self._drop()
            raise
        return self._callback(_command_name(args), reply, options)

    async def _checkout(self) -> Any:
        return await (self.pinned.connection() if self.pinned is not None
                      else self.redis.connection_pool.get_connection())

    async def execute(self, raise_on_error: bool = True, read_ahead: bytes | None = None) -> list[Any]:
        """Send everything queued in one write; the replies in order (MULTI/EXEC when ``transaction``).

        ``read_ahead`` (a packed command, only with ``pinned``): sent in the same write after the queued commands;
        its reply is left unread (``pinned.outstanding``) for the reader, whether the pipeline succeeded or not.
        """
        if not await self.send(read_ahead):
            return []
        return await self.replies(raise_on_error)

    async def send(self, read_ahead: bytes | None = None) -> bool:
        """The first half of ``execute``: send everything queued (and ``read_ahead``) now; ``replies()`` reads what
        comes back, and nothing else may use this pipeline or its connection in between (the caller works while
        Redis runs the commands). False when there was nothing to send."""
        parts, commands = self._parts, self._commands
        self._parts, self._commands = [], []
        if read_ahead is not None and self.pinned is None:
            raise RedisError("read_ahead needs a pinned connection")
        if not commands and not self._watching and read_ahead is None:
            return False
        tx = self.transaction or self._multi
        tail = (read_ahead,) if read_ahead is not None else ()
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._checkout()
        try:
            await send(conn, b"".join((_MULTI, *parts, _EXEC, *tail)) if tx else b"".join((*parts, *tail)))
        except BaseException:
            self._multi = False
            await self._drop()
            raise
        if read_ahead is not None:
            self.pinned.outstanding = True  # type: ignore[union-attr]
        self._sent = (commands, tx)
        return True

    async def replies(self, raise_on_error: bool = True) -> list[Any]:
        """The second half of ``execute``: the replies of what ``send()`` sent, in order."""
        (commands, tx), self._sent = self._sent, ([], False)
        conn = self._conn
        replies: Any = []
        try:
            if tx:
                # +OK of MULTI, QUEUED (or an error) per command, then EXEC's array
                *queued, replies = await read_replies(conn, len(commands) + 2)
                self._watching = False  # EXEC ends a WATCH either way
                if isinstance(replies, ResponseError):  # EXECABORT: a command was refused while queued
                    raise next((e for e in queued if isinstance(e, ResponseError)), replies) from None
                if replies is None:
                    raise WatchError("Watched variable changed.")
            elif commands:
                replies = await read_replies(conn, len(commands))
        except (ResponseError, WatchError):
            await self.reset()  # every reply was read: the connection goes back to the pool
            raise
        except BaseException:
            await self._drop()
            raise
        finally:
            self._multi = False
        await self.reset()
        out = [self._callback(name, reply, options) for (name, options), reply in zip(commands, replies)]
        if raise_on_error:
            for r in out:
                if isinstance(r, ResponseError):
                    raise r
        return out

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._watching = False
        if self.pinned is not None:
            await self.pinned.drop()
            return
        if conn is not None:
            await conn.disconnect(nowait=True)
            await self.redis.connection_pool.release(conn)

    async def reset(self) -> None:
        """Forget queued commands; UNWATCH and give the connection back to the pool."""
        self._parts, self._commands, self._multi = [], [], False
        conn, watching = self._conn, self._watching
        self._conn, self._watching = None, False
        if conn is None:
            return
        try:
            if watching:
                await send(conn, _UNWATCH)
                await conn.read_response()
        except BaseException:
            if self.pinned is not None:
                await self.pinned.drop()
                raise
            await conn.disconnect(nowait=True)
            raise
        finally:
            if self.pinned is None:
                await self.redis.connection_pool.release(conn)
