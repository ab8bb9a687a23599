"""The idle cost of candle_builder's reads with many configured quiet pairs (issue 21), on a private redis-server.

A builder with default settings (one replica: it holds all 16 partitions) runs while ``FEED_REGISTRY`` names N pairs
that publish nothing. Each partition worker blocks on XREAD of its one trades stream, so an idle read names one
stream whatever N is. Measured over ``--seconds`` per N (10 and 10,000): Redis's own time per XREAD (INFO
commandstats ``usec_per_call``), redis-server's CPU (from /proc) per second and per XREAD, and the calls of each
command (the registry and subscription reads of discovery, once a second, are the part that grows with N).

For scale, the layout this replaced: one XREADGROUP naming every pair's stream (group on each), timed the same way
(``usec_per_call``) over the same N.

Writes bench/results/bench_idle.json. Usage: ``python bench/bench_idle.py [--seconds S] [--pairs 10 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.candle_builder.app import CandleBuilderApp  # noqa: E402
from services.candle_builder.settings import Settings  # noqa: E402
from shared import streams  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.runtime import connect  # noqa: E402
from bench.common import write_result  # noqa: E402



def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (redis-server), from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def commandstats(redis) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec, usec_per_call}}."""
    info = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): {f: float(v[f]) for f in ("calls", "usec", "usec_per_call")}
            for k, v in info.items()}


async def register(redis, n: int) -> None:
    members = [streams.registry_member("idle", f"S{k}/USDT") for k in range(n)]
    for i in range(0, n, 1000):
        await redis.sadd(streams.FEED_REGISTRY, *members[i:i + 1000])


async def builder_idle(url: str, pid: int, n: int, seconds: float) -> dict:
    redis = connect(url)
    await redis.flushall()
    await register(redis, n)
    app = CandleBuilderApp(Settings(redis_url=url), redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        while len(app.workers.owned) < app.settings.partitions:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await redis.config_resetstat()
        cpu0, t0 = proc_cpu_s(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        stats = await commandstats(redis)
        cpu, elapsed = proc_cpu_s(pid) - cpu0, time.perf_counter() - t0
    finally:
        stop.set()
        await task
        await redis.aclose()
    xread = stats.get("xread", {"calls": 0, "usec": 0, "usec_per_call": 0})
    return {"pairs": n, "partitions": app.settings.partitions, "seconds": round(elapsed, 2),
            "xread_calls_per_s": round(xread["calls"] / elapsed, 1),
            "xread_usec_per_call": xread["usec_per_call"],
            "redis_cpu_ms_per_s": round(1000 * cpu / elapsed, 2),
            "redis_cpu_us_per_xread": round(1e6 * cpu / xread["calls"], 1) if xread["calls"] else None,
            "calls_per_s": {cmd: round(v["calls"] / elapsed, 1) for cmd, v in sorted(stats.items())
                            if cmd not in ("config|resetstat", "info")},
            "usec_per_call": {cmd: v["usec_per_call"] for cmd, v in sorted(stats.items())
                              if cmd not in ("config|resetstat", "info")}}


async def old_layout(url: str, n: int, reads: int = 20) -> dict:
    """One XREADGROUP over ``n`` empty per-pair streams, each with the group (what a builder read before issue 21)."""
    redis = connect(url)
    await redis.flushall()
    names = [f"{streams.PREFIX}:bench_idle:{k}" for k in range(n)]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xgroup_create(name, "g", id="$", mkstream=True)
        await pipe.execute()
    await redis.config_resetstat()
    for _ in range(reads):
        await redis.xreadgroup("g", "c", dict.fromkeys(names, ">"), count=1000, block=1)
    stats = await commandstats(redis)
    await redis.flushall()
    await redis.aclose()
    return {"streams": n, "xreadgroup_usec_per_call": stats["xreadgroup"]["usec_per_call"]}


async def main_async(args: argparse.Namespace) -> dict:
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "load_avg_before": os.getloadavg()},
                     "builder": [], "old_layout": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        url, pid = server.url, server.process.pid
        for n in args.pairs:
            row = await builder_idle(url, pid, n, args.seconds)
            results["builder"].append(row)
            print(f"builder, {n:>6} quiet pairs: {row['xread_calls_per_s']} XREAD/s, {row['xread_usec_per_call']} us "
                  f"per XREAD in Redis, redis-server CPU {row['redis_cpu_ms_per_s']} ms/s "
                  f"({row['redis_cpu_us_per_xread']} us per XREAD, everything included)", flush=True)
        for n in args.pairs:
            row = await old_layout(url, n)
            results["old_layout"].append(row)
            print(f"old layout, one XREADGROUP over {n:>6} streams: {row['xreadgroup_usec_per_call']} us per call",
                  flush=True)
    results["machine"]["load_avg_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, nargs="+", default=[10, 10_000])
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(f"wrote {write_result('bench_idle.json', results)}")


if __name__ == "__main__":
    main()
