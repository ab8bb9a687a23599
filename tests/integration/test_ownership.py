"""Partition leases with fencing (shared.ownership) on a real Redis and a real 3-node Redis Cluster."""

from __future__ import annotations

import asyncio

import pytest

from shared import streams
from shared.ownership import PREVIOUS, FencedError, Lease, Ownership
from shared.partitions import partition_of, tag
from shared.redisconn import connect
from tests.integration.market_feed.faults import ReplyCutter

PARTITIONS = 16


async def test_replicas_split_partitions_fairly_and_never_share_one(client) -> None:
    a, b, c = (Ownership(client, "svc", name, PARTITIONS, ttl_ms=3000) for name in ("a", "b", "c"))
    for _ in range(3):  # a few rounds, as the balance loops would run them
        for replica in (a, b, c):
            await replica.balance(now_ms=1_000_000)
    held = [a.owned, b.owned, c.owned]
    assert set().union(*held) == set(range(PARTITIONS))
    assert sum(len(h) for h in held) == PARTITIONS  # disjoint
    assert max(len(h) for h in held) <= 6  # ceil(16 / 3)
    owners = await a.owners()
    for replica in (a, b, c):
        assert {p for p, name in owners.items() if name == replica.instance} == replica.owned


async def test_a_dead_replica_loses_its_partitions_and_its_late_writes_are_fenced(client) -> None:
    a = Ownership(client, "svc", "a", PARTITIONS, ttl_ms=300)
    b = Ownership(client, "svc", "b", PARTITIONS, ttl_ms=300)
    await a.balance(now_ms=1_000)  # alone: takes everything
    assert a.owned == set(range(PARTITIONS))
    key = f"sentinel:{tag(3)}:probe"
    assert await a.fenced(3, [("SET", key, "from-a"), ("GET", key)]) == [b"OK", b"from-a"]

    await asyncio.sleep(0.4)  # a stops renewing (paused, killed): its leases expire
    await b.balance(now_ms=1_500)  # a is no longer a live member at 1_500 - ttl
    assert b.owned == set(range(PARTITIONS))

    with pytest.raises(FencedError):
        await a.fenced(3, [("SET", key, "late-a")])
    assert await client.get(key) == b"from-a"
    assert 3 not in a.owned
    # the new owner's token is larger than the old one's (fencing tokens only grow)
    assert int(await client.get(streams.fence("svc", 3))) == 2


async def test_a_fenced_command_can_take_the_previous_reply_as_an_argument(client) -> None:
    """``PREVIOUS``: a second stream gets the entry id the first ``XADD *`` was given (the candles' two streams)."""
    a = Ownership(client, "svc", "a", PARTITIONS, ttl_ms=3000)
    await a.balance(now_ms=1_000)
    first, second = f"sentinel:{tag(5)}:one", f"sentinel:{tag(5)}:two"
    replies = await a.fenced(5, [("XADD", first, "*", "d", "x"), ("XADD", second, "MAXLEN", "~", 10, PREVIOUS, "d", "x"),
                                 ("XADD", first, "*", "d", "y"), ("XADD", second, PREVIOUS, "d", "y"),
                                 ("SET", f"sentinel:{tag(5)}:plain", "z")])
    ids_one = [entry_id for entry_id, _ in await client.xrange(first)]
    assert [entry_id for entry_id, _ in await client.xrange(second)] == ids_one == replies[0:4:2] == replies[1:4:2]
    assert replies[4] == b"OK"


async def test_a_joining_replica_gets_its_share_handed_over(client) -> None:
    a = Ownership(client, "svc", "a", PARTITIONS, ttl_ms=3000)
    b = Ownership(client, "svc", "b", PARTITIONS, ttl_ms=3000)
    await a.balance(now_ms=10_000)
    assert len(a.owned) == PARTITIONS
    await b.balance(now_ms=10_001)  # b announces itself; nothing is free yet
    gained, lost = await a.balance(now_ms=10_002)  # a sees two members: hands back half
    assert gained == [] and len(lost) == PARTITIONS // 2
    gained, _ = await b.balance(now_ms=10_003)
    assert len(gained) == PARTITIONS // 2
    assert a.owned.isdisjoint(b.owned)
    await a.leave()  # a clean exit hands everything back at once
    gained, _ = await b.balance(now_ms=10_004)
    assert b.owned == set(range(PARTITIONS))


def test_partition_of_is_stable_and_spread() -> None:
    pairs = [("binance", f"S{i}/USDT") for i in range(1600)]
    counts = [0] * PARTITIONS
    for exchange, symbol in pairs:
        counts[partition_of(exchange, symbol, PARTITIONS)] += 1
    assert min(counts) > 60 and max(counts) < 140  # ~100 each
    assert partition_of("binance", "BTC/USDT", PARTITIONS) == partition_of("binance", "BTC/USDT", PARTITIONS)


async def test_a_busy_owner_keeps_its_leases_a_taken_over_one_is_fenced(client) -> None:
    """A write extends the lease (an owner that writes is alive); a lease that expired because its owner was too busy
    to renew it is taken back, by a write or a renewal, while no other replica took it; once one did, the old owner
    can neither write nor renew."""
    a = Ownership(client, "svc", "a", PARTITIONS, ttl_ms=300)
    await a.balance(now_ms=1_000)
    key = f"sentinel:{tag(3)}:probe"
    lease = streams.lease("svc", 3)
    for _ in range(4):  # writes only, no balance round, for longer than the TTL: the lease never expires
        await asyncio.sleep(0.15)
        await a.fenced(3, [("INCR", key)])
        assert 250 < await client.pttl(lease) <= 300
    assert await client.get(key) == b"4"

    await asyncio.sleep(0.4)  # too busy to renew or write: every lease expired, nobody took them
    assert await client.get(lease) is None
    assert await a.fenced(3, [("INCR", key)]) == [5]  # taken back by the write, same token
    gained, lost = await a.balance(now_ms=2_000)  # and the others by the renewal
    assert (gained, lost) == ([], []) and a.owned == set(range(PARTITIONS))
    assert await client.get(lease) == b"a|1" and int(await client.get(streams.fence("svc", 3))) == 1

    await asyncio.sleep(0.4)  # paused past the TTL; b takes everything over meanwhile
    b = Ownership(client, "svc", "b", PARTITIONS, ttl_ms=300)
    await b.balance(now_ms=3_000)
    assert b.owned == set(range(PARTITIONS))
    with pytest.raises(FencedError):
        await a.fenced(3, [("INCR", key)])
    assert await client.get(key) == b"5"
    _, lost = await a.balance(now_ms=3_001)
    assert sorted(lost) == [p for p in range(PARTITIONS) if p != 3] and a.owned == set()
    assert await client.get(lease) == b"b|2"

    await asyncio.sleep(0.4)  # b's leases expired untaken: a's old token stays refused (b's is the last one given)
    a.leases[3] = Lease(3, 1, "a|1")  # (as if a had not seen its loss yet)
    with pytest.raises(FencedError):
        await a.fenced(3, [("INCR", key)])
    assert await b.fenced(3, [("INCR", key)]) == [6]


async def test_a_fenced_write_whose_reply_was_lost_runs_once_when_the_client_sends_it_again(redis_server) -> None:
    """The connection fails after Redis ran the write and before its reply came: the client sends the call again on
    a new connection (as it does for a reused connection that failed), and the write must not run twice (a builder's
    candles XADDed twice)."""
    async with ReplyCutter(redis_server.port) as cutter:
        via_cutter, direct = connect(cutter.url), connect(redis_server.url)
        a = Ownership(via_cutter, "svc", "a", PARTITIONS, ttl_ms=3000)
        try:
            await direct.flushall()
            await a.balance(now_ms=1_000)
            key = f"sentinel:{tag(3)}:probe"
            assert await a.fenced(3, [("INCR", key)]) == [1]  # (the next call reuses this connection)
            await cutter.cut_next_reply(b"EVALSHA")
            assert await a.fenced(3, [("INCR", key)]) is None  # sent again; recognised as done
            assert cutter.cut == 1
            assert await direct.get(key) == b"2"
            assert await a.fenced(3, [("INCR", key)]) == [3]  # the next write is a new one
        finally:
            await a.leave()
            await via_cutter.aclose()
            await direct.aclose()
