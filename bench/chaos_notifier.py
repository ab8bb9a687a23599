"""Chaos bench: kill the notifier with SIGKILL at random points of bursts, many times; count lost and duplicated
alerts at a local webhook receiver and in the JSONL file. Writes bench/results/chaos_notifier.json.

    python bench/chaos_notifier.py --iterations 20 --alerts 60 --kills 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from tests.integration.notifier.chaos import chaos_run  # noqa: E402


async def main(args: argparse.Namespace) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        for i in range(args.iterations):
            r = await chaos_run(server.url, Path(tmp) / "work", alerts=args.alerts, kills=args.kills,
                                seed=args.seed + i, receiver_delay=args.receiver_delay, max_group=args.max_group)
            runs.append(r)
            print(f"run {i}: lost={len(r['webhook_lost']) + len(r['jsonl_lost'])} "
                  f"dup={len(r['webhook_dup']) + len(r['jsonl_dup'])} raw_dup={len(r['webhook_raw_dup'])} "
                  f"({r['seconds']}s)", flush=True)
    kills = sum(r["kills"] for r in runs)
    raw = sum(sum(n - 1 for n in r["webhook_raw_dup"].values()) for r in runs)
    return {
        "bench": "chaos_notifier", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": vars(args), "iterations": len(runs), "alerts_total": sum(r["alerts"] for r in runs),
        "kills_total": kills,
        "lost_webhook": sum(len(r["webhook_lost"]) for r in runs), "lost_jsonl": sum(len(r["jsonl_lost"]) for r in runs),
        "dup_webhook_effective": sum(len(r["webhook_dup"]) for r in runs),
        "dup_jsonl": sum(len(r["jsonl_dup"]) for r in runs),
        "raw_webhook_repeats": raw, "raw_repeats_per_kill": round(raw / kills, 4) if kills else 0.0,
        "runs": runs,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--alerts", type=int, default=60)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--receiver-delay", type=float, default=0.01)
    parser.add_argument("--max-group", type=int, default=1)
    result = asyncio.run(main(parser.parse_args()))
    out = REPO / "bench" / "results" / "chaos_notifier.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    summary = {k: v for k, v in result.items() if k not in ("runs", "params")}
    print(json.dumps(summary, indent=2))
