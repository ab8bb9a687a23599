"""Issue 21's end-to-end evidence: two replicas of every service on the 3-master Redis Cluster, one of each SIGKILLed.

market_feed (two replicas per recording, replaying four real captures: Binance BTC/USDT 2024, the same capture as a
second symbol for the multi-symbol rule, Binance XRP/ETH, Kraken BTC/USD), candle_builder, alert_engine, notifier
(a webhook target on a real local HTTP server that honours Idempotency-Key, and a JSONL file) and the API: two
processes of each, ``redis_cluster: true`` with ``redis_url`` naming one node. While the recordings replay, one
replica of each service is SIGKILLed (a lease holder where the service holds leases) and restarted 7-8 s later, past
the 6 s lease TTL, so the other replica has to take its partitions over.
Then every closed candle of every series (its stream and both API replicas' ``GET /candles``) must equal pandas'
resample of the recording, and the alerts at the webhook receiver, in the JSONL file and in both APIs'
``GET /alerts/history`` must equal a clean one-process ``sentinel backtest`` of the same files and rules (ids and
values), none twice. The rules (tests/support/scale_out/sources.py) hold indicator rules, cooldowns, resolves and a
multi-symbol rule reading a series of another partition.

The harness is tests/support/scale_out/; bench/chaos_cluster.py runs it longer with 50+ kills and a Redis failover.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import SHARED_DATA, shared_data
from tests.support.scale_out.compare import EXACT
from tests.support.scale_out.run import KINDS, ScalePlan, run_scale_out
from tests.support.scale_out.sources import RECORDINGS
from tests.support.scale_out.summary import summary_lines


@pytest.fixture(scope="module")
def scale_out(redis_cluster, tmp_path_factory) -> dict:
    """One run shared by the tests of this module (~1.5-2 minutes here)."""
    for _, _, relative in RECORDINGS.values():
        shared_data(relative)
    # each victim stays dead 7-8 s, past lease_ttl_ms (6 s): the other replica must take its partitions over
    plan = ScalePlan(wall_s=40, replicas=2, kills=len(KINDS), down_s=(7.0, 8.0), seed=21)
    report = asyncio.run(run_scale_out(plan, tmp_path_factory.mktemp("scale_out"), SHARED_DATA, redis_cluster.url,
                                       cluster=True))
    print("\n".join(summary_lines(report)))  # the whole report: report.json in the run's directory
    return report


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_each_service_lost_a_replica_and_the_run_finished(scale_out):
    assert scale_out["sources_ended"] and scale_out["settled"], (scale_out["seconds"], scale_out["not_settled"])
    assert all(scale_out["kills"][k] == 1 for k in KINDS), scale_out["kills"]
    assert scale_out["crashes"] == {}, scale_out["crashes"]
    for e in scale_out["events"]:  # whatever a victim held was taken over by the other replica while it was dead
        if e.get("held"):
            assert e.get("takeover_s") is not None and e["taken_by_other"] == len(e["held"]), e
    assert {e["kind"] for e in scale_out["events"] if e.get("held")} == {"market_feed", "candle_builder",
                                                                         "alert_engine"}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_candles_equal_pandas_and_alerts_equal_a_clean_backtest(scale_out):
    totals = scale_out["totals"]
    assert totals["trades_expected"] == 2 * 19_904 + 5_929 + 2_672
    assert totals["candles_compared"] == totals["candles_expected"] > 3_000
    series = {k: v for k, v in scale_out["candles"].items() if not k.endswith("(part_candles)")}
    assert len(series) < len(scale_out["candles"])  # the partitions' candles streams were compared as well
    assert totals["api_candles_compared"] == 2 * sum(v["expected"] for v in series.values())
    assert totals["alerts_expected"] > 900 and scale_out["alerts"]["by_rule_expected"].get("s1_pair_confirm", 0) > 5
    wrong = {k: totals[k] for k in EXACT if totals[k]}
    assert wrong == {}, (wrong, {k: v for k, v in scale_out["alerts"].items() if isinstance(v, dict)
                                 and (v.get("missing") or v.get("extra") or v.get("differing"))})
