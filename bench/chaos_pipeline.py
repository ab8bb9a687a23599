"""Whole-pipeline chaos bench (issue 19): market_feed (replay, and live against `sentinel exchange-sim`),
candle_builder, alert_engine and notifier as separate processes on real recordings; random SIGKILLs of every service
and of redis-server (restarted from its AOF), a Redis outage, malformed entries in every stream kind, dropped exchange
connections. Then every closed candle against pandas, the delivered alerts against a clean `sentinel backtest`, every
trade id counted. Writes bench/results/chaos_pipeline.json and prints a summary.

    python bench/chaos_pipeline.py                       # ~50 kills over ~3 min of replay, a 30 s outage
    python bench/chaos_pipeline.py --wall 60 --kills 12 --outage 5 --replicas 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.chaos.run import ChaosPlan, run_chaos  # noqa: E402
from tests.support.chaos.summary import summary_lines  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wall", type=float, default=180.0, help="seconds each recording's replay takes")
    p.add_argument("--kills", type=int, default=50, help="service SIGKILLs, dealt over the four services")
    p.add_argument("--redis-kills", type=int, default=3)
    p.add_argument("--outage", type=float, default=30.0, help="seconds of one Redis outage (0: none)")
    p.add_argument("--injections", type=int, default=3, help="rounds of malformed entries")
    p.add_argument("--drops", type=int, default=5, help="exchange-sim connection drops")
    p.add_argument("--oversized", type=int, default=2_000_000, help="bytes of the oversized entries")
    p.add_argument("--inject-kinds", default="garbage,version,float,oversized",
                   help="malformed entry kinds, comma-separated (float prices are taken today: issue 19 defect 4)")
    p.add_argument("--restart-grace", type=float, default=0.0,
                   help="a Redis fault waits until restarted processes have run this long (0: none)")
    p.add_argument("--appendfsync", default="everysec", choices=["everysec", "always"],
                   help="redis-server's AOF fsync policy")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--live", default="xrpeth", help="recording served by exchange-sim ('' for none)")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--keep", type=Path, default=None, help="keep logs, AOF and outputs here")
    args = p.parse_args()
    plan = ChaosPlan(wall_s=args.wall, service_kills=args.kills, redis_kills=args.redis_kills, outage_s=args.outage,
                     injections=args.injections, drops=args.drops, oversized_bytes=args.oversized,
                     replicas=args.replicas, live=args.live or None, seed=args.seed,
                     inject_kinds=tuple(k for k in args.inject_kinds.split(",") if k),
                     restart_grace_s=args.restart_grace, appendfsync=args.appendfsync)
    if args.keep:
        report = asyncio.run(run_chaos(plan, args.keep, args.data))
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            report = asyncio.run(run_chaos(plan, Path(tmp), args.data))
    out = REPO / "bench" / "results" / "chaos_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(summary_lines(report)))
    print(f"full report: {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
