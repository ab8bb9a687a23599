"""The whole pipeline through chaos, short (issue 19; the long run is bench/chaos_pipeline.py).

market_feed (two replays and one live feed reading `sentinel exchange-sim` through ccxt.pro), candle_builder,
alert_engine and notifier run as separate processes on three real recordings. Each service is SIGKILLed twice at
random points, redis-server is SIGKILLed twice while the live feed runs (restarted from its AOF) and is down 3 s once,
the exchange drops its connections twice, and malformed entries go into every stream kind. Then every closed candle
must equal pandas, the alerts at a webhook receiver honouring Idempotency-Key and in the JSONL file must equal a clean
`sentinel backtest` (ids and values), and every trade id must be in the trades streams exactly once. Finally the run
is sabotaged (a delivered alert re-published with its notifier records deleted, a delivered line deleted, a trades
entry written twice) and the same comparison must report exactly that.

Two known faults are kept out of this short run (the bench shows them): redis-server runs with ``appendfsync always``
(with ``everysec``, Redis' default here, a SIGKILL of redis-server can lose writes it had acknowledged: the bench
lost 2 live trades that way), and a Redis fault waits until restarted services have connected (alert_engine and
candle_builder exit 1 when Redis is unreachable at start-up; the supervisor restarts them, the report counts crashes).
"""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA, shared_data
from tests.support.chaos.run import ChaosPlan, run_chaos
from tests.support.chaos.sources import RECORDINGS
from tests.support.chaos.summary import summary_lines

ZEROS = ("trades_missing", "trades_doubled", "trades_unexpected", "trades_differing", "gap_markers", "candles_missing",
         "candles_extra", "candles_doubled", "candles_differing", "alerts_missing", "alerts_extra", "alerts_duplicated",
         "alerts_differing")


def _recordings_present() -> None:
    for _, _, relative in RECORDINGS.values():
        shared_data(relative)


@pytest.mark.timeout(300)
async def test_pipeline_loses_doubles_and_changes_nothing_through_kills_redis_faults_and_bad_entries(tmp_path):
    _recordings_present()
    plan = ChaosPlan(wall_s=30, service_kills=8, redis_kills=2, outage_s=3, injections=1, drops=2,
                     inject_kinds=("garbage", "version", "oversized"), oversized_bytes=1_200_000,
                     restart_grace_s=6.0, appendfsync="always", sabotage=True, seed=19)
    report = await run_chaos(plan, tmp_path, SHARED_DATA)
    print("\n".join(summary_lines(report)))

    assert report["sources_ended"] and report["settled"], report["seconds"]
    assert all(report["kills"][k] >= 2 for k in ("market_feed", "candle_builder", "alert_engine", "notifier")), \
        report["kills"]
    redis_faults = [e for e in report["events"] if e["what"] in ("redis_kill", "outage")]
    assert len(redis_faults) == 3 and all(e["live_feed_running"] for e in redis_faults), redis_faults
    assert report["crashes"] == {}, report["crashes"]
    assert all(r["not_recovered"] == 0 for r in report["recoveries"].values()), report["recoveries"]

    totals = report["totals"]
    assert {k: totals[k] for k in ZEROS} == dict.fromkeys(ZEROS, 0), (totals, report["alerts"], report["candles"])
    assert totals["trades_expected"] == 19_904 + 5_929 + 2_672
    assert totals["candles_compared"] == totals["candles_expected"] > 2_000
    assert totals["alerts_expected"] > 300
    injected = report["injected"]
    assert injected["accepted"] == [] and report["alerts"]["injected_delivered"] == [], injected

    s = report["sabotage"]
    twice, lost = s["records_deleted_and_republished"], s["jsonl_line_deleted"]
    assert s["found_after_republish"]["jsonl"] == s["found_after_republish"]["webhook"] == \
        {"duplicated": 0, "missing": 0}  # with its records in place, a re-published alert is skipped
    assert s["found"]["jsonl"] == {"duplicated_ids": {twice: 2}, "missing_ids": [lost]}
    assert s["found"]["webhook"] == {"duplicated_ids": {twice: 2}, "missing_ids": []}
    assert s["found_trades_doubled"] == s["trades_in_entry"] > 0


@pytest.mark.xfail(reason="issue 19 defect 4 and beyond: a float price is taken as a trade, a float close as a "
                          "candle and a float value as an alert (delivered), instead of being dead-lettered",
                   strict=False)
@pytest.mark.timeout(180)
async def test_float_prices_are_dead_lettered_in_every_stream_kind(tmp_path):
    _recordings_present()
    plan = ChaosPlan(recordings=["kraken"], live=None, wall_s=12, service_kills=0, redis_kills=0, injections=2,
                     drops=0, inject_kinds=("float",), seed=4)
    report = await run_chaos(plan, tmp_path, SHARED_DATA)
    print("\n".join(summary_lines(report)))
    assert report["injected"]["accepted"] == [] and report["alerts"]["injected_delivered"] == [], report["injected"]
    assert report["ok"], report["totals"]
