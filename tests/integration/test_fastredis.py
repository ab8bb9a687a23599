"""shared.fastredis against a real redis-server, compared with what redis-py's own pipeline does."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as sync_redis
from redis.exceptions import DataError, ResponseError, WatchError

from shared.fastredis import PinnedConnection, RawPipeline, entry_field, pack_command, raw_command, stream_items
from shared.runtime import connect


def test_pack_command_matches_redis_py_encoding():
    from redis.connection import Connection

    conn = Connection()
    for args in (("XADD", "s", "MAXLEN", "~", 100, "*", b"d", b"\x00\xff"), ("SET", "k\u00e9", 1.5),
                 ("CLIENT LIST",), ("XACK", b"s", "g", *(b"1-%d" % i for i in range(50))), ("ECHO", -3)):
        assert pack_command(*args) == b"".join(conn.pack_command(*args))
    with pytest.raises(DataError):
        pack_command("SET", "k", True)
    with pytest.raises(DataError):
        pack_command("SET", "k", object())


async def test_pipeline_replies_equal_redis_py(redis):
    async def run(pipe):
        pipe.xadd("s", {b"d": b"one"}, maxlen=10, approximate=True)
        pipe.xadd("s", {"a": "1", "b": "2"})  # not the fast form: built by redis-py's xadd
        pipe.hset("h", mapping={b"x": b"1", "y": 2})
        pipe.sadd("set", "m")
        pipe.set("k", "v", nx=True)
        pipe.get("k")
        pipe.xlen("s")
        return await pipe.execute()

    ours = await run(RawPipeline(redis))
    await redis.flushall()
    theirs = await run(redis.pipeline(transaction=False))
    assert [type(r) for r in ours] == [type(r) for r in theirs]
    assert ours[2:] == theirs[2:]
    await redis.flushall()
    async with RawPipeline(redis, transaction=True) as tx:
        tx.set("a", 1)
        tx.incr("a")
        tx.xadd("s", {b"d": b"x"}, maxlen=5)
        result = await tx.execute()
    assert result[:2] == [True, 2] and isinstance(result[2], bytes)
    assert await redis.get("a") == b"2"


async def test_errors_keep_the_connection_in_sync(redis):
    await redis.set("str", "x")
    pipe = RawPipeline(redis)
    pipe.incr("str")  # WRONGTYPE-like error in the middle
    pipe.set("after", 1)
    replies = await pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], ResponseError) and replies[1] is True
    pipe.incr("str")
    with pytest.raises(ResponseError):
        await pipe.execute()
    # a refused command in a transaction aborts the whole transaction
    async with RawPipeline(redis, transaction=True) as tx:
        tx.set("t1", 1)
        tx.execute_command("SET", "t2")  # wrong number of arguments: refused while queued
        with pytest.raises(ResponseError):
            await tx.execute()
    assert await redis.get("t1") is None
    assert await redis.ping()
    assert await raw_command(redis, "PING") == b"PONG"


async def test_watch_detects_a_change_and_commits_otherwise(redis, redis_url):
    await redis.set("lease", "me")
    other = connect(redis_url)
    try:
        async with RawPipeline(redis, transaction=True) as tx:
            await tx.watch("lease")
            assert await tx.mget(["lease"]) == [b"me"]
            tx.multi()
            tx.set("out", 1)
            await other.set("lease", "someone else")
            with pytest.raises(WatchError):
                await tx.execute()
        assert await redis.get("out") is None
        async with RawPipeline(redis, transaction=True) as tx:
            await tx.watch("lease")
            tx.multi()
            tx.set("out", 2)
            assert await tx.execute() == [True]
        assert await redis.get("out") == b"2"
    finally:
        await other.aclose()


async def test_raw_xreadgroup_reply_is_the_server_reply(redis):
    await redis.xadd("st", {b"d": b"1"})
    await redis.xgroup_create("st", "g", id="0")
    reply = await raw_command(redis, "XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "st", ">")
    (stream, entries), = stream_items(reply)
    assert stream == b"st" and entry_field(entries[0][1], b"d") == b"1"
    assert await raw_command(redis, "XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "st", ">") is None


async def test_cancelled_blocking_read_does_not_poison_the_pool(redis):
    await redis.xgroup_create("blk", "g", id="0", mkstream=True)
    task = asyncio.create_task(raw_command(redis, "XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "blk",
                                           ">"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(5):  # the connection of the cancelled read was closed, not handed out with a late reply
        assert await raw_command(redis, "ECHO", "x") == b"x"


async def test_reply_waiting_says_when_the_reply_of_a_read_sent_ahead_arrives(redis, redis_url):
    await redis.xgroup_create("ahead", "g", id="0", mkstream=True)
    pinned = PinnedConnection(redis)
    assert not pinned.reply_waiting()  # nothing outstanding
    await pinned.send_ahead(pack_command("XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "ahead", ">"))
    await asyncio.sleep(0.05)
    assert not pinned.reply_waiting()  # blocked: no entry yet
    # written while this task runs no event loop step (as the engine's speculation runs): the reply is on the socket
    with sync_redis.Redis.from_url(redis_url) as writer:
        writer.xadd("ahead", {b"d": b"1"})
    deadline = time.monotonic() + 2
    while not pinned.reply_waiting():
        assert time.monotonic() < deadline, "the entry's reply never showed as waiting"
        time.sleep(0.001)
    await asyncio.sleep(0.05)  # the loop has now read it into the connection's buffer: still waiting
    assert pinned.reply_waiting()
    (_, entries), = stream_items(await pinned.read_outstanding())
    assert entry_field(entries[0][1], b"d") == b"1"
    assert not pinned.reply_waiting()  # taken
    await pinned.release()


async def test_commands_sent_after_a_read_ahead_are_read_with_its_reply_and_keep_the_connection_in_step(redis):
    """``send_ahead(packed, after=, replies_after=)``: the read's reply is ``read_outstanding()``'s; the replies of the
    commands behind it (run once the blocked read returned) land in ``trailing_replies``, an error as its object; the
    connection is then in step for the next command."""
    await redis.xgroup_create("behind", "g", id="0", mkstream=True)
    await redis.set("text", "not a number")
    pinned = PinnedConnection(redis)
    after = pack_command("INCR", "counter") + pack_command("INCR", "text") + pack_command("INCR", "counter")
    await pinned.send_ahead(pack_command("XREADGROUP", "GROUP", "g", "c", "BLOCK", 5000, "STREAMS", "behind", ">"),
                            after, 3)
    await asyncio.sleep(0.05)
    assert await redis.get("counter") is None  # behind the blocked read: not run yet
    await redis.xadd("behind", {b"d": b"1"})
    (_, entries), = stream_items(await pinned.read_outstanding())
    assert entry_field(entries[0][1], b"d") == b"1"
    first, failed, second = pinned.trailing_replies
    assert (first, second) == (1, 2) and isinstance(failed, ResponseError) and "not an integer" in str(failed)
    assert not pinned.outstanding and await pinned.command("ECHO", "next") == b"next"
    await pinned.release()


def test_pack_command_takes_hiredis_fast_path_and_the_same_bytes_for_what_it_refuses():
    """hiredis packs str, bytes, int and float; bytearray and memoryview take the Python loop (same RESP); bool is
    refused naming the value, as redis-py refuses it; multi-word command names are split first."""
    assert pack_command("SET", "k", 1, 1.5, b"\x00") == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n1.5\r\n$1\r\n\x00\r\n"
    assert pack_command("X", bytearray(b"ab"), memoryview(b"c")) == b"*3\r\n$1\r\nX\r\n$2\r\nab\r\n$1\r\nc\r\n"
    assert pack_command("CLIENT LIST") == b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n"
    with pytest.raises(DataError, match="bool"):
        pack_command("SET", "k", True)


async def test_error_replies_keep_redis_py_exception_types(redis):
    from redis.exceptions import NoScriptError

    pipe = RawPipeline(redis)
    pipe.evalsha("0" * 40, 0)
    pipe.ping()
    replies = await pipe.execute(raise_on_error=False)
    assert isinstance(replies[0], NoScriptError) and replies[1] is True
