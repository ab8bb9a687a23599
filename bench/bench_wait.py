"""What ``redis_wait_replicas: 1`` costs a commit (issue 21, point 4): ``Ownership.fenced`` with and without WAIT.

A real master, one replica and a Sentinel on loopback (tests/support/redis_sentinel.py), reached through the
``redis+sentinel://`` URL as the services reach it. Each commit is candle_builder's shape (``--candles`` closed
candles: XADD to part_candles, XADD PREVIOUS to the series stream, PUBLISH; then the offset HSET) in one fenced
script; ``wait 0`` returns when the master answered, ``wait 1`` also pipelines the mark SET + ``WAIT 1`` and returns
when the replica acknowledged. Runs alternate ``--repeat`` times (the machine is shared). Reported: the client's wall
time per commit, median with min-max over the runs. Writes bench/results/bench_wait.json.
Usage: ``python bench/bench_wait.py [--candles 1 10 100] [--commits 300] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import streams  # noqa: E402
from shared.durability import Replication  # noqa: E402
from shared.ownership import PREVIOUS, Ownership  # noqa: E402
from shared.redisconn import connect  # noqa: E402
from tests.support.redis_sentinel import RedisWithSentinel  # noqa: E402
from bench.common import write_result  # noqa: E402

CANDLE = b"\x00" * 120  # an encoded candle is ~100-130 bytes


def commands(k: int, start: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for i in range(start, start + k):
        series = streams.series_candles(0, "binance", f"S{i % 50}/USDT", "1m")
        out.append(("XADD", streams.part_candles(0), "MAXLEN", "~", 100_000, "*", streams.FIELD, CANDLE))
        out.append(("XADD", series, "MAXLEN", "~", 6000, PREVIOUS, streams.FIELD, CANDLE))
        out.append(("PUBLISH", streams.channel_candles("binance", f"S{i % 50}/USDT", "1m"), CANDLE))
    out.append(("HSET", streams.part_state(0, "bench"), "offset", f"{start}-0"))
    return out


async def one_run(own: Ownership, k: int, commits: int) -> float:
    batches = [commands(k, n * k) for n in range(commits)]
    t = time.perf_counter()
    for batch in batches:
        await own.fenced(0, batch)
    return 1e6 * (time.perf_counter() - t) / commits


async def main_async(args: argparse.Namespace) -> dict:
    results: dict = {"bench": "bench_wait", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "load_avg_before": os.getloadavg()},
                     "commits_per_run": args.commits, "runs": args.repeat, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = RedisWithSentinel(Path(tmp))
        servers.start()
        try:
            redis = connect(servers.url)
            results["machine"]["redis"] = (await redis.info("server"))["redis_version"]
            owners = {n: Ownership(redis, "bench", "b", 1, ttl_ms=600_000, replication=Replication(n, 1000))
                      for n in (0, 1)}
            await owners[0].balance(now_ms=int(time.time() * 1000))
            owners[1].leases = owners[0].leases  # the same lease, two WAIT policies
            for k in args.candles:
                runs: dict[int, list[float]] = {0: [], 1: []}
                for _ in range(args.repeat):
                    for n in (0, 1):
                        runs[n].append(await one_run(owners[n], k, args.commits))
                for n in (0, 1):
                    us = runs[n]
                    row = {"candles_per_commit": k, "wait_replicas": n,
                           "wall_us_per_commit": {"median": round(statistics.median(us), 1),
                                                  "min": round(min(us), 1), "max": round(max(us), 1)}}
                    results["rows"].append(row)
                    print(f"{k:>4} candles/commit, redis_wait_replicas {n}: {row['wall_us_per_commit']} us/commit",
                          flush=True)
            await redis.aclose()
        finally:
            servers.stop()
    results["machine"]["load_avg_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candles", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(f"wrote {write_result('bench_wait.json', results)}")


if __name__ == "__main__":
    main()
