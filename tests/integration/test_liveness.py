"""Liveness on a real redis-server: one heartbeat per replica, /health naming a dead replica and where its
partitions went, and dead consumers leaving their groups (no live heartbeat) while live or busy ones stay."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from services.api.app import create_app
from services.api.settings import Settings as ApiSettings
from shared import streams
from shared.bus import Bus, Consumer, ConsumerSettings
from shared.ownership import Ownership
from shared.runtime import heartbeat

GROUP = "alert_engine"


async def _health(redis, **limits) -> tuple[int, dict]:
    api = create_app(ApiSettings(services=[GROUP], **limits), redis)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
        r = await client.get("/health")
    return r.status_code, r.json()


async def test_health_lists_replicas_and_names_a_dead_one_with_its_partitions_new_owner(redis):
    e1 = Ownership(redis, GROUP, "e1", 4, ttl_ms=600)
    e2 = Ownership(redis, GROUP, "e2", 4, ttl_ms=600)
    now = int(time.time() * 1000)
    await e1.balance(now)  # alone: takes all four
    assert e1.owned == {0, 1, 2, 3}

    def status(o: Ownership):
        return lambda: {"group": GROUP, "partitions": ",".join(map(str, sorted(o.owned))), "processed": 7}

    stop1, stop2 = asyncio.Event(), asyncio.Event()
    beat1 = asyncio.create_task(heartbeat(redis, GROUP, stop1, status(e1), every=0.1, instance="e1"))
    beat2 = asyncio.create_task(heartbeat(redis, GROUP, stop2, status(e2), every=0.1, instance="e2"))
    try:
        await asyncio.sleep(0.3)
        code, body = await _health(redis, heartbeat_max_age_s=1.0)
        service = body["services"][GROUP]
        assert code == 200 and service["status"] == "ok" and service["live"] == 2, body
        assert set(service["replicas"]) == {"e1", "e2"}
        assert service["replicas"]["e1"]["partitions"] == "0,1,2,3"

        beat1.cancel()  # e1 dies: its heartbeat stops, its leases are not renewed
        with contextlib.suppress(asyncio.CancelledError):
            await beat1
        await asyncio.sleep(0.7)  # its leases expire
        await e2.balance(int(time.time() * 1000))
        assert e2.owned == {0, 1, 2, 3}
        await asyncio.sleep(0.5)
        await e2.balance(int(time.time() * 1000))  # (renewed, as its partition workers would)
        code, body = await _health(redis, heartbeat_max_age_s=1.0)
        service = body["services"][GROUP]
        assert code == 503 and service["status"] == "ok" and service["live"] == 1
        assert service["replicas"]["e1"]["status"] == "dead" and service["replicas"]["e2"]["status"] == "ok"
        assert service["replicas"]["e1"]["moved"] == {"e2": [0, 1, 2, 3]}
        [problem] = body["problems"]
        assert problem.startswith(f"{GROUP}: replica e1 is dead (last heartbeat ")
        assert problem.endswith("its partitions: 0, 1, 2, 3 now owned by e2")
    finally:
        stop2.set()
        await beat2
    # a clean stop removes the replica: only the dead one is left, and with no live replica the service is down
    assert await redis.zrange(streams.replicas(GROUP), 0, -1) == [b"e1"]
    code, body = await _health(redis, heartbeat_max_age_s=1.0)
    assert code == 503 and body["services"][GROUP]["status"] == "down"
    assert f"{GROUP}: no live replica" in body["problems"]


async def test_dead_consumers_without_a_live_heartbeat_leave_the_group(redis):
    stream = streams.part_alerts(0)
    bus = Bus(redis)
    await bus.ensure_group(stream, "g")
    for i in range(3):
        await bus.publish(stream, str(i).encode())
    # three earlier consumers: "dead" (no heartbeat, nothing pending), "alive" (a fresh heartbeat), "busy" (no
    # heartbeat, one entry pending: its entry is claimed first, then it goes)
    await redis.xreadgroup("g", "busy", {stream: ">"}, count=1)
    await redis.xgroup_createconsumer(stream, "g", "dead")
    await redis.xgroup_createconsumer(stream, "g", "alive")
    await redis.hset(streams.replica_heartbeat("svc", "dead"), "ts", int(time.time() * 1000) - 60_000)
    await asyncio.sleep(0.4)
    await redis.hset(streams.replica_heartbeat("svc", "alive"), "ts", int(time.time() * 1000))
    handled: list[bytes] = []

    async def handler(batch) -> None:
        handled.extend(e.value for e in batch.entries)

    me = Consumer(bus, ConsumerSettings(group="g", consumer="me", service="svc", claim_idle_ms=300,
                                        claim_every_s=0.1, silent_consumer_idle_ms=300),
                  decode=lambda raw: raw, handler=handler, streams=[stream])
    names = {c["name"] for c in await redis.xinfo_consumers(stream, "g")}
    assert names == {b"busy", b"dead", b"alive"}
    await me.drain()  # claims busy's entry, prunes "dead" and "busy" (nothing pending now), reads the rest
    names = {c["name"] for c in await redis.xinfo_consumers(stream, "g")}
    assert sorted(handled) == [b"0", b"1", b"2"]
    assert names == {b"alive", b"me"}
    assert me.pruned == 2 and me.claimed == 1
