"""A notifier process killed with SIGKILL at random points during a burst, then restarted: every alert reaches the
webhook receiver and the JSONL file exactly once (a few iterations here; many in bench/chaos_notifier.py)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest
import yaml

from shared import streams
from shared.bus import Bus
from shared.runtime import connect
from tests.integration.notifier.chaos import _spawn, chaos_run
from tests.integration.notifier.helpers import make_alert
from tests.integration.notifier.receivers import webhook_receiver


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [11, 12])
async def test_sigkill_during_burst_loses_nothing_and_duplicates_nothing(redis_url, tmp_path, seed):
    result = await chaos_run(redis_url, tmp_path, alerts=40, kills=3, seed=seed)
    assert result["webhook_lost"] == [] and result["jsonl_lost"] == [], result
    assert result["unexpected"] == [], result
    # Exactly once as processed by a receiver honouring Idempotency-Key, and in the JSONL file.
    assert result["webhook_dup"] == {} and result["jsonl_dup"] == {}, result
    # Raw repeats on the wire: at most one in-flight group per kill (the documented window).
    assert sum(n - 1 for n in result["webhook_raw_dup"].values()) <= result["kills"], result


@pytest.mark.timeout(120)
async def test_sigterm_during_burst_finishes_in_flight_sends_without_any_repeat(redis_url, tmp_path):
    result = await chaos_run(redis_url, tmp_path, alerts=30, kills=2, seed=21, kill_signal=signal.SIGTERM)
    assert result["webhook_lost"] == [] and result["jsonl_lost"] == [], result
    assert result["webhook_raw_dup"] == {} and result["jsonl_dup"] == {}, result


@pytest.mark.timeout(120)
async def test_a_group_killed_in_flight_is_sent_again_as_it_was_though_more_alerts_came(redis_url, tmp_path):
    """A notifier killed while a webhook holds its group of 3 alerts and 2 more alerts wait behind it. The restarted
    notifier finds all 5 pending; it sends the same 3 under the same Idempotency-Key (the receiver takes them once),
    then the 2: a group re-formed with all 5 would carry another key and the receiver would take the first 3 twice."""
    redis = connect(redis_url)
    await redis.flushall()
    alerts = [make_alert(i, id=f"inflight-{i}") for i in range(5)]
    try:
        async with webhook_receiver(delay=2.0) as hook:
            config = tmp_path / "sentinel.yaml"
            config.write_text(yaml.safe_dump({"redis_url": redis_url, "partitions": 1, "log_level": "WARNING",
                                              "notifier": {
                "console": False, "jsonl_path": None, "channels": {"hook": hook.url}, "default_channels": ["hook"],
                "always_channels": [], "consumer_name": "n", "block_ms": 50, "max_group": 50,
                "group_window_s": 0.3, "rate_per_s": 10_000, "burst": 10_000, "claim_idle_ms": 1000}}))
            bus = Bus(redis)
            await bus.publish_many((streams.part_alerts(0), a.encode()) for a in alerts[:3])
            proc = await _spawn(config, tmp_path / "notifier.log")
            async with asyncio.timeout(30):
                while hook.arrived == 0:
                    await asyncio.sleep(0.02)
            await bus.publish_many((streams.part_alerts(0), a.encode()) for a in alerts[3:])
            async with asyncio.timeout(30):  # read by the notifier too, waiting behind the group in flight
                while (await redis.xpending(streams.part_alerts(0), streams.GROUP_NOTIFIER))["pending"] < 5:
                    await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)  # the receiver holds the group: sent, not recorded
            await proc.wait()
            async with asyncio.timeout(10):  # the receiver finishes the request of the dead notifier
                while not hook.requests:
                    await asyncio.sleep(0.02)
            hook.delay = 0.0
            proc = await _spawn(config, tmp_path / "notifier.log")
            try:
                async with asyncio.timeout(30):
                    while not await bus.caught_up(streams.part_alerts(0), streams.GROUP_NOTIFIER):
                        assert proc.returncode is None, (tmp_path / "notifier.log").read_text()
                        await asyncio.sleep(0.05)
            finally:
                proc.terminate()
                await proc.wait()
        groups = [[a["id"] for a in r["body"]["alerts"]] for r in hook.requests]
        ids = [a.id for a in alerts]
        assert groups[:2] == [ids[:3], ids[:3]], groups  # sent again as it was ...
        assert hook.requests[1]["headers"]["Idempotency-Key"] == hook.requests[0]["headers"]["Idempotency-Key"]
        taken = Counter(a["id"] for body in hook.delivered() for a in body["alerts"])
        assert taken == Counter(ids), groups  # ... so the receiver took every alert once
    finally:
        await redis.aclose()
