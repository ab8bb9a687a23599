"""Two notifier processes share group ``notifier`` over every partition's alerts stream, on one Redis and on a
3-master Redis Cluster; one is SIGKILLed mid-run. Every alert reaches a webhook receiver that honours
Idempotency-Key exactly once, ``/health`` names the killed replica, and its consumer leaves the group."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from redis.asyncio.cluster import RedisCluster

from services.api.app import create_app
from services.api.settings import Settings as ApiSettings
from shared import streams
from shared.runtime import connect
from tests.integration.notifier.helpers import caught_up, make_alert, publish
from tests.integration.notifier.receivers import webhook_receiver

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 8


@pytest.fixture(params=["single", "cluster"])
async def target(request: pytest.FixtureRequest):
    """(client, redis_url, cluster?) on an emptied single Redis or the session's 3-node Cluster."""
    if request.param == "single":
        url, cluster = request.getfixturevalue("redis_url"), False
        client = connect(url)
    else:
        url, cluster = request.getfixturevalue("redis_cluster").url, True
        client = RedisCluster.from_url(url)
    await client.flushall()
    yield client, url, cluster
    await client.aclose()


async def _spawn(tmp_path: Path, name: str, url: str, cluster: bool, hook_url: str) -> asyncio.subprocess.Process:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"redis_url": url, "redis_cluster": cluster, "partitions": PARTITIONS,
                                      "log_level": "WARNING", "notifier": {
                                          "consumer_name": name, "console": False, "jsonl_path": None,
                                          "channels": {"hook": hook_url}, "default_channels": ["hook"],
                                          "always_channels": [], "max_group": 1, "rate_per_s": 10_000,
                                          "burst": 10_000, "block_ms": 50, "claim_idle_ms": 1000,
                                          "silent_consumer_idle_ms": 1500}}))
    env = {**os.environ, "SENTINEL_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "services.notifier", cwd=str(REPO), env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=open(tmp_path / f"{name}.log", "ab"))


async def _consumers(client, stream: str) -> set[str]:
    try:
        return {c["name"].decode() for c in await client.xinfo_consumers(stream, streams.GROUP_NOTIFIER)}
    except Exception:
        return set()


async def test_two_replicas_one_killed_deliver_every_alert_once(target, tmp_path):
    client, url, cluster = target
    alerts = [make_alert(i, symbol=f"S{i % 23}/USDT") for i in range(120)]
    async with webhook_receiver(delay=0.02) as hook:
        a = await _spawn(tmp_path, "notifier-a", url, cluster, hook.url)
        b = await _spawn(tmp_path, "notifier-b", url, cluster, hook.url)
        try:
            for i in range(0, 60, 10):
                await publish(client, alerts[i:i + 10], PARTITIONS)
                await asyncio.sleep(0.2)
            async with asyncio.timeout(30):  # both replicas are reading (each has taken entries of the group)
                while not all([{"notifier-a", "notifier-b"} <= await _consumers(client, streams.part_alerts(p))
                               for p in range(PARTITIONS)]):
                    await asyncio.sleep(0.1)
            a.send_signal(signal.SIGKILL)  # mid-run: sends in flight, entries pending with it
            await a.wait()
            killed_at = time.monotonic()
            for i in range(60, 120, 10):
                await publish(client, alerts[i:i + 10], PARTITIONS)
                await asyncio.sleep(0.05)
            async with asyncio.timeout(40):
                while not await caught_up(client, PARTITIONS):
                    assert b.returncode is None, (tmp_path / "notifier-b.log").read_text()
                    await asyncio.sleep(0.1)
            moved_after = time.monotonic() - killed_at
            print(f"{'cluster' if cluster else 'single'}: every alert delivered {moved_after:.1f} s after the kill")

            # /health names the dead replica (once its last beat is older than the limit), the live one is ok. The
            # limit is twice the beat interval (2 s): at the interval itself a beat a little late read as down.
            api = create_app(ApiSettings(redis_url=url, services=["notifier"], heartbeat_max_age_s=4.0), client)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as http:
                async with asyncio.timeout(15):
                    while True:
                        body = (await http.get("/health")).json()
                        notifier = body["services"]["notifier"]
                        if notifier["replicas"]["notifier-a"]["status"] == "dead":
                            break
                        await asyncio.sleep(0.2)
            assert notifier["status"] == "ok" and notifier["live"] == 1
            assert notifier["replicas"]["notifier-a"]["status"] == "dead"
            assert notifier["replicas"]["notifier-b"]["status"] == "ok"
            assert any(p.startswith("notifier: replica notifier-a is dead") for p in body["problems"])

            # the killed consumer leaves every partition's group once nothing is pending with it
            async with asyncio.timeout(20):
                while any(["notifier-a" in await _consumers(client, streams.part_alerts(p))
                           for p in range(PARTITIONS)]):
                    await asyncio.sleep(0.2)
        finally:
            for proc in (a, b):
                if proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
        delivered = Counter(x["id"] for body in hook.delivered() for x in body["alerts"])
    assert delivered == Counter(x.id for x in alerts)  # every alert, exactly once (Idempotency-Key honoured)
    assert moved_after < 20
    # after a clean stop the live replica is no longer listed
    assert await client.zrange(streams.replicas("notifier"), 0, -1) in ([b"notifier-a"], [])
