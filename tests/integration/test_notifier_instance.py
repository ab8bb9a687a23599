"""`sentinel notify deliveries` / `dead-letters` find the running instance's Redis (the embedded one of a `sentinel up`
in the data directory) or refuse clearly: never a second redis-server on a live data directory, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis as redis_sync

from shared import streams
from shared.embedded_redis import EmbeddedRedis

SENTINEL = Path(sys.executable).parent / "sentinel"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SENTINEL_CONFIG", "SENTINEL_DATA_DIR")}
    return subprocess.run([str(SENTINEL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_notify_commands_use_the_running_instance_and_refuse_without_one(tmp_path):
    data = tmp_path / ".sentinel"
    with EmbeddedRedis(data / "redis", persist=True) as server:  # what `sentinel up` starts without REDIS_URL
        client = redis_sync.Redis.from_url(server.url)
        client.xadd(streams.NOTIFY_DELIVERIES, {b"target": "hook", b"alert_ids": "live-only-id", b"count": 1,
                                                b"status": "delivered", b"attempts": 1, b"reason": "", b"ts": 5})
        before = client.info("stats")["total_connections_received"]
        listed = run(["notify", "deliveries"], tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "hook" in listed.stdout and "delivered" in listed.stdout
        assert client.info("stats")["total_connections_received"] > before  # it read this server
        dead = run(["notify", "dead-letters", "list"], tmp_path)
        assert dead.returncode == 0 and "0 dead letter(s)" in dead.stdout
        assert (data / "redis" / "redis.url").read_text().strip() == server.url  # nobody replaced it
        client.close()

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    refused = run(["notify", "deliveries"], empty)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: no running sentinel found")
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert not (empty / ".sentinel").exists()  # nothing was started there
