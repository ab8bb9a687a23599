"""Kill a notifier process with SIGKILL at random points during a burst of alerts, restart it, and count what the
webhook receiver and the JSONL file got. Used by tests/integration/test_notifier_chaos.py and bench/chaos_notifier.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from tests.integration.notifier.helpers import make_alert
from tests.integration.notifier.receivers import webhook_receiver

REPO = Path(__file__).resolve().parents[3]


async def _spawn(config: Path, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "SENTINEL_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.notifier", cwd=str(REPO), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=open(log, "ab"))


async def chaos_run(redis_url: str, workdir: Path, *, alerts: int = 60, kills: int = 3, seed: int = 0,
                    kill_window: tuple[float, float] = (0.9, 2.0), receiver_delay: float = 0.01,
                    max_group: int = 1, group_window_s: float = 0.0, timeout: float = 60.0,
                    kill_signal: int = signal.SIGKILL) -> dict:
    """One chaos iteration on an emptied Redis. Returns counts: lost / duplicated alert ids per sink."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    redis = connect(redis_url)
    await redis.flushall()
    batch = [make_alert(i, id=f"chaos-{seed}-{i:05d}") for i in range(alerts)]
    jsonl = workdir / f"alerts-{seed}.jsonl"
    jsonl.unlink(missing_ok=True)
    log = workdir / f"notifier-{seed}.log"
    started = time.monotonic()
    try:
        async with webhook_receiver(delay=receiver_delay) as hook:
            config = workdir / f"sentinel-{seed}.yaml"
            config.write_text(yaml.safe_dump({"redis_url": redis_url, "notifier": {
                "jsonl_path": str(jsonl), "console": False, "channels": {"hook": hook.url},
                "default_channels": ["jsonl", "hook"], "consumer_name": "chaos", "block_ms": 50, "partitions": 1,
                "max_group": max_group, "group_window_s": group_window_s, "rate_per_s": 10_000, "burst": 10_000,
                "backoff_base_s": 0.05, "backoff_cap_s": 0.5, "claim_idle_ms": 1000, "log_level": "WARNING"}}))
            bus = Bus(redis)

            async def publish_burst() -> None:  # the burst keeps arriving while the notifier is being killed
                for i in range(0, alerts, 10):
                    await bus.publish_many((streams.part_alerts(0), a.encode()) for a in batch[i:i + 10])
                    await asyncio.sleep(0.1)

            publisher = asyncio.create_task(publish_burst())
            kill_points = []
            for _ in range(kills):
                proc = await _spawn(config, log)
                at = rng.uniform(*kill_window)
                kill_points.append(round(at, 3))
                try:
                    await asyncio.wait_for(proc.wait(), timeout=at)
                except TimeoutError:
                    proc.send_signal(kill_signal)
                    await proc.wait()
            await publisher
            proc = await _spawn(config, log)
            try:
                async with asyncio.timeout(timeout):
                    while not await bus.caught_up(streams.part_alerts(0), streams.GROUP_NOTIFIER):
                        if proc.returncode is not None:
                            raise RuntimeError(f"notifier exited {proc.returncode}; see {log}")
                        await asyncio.sleep(0.05)
            finally:
                proc.terminate()
                await proc.wait()
            posts = Counter(a["id"] for body in hook.delivered() for a in body["alerts"])
            raw_posts = Counter(a["id"] for body in hook.raw_delivered() for a in body["alerts"])
            http_requests = len(hook.requests)
        lines = Counter()
        import json
        for line in jsonl.read_text().splitlines():
            lines[json.loads(line)["id"]] += 1
        ids = [a.id for a in batch]
        return {
            "seed": seed, "alerts": alerts, "kills": kills, "kill_points_s": kill_points,
            "webhook_lost": [i for i in ids if posts[i] == 0], "webhook_dup": {i: posts[i] for i in ids if posts[i] > 1},
            "webhook_raw_dup": {i: raw_posts[i] for i in ids if raw_posts[i] > 1},
            "jsonl_lost": [i for i in ids if lines[i] == 0], "jsonl_dup": {i: lines[i] for i in ids if lines[i] > 1},
            "unexpected": sorted(set(posts) - set(ids)), "http_requests": http_requests,
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        await redis.aclose()
