"""What candle_builder's fenced commit costs Redis per closed candle, written once or twice (issue 21).

Since the candles hop each closed candle is written twice in the partition's fenced script: XADD to
``part_candles(p)`` and the same entry (``PREVIOUS`` id) to ``series_candles(p, ex, sym, tf)``, beside its PUBLISH.
This times ``Ownership.fenced`` with K candles (real encoded BTC/USDT candles, spread over 50 series of one
partition) and the offset HSET, in three shapes, alternated ``--repeat`` times on a private redis-server:

- ``one_stream``: one XADD per candle to its series' stream (the layout before the hop, for reference);
- ``two_streams``: XADD ``*`` to part_candles and XADD ``PREVIOUS`` to the series stream (what the builder does);
- ``two_streams_star``: the same two XADDs, both ``*`` (what ``PREVIOUS`` itself costs).

Reported: Redis's own time per script (INFO commandstats ``evalsha`` usec_per_call) and the client's wall time per
commit, medians with min-max, and per candle. Writes bench/results/bench_candle_commit.json.
Usage: ``python bench/bench_candle_commit.py [--candles 10 100 1000] [--commits 200] [--repeat 5]``.
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

from bench.bench_candle_memory import RECORDING, recorded_candles  # noqa: E402
from shared import streams  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.ownership import PREVIOUS, Ownership  # noqa: E402
from shared.runtime import connect  # noqa: E402
from bench.common import write_result  # noqa: E402

SHAPES = ("one_stream", "two_streams", "two_streams_star")


def commands(shape: str, payloads: list[bytes], k: int, start: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    part = streams.part_candles(0)
    for i in range(start, start + k):
        data = payloads[i % len(payloads)]
        series = streams.series_candles(0, "binance", f"S{i % 50}/USDT", "1m")
        if shape == "one_stream":
            out.append(("XADD", series, "MAXLEN", "~", 6000, "*", streams.FIELD, data))
        else:
            out.append(("XADD", part, "MAXLEN", "~", 100_000, "*", streams.FIELD, data))
            out.append(("XADD", series, "MAXLEN", "~", 6000, PREVIOUS if shape == "two_streams" else "*",
                        streams.FIELD, data))
        out.append(("PUBLISH", streams.channel_candles("binance", f"S{i % 50}/USDT", "1m"), data))
    out.append(("HSET", streams.part_state(0, "bench"), "offset", f"{start}-0"))
    return out


async def one_run(redis: Any, own: Ownership, shape: str, payloads: list[bytes], k: int, commits: int) -> dict:
    await redis.delete(streams.part_candles(0), *(streams.series_candles(0, "binance", f"S{i}/USDT", "1m")
                                                  for i in range(50)))
    batches = [commands(shape, payloads, k, n * k) for n in range(commits)]
    await redis.config_resetstat()
    t = time.perf_counter()
    for batch in batches:
        await own.fenced(0, batch)
    wall = time.perf_counter() - t
    stats = await redis.info("commandstats")
    usec = float(stats["cmdstat_evalsha"]["usec_per_call"])
    return {"redis_us_per_commit": usec, "wall_us_per_commit": 1e6 * wall / commits}


async def main_async(args: argparse.Namespace) -> dict:
    payloads = recorded_candles(RECORDING, 60_000, "1m") + recorded_candles(RECORDING, 1000, "1s")
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "load_avg_before": os.getloadavg()}, "commits_per_run": args.commits, "rows": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        redis = connect(server.url)
        results["machine"]["redis"] = (await redis.info("server"))["redis_version"]
        own = Ownership(redis, "bench", "b", 1, ttl_ms=600_000)
        await own.balance(now_ms=int(time.time() * 1000))
        for k in args.candles:
            runs: dict[str, list[dict]] = {s: [] for s in SHAPES}
            for _ in range(args.repeat):  # alternated: the machine is shared
                for shape in SHAPES:
                    runs[shape].append(await one_run(redis, own, shape, payloads, k, args.commits))
            for shape in SHAPES:
                redis_us = [r["redis_us_per_commit"] for r in runs[shape]]
                wall_us = [r["wall_us_per_commit"] for r in runs[shape]]
                row = {"candles_per_commit": k, "shape": shape,
                       "redis_us_per_commit": {"median": round(statistics.median(redis_us), 1),
                                               "min": round(min(redis_us), 1), "max": round(max(redis_us), 1)},
                       "wall_us_per_commit": {"median": round(statistics.median(wall_us), 1),
                                              "min": round(min(wall_us), 1), "max": round(max(wall_us), 1)},
                       "redis_us_per_candle_median": round(statistics.median(redis_us) / k, 2),
                       "wall_us_per_candle_median": round(statistics.median(wall_us) / k, 2)}
                results["rows"].append(row)
                print(f"{k:>5} candles/commit {shape:>17}: Redis {row['redis_us_per_candle_median']:6.2f} us/candle "
                      f"(commit {row['redis_us_per_commit']}), wall {row['wall_us_per_candle_median']:6.2f} "
                      f"us/candle", flush=True)
        await redis.aclose()
    results["machine"]["load_avg_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candles", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(f"wrote {write_result('bench_candle_commit.json', results)}")


if __name__ == "__main__":
    main()
