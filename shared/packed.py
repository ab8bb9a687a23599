"""A pipeline for the bus's hot writes, on redis-py's and hiredis's public APIs only.

Why: redis-py 8's asyncio pipeline spends ~15 µs packing one XADD (its encoder runs per argument) and ~15 µs reading
its reply (an asyncio timeout context per reply): market_feed publishing one trade per entry topped out near 50k
entries/s, less than candle_builder can build. Here each command is packed by ``hiredis.pack_command``, everything
queued goes out in one ``Connection.send_packed_command``, and the replies are read back to back with
``Connection.read_response(timeout=math.inf)`` under ONE timeout for the whole batch (the connection's
``socket_timeout``). Replies still go through the client's response callbacks, and error replies come back as redis-py's
exceptions. A pool connection is used and given back; a failure mid-batch closes it (never reused out of step).

The few command methods the services queue (``xadd``, ``xack``, ``hset``, ``sadd``, ``srem``, ``publish``, ``delete``,
``evalsha``, ``mget``) take redis-py's arguments; anything else goes through ``execute_command``. As in redis-py's pipeline, ``await watch(*keys)`` holds a connection and runs
commands at once (``await tx.mget(...)``) until ``multi()``; EXEC then fails with ``WatchError`` if a watched key
changed.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from hiredis import pack_command as _hiredis_pack
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError, WatchError

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_OPTIONS_NOT_FOR_CALLBACKS = ("keys", "NEVER_DECODE", "EMPTY_RESPONSE")
_XADD: tuple[str, dict[str, Any]] = ("XADD", {})


class PackedPipeline:
    """``async with PackedPipeline(redis, transaction=True) as tx: tx.xadd(...); await tx.execute()``."""

    def __init__(self, redis: Redis, *, transaction: bool = False) -> None:
        self.redis = redis
        self.transaction = transaction
        self._parts: list[bytes] = []
        self._commands: list[tuple[str, dict[str, Any]]] = []
        self._conn: Any = None  # held from watch() to execute()
        self._multi = False

    async def __aenter__(self) -> PackedPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._parts, self._commands, self._multi = [], [], False
        if self._conn is not None:  # watched and never executed: a WATCH must not go back to the pool with it
            await self._drop(self._conn)

    def __len__(self) -> int:
        return len(self._commands)

    def _pack(self, args: tuple[Any, ...]) -> bytes:
        try:
            packed: bytes = _hiredis_pack(args)
        except TypeError:  # an argument hiredis does not take (memoryview...): redis-py's encoder decides
            encode = self.redis.get_encoder().encode  # type: ignore[no-untyped-call]
            packed = _hiredis_pack(tuple(encode(a) for a in args))
        return packed

    # ---- commands (queued; run at once between watch() and multi()) ------------------------------------------------

    def xadd_entry(self, stream: str, maxlen: int, field: bytes, data: bytes) -> None:
        """``XADD stream MAXLEN ~ maxlen * field data``, queued: the bus's publish, at ~1 µs (hiredis packs it)."""
        if self._conn is not None and not self._multi:
            raise RedisError("xadd_entry is not for the immediate mode of a WATCH")
        command: tuple[Any, ...] = ("XADD", stream, "MAXLEN", "~", maxlen, "*", field, data)
        self._parts.append(_hiredis_pack(command))
        self._commands.append(_XADD)

    def xadd(self, name: Any, fields: Mapping[Any, Any], *, maxlen: int | None = None,
             approximate: bool = True) -> Any:
        trim = () if maxlen is None else ("MAXLEN", "~", maxlen) if approximate else ("MAXLEN", maxlen)
        return self.execute_command("XADD", name, *trim, "*", *(x for kv in fields.items() for x in kv))

    def xack(self, name: Any, group: Any, *ids: Any) -> Any:
        return self.execute_command("XACK", name, group, *ids)

    def hset(self, name: Any, key: Any = None, value: Any = None, mapping: Mapping[Any, Any] | None = None) -> Any:
        pairs = [] if key is None else [key, value]
        for kv in (mapping or {}).items():
            pairs += kv
        return self.execute_command("HSET", name, *pairs)

    def sadd(self, name: Any, *values: Any) -> Any:
        return self.execute_command("SADD", name, *values)

    def srem(self, name: Any, *values: Any) -> Any:
        return self.execute_command("SREM", name, *values)

    def publish(self, channel: Any, message: Any) -> Any:
        return self.execute_command("PUBLISH", channel, message)

    def delete(self, *names: Any) -> Any:
        return self.execute_command("DEL", *names)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def mget(self, keys: Any, *args: Any) -> Any:
        return self.execute_command("MGET", *([keys] if isinstance(keys, (str, bytes)) else keys), *args)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue one command (what every command method calls); after ``watch()`` and before ``multi()``, run it."""
        if isinstance(args[0], str) and " " in args[0]:  # "CLIENT LIST" and the like
            args = (*args[0].split(), *args[1:])
        name = (args[0].decode() if isinstance(args[0], bytes) else str(args[0])).upper()
        if self._conn is not None and not self._multi:
            return self._immediate(name, args, options)
        self._parts.append(self._pack(args))
        self._commands.append((name, options))
        return self

    async def watch(self, *names: Any) -> Any:
        """WATCH ``names`` on a connection held until ``execute()``; commands run at once until ``multi()``."""
        if self._multi:
            raise RedisError("Cannot issue a WATCH after a MULTI")
        if self._conn is None:
            self._conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return await self._immediate("WATCH", ("WATCH", *names), {})

    def multi(self) -> None:
        """Start queueing the transaction (after ``watch()``)."""
        if self._multi or self._commands:
            raise RedisError("MULTI after commands were queued, or twice")
        self._multi = True

    async def _immediate(self, name: str, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        (reply,) = await self._round_trip(self._pack(args), 1, keep=True)
        return self._callback(name, reply, options, raise_error=True)

    def _callback(self, name: str, reply: Any, options: dict[str, Any], *, raise_error: bool = False) -> Any:
        if isinstance(reply, ResponseError):
            if raise_error:
                raise reply
            return reply
        callback = self.redis.response_callbacks.get(name)
        if callback is None:
            return reply
        return callback(reply, **{k: v for k, v in options.items() if k not in _OPTIONS_NOT_FOR_CALLBACKS})

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send everything queued in one write and return the replies in order (MULTI/EXEC when ``transaction`` or
        after ``multi()``)."""
        parts, commands = self._parts, self._commands
        tx = self.transaction or self._multi
        self._parts, self._commands, self._multi = [], [], False
        if not commands and self._conn is None:
            return []
        blob = b"".join((_MULTI, *parts, _EXEC)) if tx else b"".join(parts)
        replies = await self._round_trip(blob, len(commands) + 2 if tx else len(commands))
        if tx:
            *queued, result = replies[1:]
            if isinstance(result, ResponseError):  # EXECABORT: a command was refused while queued
                raise next((e for e in queued if isinstance(e, ResponseError)), result)
            if result is None:
                raise WatchError("Watched variable changed.")
            replies = list(result)
        out = [self._callback(name, reply, options) for (name, options), reply in zip(commands, replies)]
        if raise_on_error:
            for reply in out:
                if isinstance(reply, ResponseError):
                    raise reply
        return out

    async def _round_trip(self, blob: bytes, n: int, *, keep: bool = False) -> list[Any]:
        """Send ``blob``, read ``n`` replies (error replies as exception objects). The connection is the held one
        (after ``watch()``) or a pool one; it goes back to the pool after, unless ``keep``."""
        pool = self.redis.connection_pool
        conn = self._conn if self._conn is not None else await pool.get_connection()  # type: ignore[no-untyped-call]
        self._conn = None
        try:
            await conn.send_packed_command(blob)
            replies: list[Any] = []
            async with asyncio.timeout(conn.socket_timeout):
                while len(replies) < n:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as exc:  # the reply was read whole: the connection is in step
                        replies.append(exc)
        except BaseException:
            await self._drop(conn)  # failed or cancelled mid-batch: never reuse an out-of-step socket
            raise
        if keep:
            self._conn = conn
        else:
            await pool.release(conn)
        return replies

    async def _drop(self, conn: Any) -> None:
        self._conn = None
        await conn.disconnect(nowait=True)
        await self.redis.connection_pool.release(conn)


async def raw_command(redis: Redis, *args: Any) -> Any:
    """One command, its reply exactly as the server sent it (no response callback: XREADGROUP entries stay
    ``[id, [field, value...]]`` lists) and never retried: redis-py retries a command whose connection failed, and a
    retried XREADGROUP or XAUTOCLAIM would leave the entries of the lost reply pending, unseen, while newer ones are
    handled. A connection error reaches the caller, who re-reads its own pending entries first.

    On a Redis Cluster (no connection pool to take a connection from) redis-py routes the command to its key's node
    and parses the reply (entries' fields as dicts, which the consumer reads too); a reply it lost and retried leaves
    its entries pending with the caller, who claims them back after ``claim_idle_ms``."""
    if isinstance(redis, RedisCluster):
        return await redis.execute_command(*args)
    pipe = PackedPipeline(redis)
    (reply,) = await pipe._round_trip(pipe._pack(args), 1)
    if isinstance(reply, ResponseError):
        raise reply
    return reply
