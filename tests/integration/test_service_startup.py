"""A service started while Redis is down waits for it (issue 19's chaos run: every service exited 1)."""

from __future__ import annotations

import subprocess
import sys
import time

from shared.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import REPO


def test_a_service_started_before_redis_waits_for_it_and_then_runs(tmp_path) -> None:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"redis://127.0.0.1:{port}/0", "SENTINEL_LOG_LEVEL": "INFO",
           "HOME": str(tmp_path)}
    service = subprocess.Popen([sys.executable, "-m", "sentinel.cli", "notifier"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # no Redis yet: the service must still be there, waiting
        assert service.poll() is None, service.communicate(timeout=5)
        with EmbeddedRedis(tmp_path / "redis", port=port, persist=False):
            deadline = time.monotonic() + 30
            import redis as redis_sync

            client = redis_sync.Redis(port=port)
            while not client.keys("sentinel:heartbeat:notifier*"):  # it connected and runs
                assert time.monotonic() < deadline, "the notifier never started after Redis came up"
                assert service.poll() is None
                time.sleep(0.2)
            service.terminate()
            out, err = service.communicate(timeout=30)
            err = out + err
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert service.returncode == 0, err
    assert "Traceback" not in err
    assert err.count("Redis is unreachable") == 1 and "Redis is back" in err, err
