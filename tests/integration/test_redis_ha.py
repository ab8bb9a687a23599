"""shared.redisconn: a Redis Cluster client and a Sentinel-discovered master, on real servers."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as redis_errors

from shared.errors import ConfigError
from shared.redisconn import connect, parse_sentinel_url
from tests.support.redis_sentinel import FailoverOnKill, RedisWithSentinel


def test_sentinel_urls_are_parsed_and_bad_ones_named() -> None:
    assert parse_sentinel_url("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2") == (
        [("h1", 26379), ("h2", 26380)], "mymaster", 2, "pw")
    assert parse_sentinel_url("redis+sentinel://h1/mymaster") == ([("h1", 26379)], "mymaster", 0, None)
    with pytest.raises(ConfigError, match="master_name"):
        parse_sentinel_url("redis+sentinel://h1:26379")


async def test_a_cluster_client_reaches_every_node(redis_cluster) -> None:
    client = connect(redis_cluster.url, cluster=True)
    try:
        for i in range(30):  # keys spread over the three nodes' slots
            await client.set(f"k{i}", i)
        assert [int(v) for v in [await client.get(f"k{i}") for i in range(30)]] == list(range(30))
    finally:
        await client.aclose()


async def test_the_sentinel_client_follows_a_failover(tmp_path) -> None:
    servers = RedisWithSentinel(tmp_path)
    servers.start()
    client = connect(servers.url)
    try:
        await client.set("before", "1")
        await client.wait(1, 2000)  # on the replica before the failover
        servers.failover()
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # the first commands after the switch may fail once: services retry them
            try:
                await client.set("after", "2")
                break
            except (redis_errors.ConnectionError, redis_errors.ReadOnlyError, redis_errors.TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert await client.get("before") == b"1" and await client.get("after") == b"2"
    finally:
        await client.aclose()
        servers.stop()


async def test_a_connection_dropped_in_use_reconnects_to_the_new_master(tmp_path) -> None:
    """A single-connection client (the alert commit's) on the master when it is SIGKILLed; the replica is promoted
    and the killed server comes back as its replica. The client's next commands reach the new master: redis-py 8.1
    alone reconnected to the old address (now a replica: READONLY on every attempt, the engine stuck for good)."""
    servers = FailoverOnKill(tmp_path, down_after_ms=1000)
    servers.start()
    client = connect(servers.url)
    single = client.client()
    try:
        await single.set("k", "1")
        servers.kill()
        await asyncio.to_thread(servers.start, 60)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                await single.set("k", "2")
                break
            except (redis_errors.ConnectionError, redis_errors.ReadOnlyError, redis_errors.TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert await client.get("k") == b"2"
    finally:
        try:
            await single.aclose()
            await client.aclose()
        finally:
            servers.stop()  # (even when closing a stuck connection fails: no redis-server left behind)
