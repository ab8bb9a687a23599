"""shared.resp.RespClient, the partition workers' XREAD client, against a real redis-server: its replies equal
redis-py's raw replies, blocked reads on several connections at once, errors as redis-py raises them, a restarted
server, a cancelled read, a password and a database from the URL, a server that never answers."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared.partitioned import raw_reader, read_streams
from shared.resp import RespClient
from shared.runtime import connect


@pytest.fixture
async def client(redis):
    c = RespClient.of(redis)
    assert c is not None
    yield c
    await c.aclose()


def _redis_py_raw(redis):
    """redis-py's client whose XREAD replies come as the server sent them (the reference, and what ``raw_reader``
    gives for a server the small client does not serve)."""
    raw = Redis(connection_pool=redis.connection_pool)
    raw.set_response_callback("XREAD", lambda response, **options: response)
    return raw


async def test_xread_replies_equal_redis_py_raw_replies(redis, client):
    ids = []
    for i in range(7):
        ids.append(await redis.xadd("a", {"d": f"payload-{i}".encode(), "x": i}))
        await redis.xadd("b", {"d": bytes(range(256)) * 3})
    await redis.xadd("c", {"d": b""})
    cases = [({"a": "0-0"}, 3), ({"a": "0-0", "b": "0-0", "c": "0-0"}, 100), ({"a": ids[2], "b": "0-0"}, 2),
             ({"nothing": "0-0"}, 10)]
    for offsets, count in cases:
        want = await read_streams(_redis_py_raw(redis), offsets, count=count, block_ms=None)
        got = await client.xread(offsets, count=count)
        assert read_streams_shape(got) == want
    assert await client.xread({"nothing": "0-0"}, count=10, block=10) is None


def read_streams_shape(reply):
    """A RESP2 XREAD reply as ``read_streams`` gives it (redis-py may speak RESP3: a map of streams)."""
    return [(name.decode(), entries) for name, entries in reply or () if entries]


async def test_read_streams_gives_the_same_entries_through_either_client(redis, client):
    for i in range(5):
        await redis.xadd("s1", {"d": str(i).encode()})
    via_small = await read_streams(client, {"s1": b"0-0"}, count=3, block_ms=None)
    via_redis_py = await read_streams(_redis_py_raw(redis), {"s1": b"0-0"}, count=3, block_ms=None)
    assert via_small == via_redis_py
    assert [fields for _, fields in via_small[0][1]] == [[b"d", b"0"], [b"d", b"1"], [b"d", b"2"]]


async def test_blocked_reads_on_several_connections_are_each_answered(redis, client):
    names = [f"blocked-{i}" for i in range(4)]
    reads = [asyncio.create_task(client.xread({n: "$"}, count=10, block=5000)) for n in names]
    await asyncio.sleep(0.2)  # (all four blocked in Redis)
    for n in reversed(names):
        await redis.xadd(n, {"d": n.encode()})
    replies = await asyncio.wait_for(asyncio.gather(*reads), 5)
    for n, reply in zip(names, replies, strict=True):
        [[stream, [[_, fields]]]] = reply
        assert stream == n.encode() and fields == [b"d", n.encode()]


async def test_calls_that_answer_at_once_share_one_connection_and_each_gets_its_own_reply(redis, client):
    for i in range(20):
        await redis.set(f"k{i}", f"v{i}")
    ids = await asyncio.gather(*(client.execute("CLIENT", "ID") for _ in range(8)))
    assert len(set(ids)) == 1  # (pipelined on one connection)
    gets = [asyncio.create_task(client.execute("GET", f"k{i}")) for i in range(20)]
    await asyncio.sleep(0)  # (all sent, or about to be)
    gets[5].cancel()  # its reply comes and is dropped; the others' stay in order
    replies = await asyncio.gather(*gets, return_exceptions=True)
    assert isinstance(replies[5], asyncio.CancelledError)
    assert [r for i, r in enumerate(replies) if i != 5] == [f"v{i}".encode() for i in range(20) if i != 5]
    blocked = asyncio.create_task(client.xread({"never": "$"}, count=1, block=2000))
    await asyncio.sleep(0.1)
    assert await client.execute("CLIENT", "ID") == ids[0]  # (a blocked read holds a connection of its own)
    await redis.xadd("never", {"d": b"1"})
    assert (await asyncio.wait_for(blocked, 5))[0][0] == b"never"


async def test_an_error_reply_raises_as_redis_py_does(redis, client):
    await redis.set("plain", "1")
    with pytest.raises(redis_errors.ResponseError, match="WRONGTYPE") as err:
        await client.xread({"plain": "0-0"}, count=1)
    with pytest.raises(redis_errors.ResponseError) as ref:
        await redis.xread({"plain": "0-0"}, count=1)
    assert str(err.value) == str(ref.value)
    assert await client.execute("PING") == b"PONG"  # (the connection stays usable)


async def test_a_cancelled_blocked_read_leaves_no_reply_for_the_next_call(redis, client):
    read = asyncio.create_task(client.xread({"late": "$"}, count=1, block=2000))
    await asyncio.sleep(0.1)
    read.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await read
    await redis.xadd("late", {"d": b"1"})  # (would answer the cancelled read, had its connection been kept)
    assert await client.execute("ECHO", "next") == b"next"
    assert (await client.xread({"late": "0-0"}, count=5))[0][1][0][1] == [b"d", b"1"]


async def test_a_restarted_server_is_reconnected_to(own_redis):
    redis = connect(own_redis.url)
    client = RespClient.of(redis)
    assert client is not None
    try:
        await redis.xadd("kept", {"d": b"1"})
        assert await client.xread({"kept": "0-0"}, count=1)
        own_redis.stop()
        own_redis.start()
        await asyncio.sleep(0.1)  # (the idle connection has seen its end)
        reply = await client.xread({"kept": "0-0"}, count=1)
        assert reply[0][1][0][1] == [b"d", b"1"]  # (the AOF kept it)
        own_redis.kill()
        with pytest.raises(redis_errors.ConnectionError):
            await client.xread({"kept": "0-0"}, count=1)
    finally:
        await client.aclose()
        await redis.aclose()


async def test_password_and_database_come_from_the_url(own_redis):
    admin = connect(own_redis.url)
    await admin.config_set("requirepass", "s3cret")
    url = own_redis.url.replace("redis://", "redis://:s3cret@").rstrip("/0").rstrip("/") + "/3"
    try:
        authed = connect(url)
        await authed.xadd("in-db-3", {"d": b"x"})
        client = RespClient.of(authed)
        assert client is not None and client.db == 3
        assert (await client.xread({"in-db-3": "0-0"}, count=1))[0][0] == b"in-db-3"
        wrong = RespClient.of(connect(url.replace("s3cret", "wrong")))
        assert wrong is not None
        with pytest.raises(redis_errors.AuthenticationError):
            await wrong.execute("PING")
        await client.aclose()
        await authed.config_set("requirepass", "")
        await authed.aclose()
    finally:
        await admin.aclose()


async def test_a_server_that_never_answers_times_out():
    async def silent(reader, writer):
        await reader.read(1 << 16)
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(host="127.0.0.1", port=port, socket_timeout=0.2)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(redis_errors.TimeoutError, match=r"within 0\.3s"):
            await client.xread({"s": "0-0"}, count=1, block=100)
        assert loop.time() - started >= 0.3  # not before the socket timeout plus the BLOCK
    finally:
        await client.aclose()
        server.close()


async def test_only_plain_servers_get_the_small_client(redis_url, redis_cluster):
    plain = connect(redis_url)
    cluster = RedisCluster.from_url(redis_cluster.url)
    sentinel = connect("redis+sentinel://127.0.0.1:1/mymaster")
    tls = Redis.from_url(redis_url.replace("redis://", "rediss://"))
    try:
        assert isinstance(raw_reader(plain), RespClient)
        assert RespClient.of(cluster) is None and not isinstance(raw_reader(cluster), RespClient)
        assert RespClient.of(sentinel) is None
        assert RespClient.of(tls) is None
        unix = RespClient.of(connect("unix:///tmp/none.sock"))
        assert unix is not None and unix.path == "/tmp/none.sock"
    finally:
        for c in (plain, cluster, sentinel, tls):
            await c.aclose()
