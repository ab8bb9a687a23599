"""A notifier process killed with SIGKILL at random points during a burst, then restarted: every alert reaches the
webhook receiver and the JSONL file exactly once (a few iterations here; many in bench/chaos_notifier.py)."""

from __future__ import annotations

import signal

import pytest

from tests.integration.notifier.chaos import chaos_run


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
