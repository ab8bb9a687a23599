"""Scale-out chaos bench (issue 21, Evidence): two (``--replicas``) processes of every service — market_feed replaying
four real captures, candle_builder, alert_engine, notifier, API — on a 3-master Redis Cluster with one replica node
per master, ``--kills`` SIGKILLs at random times dealt over the five services, each victim restarted 1-12 s later
(``--down-min/max``: past the 6 s lease TTL the other replica takes its partitions over; before it, the restarted
victim often takes them back), and one Redis failover in the middle (``CLUSTER FAILOVER`` on the replica of the master
holding BTC/USDT's partition; ``--redis sentinel``: a Sentinel-managed master and ``SENTINEL FAILOVER``;
``--redis single``: no failover).

Reports the kills, how long each victim's leases (or pending alerts) took to be held (delivered) again, the
failover's times, the candles compared with pandas (streams and both APIs), and the alerts missing / extra /
duplicated / differing against a clean one-process ``sentinel backtest``. Writes bench/results/chaos_cluster.json.

    python bench/chaos_cluster.py                      # ~60 kills over 180 s of replay, one failover
    python bench/chaos_cluster.py --wall 60 --kills 10 --redis single
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

from redis.crc import key_slot  # noqa: E402

from shared import streams  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.partitions import partition_of  # noqa: E402
from tests.support.redis_cluster import RedisClusterServers  # noqa: E402
from tests.support.redis_sentinel import RedisWithSentinel  # noqa: E402
from tests.support.scale_out.run import ScalePlan, run_scale_out  # noqa: E402
from tests.support.scale_out.summary import summary_lines  # noqa: E402


def _master_of(servers: RedisClusterServers, key: str) -> int:
    """The port of the master serving ``key``'s slot now."""
    import redis

    slot = key_slot(key.encode())
    for port in servers.all_ports():
        if servers.role(port) != "master":
            continue
        for first, last, *_ in redis.Redis(port=port).execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(_[0][1])
    raise LookupError(f"no master serves slot {slot}")


async def run(args: argparse.Namespace, workdir: Path) -> dict:
    plan = ScalePlan(wall_s=args.wall, replicas=args.replicas, kills=args.kills, random_times=True,
                     down_s=(args.down_min, args.down_max),
                     failover_at=0.5 if args.redis != "single" else None, seed=args.seed)
    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    if args.redis == "cluster":
        servers = RedisClusterServers(workdir / "redis", replicas=1)
        await asyncio.to_thread(servers.start)
        target = streams.part_trades(partition_of("binance", "BTC/USDT", plan.partitions))

        async def failover() -> dict:
            port = await asyncio.to_thread(_master_of, servers, target)
            info = await asyncio.to_thread(servers.failover, port)
            return {"what": f"CLUSTER FAILOVER of the master serving {target}", **info}
        try:
            return await run_scale_out(plan, workdir, args.data, servers.url, True, failover)
        finally:
            await asyncio.to_thread(servers.stop)
    if args.redis == "sentinel":
        sentinel = RedisWithSentinel(workdir / "redis")
        await asyncio.to_thread(sentinel.start)

        async def sentinel_failover() -> dict:
            before = await asyncio.to_thread(sentinel.master_port)
            after = await asyncio.to_thread(sentinel.failover)
            return {"what": "SENTINEL FAILOVER", "old_master": before, "new_master": after}
        try:
            return await run_scale_out(plan, workdir, args.data, sentinel.url, False, sentinel_failover)
        finally:
            await asyncio.to_thread(sentinel.stop)
    single = EmbeddedRedis(workdir / "redis", persist=False)
    await asyncio.to_thread(single.start)
    try:
        return await run_scale_out(plan, workdir, args.data, single.url, False)
    finally:
        await asyncio.to_thread(single.stop)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wall", type=float, default=180.0, help="seconds each recording's replay takes")
    p.add_argument("--kills", type=int, default=60, help="service SIGKILLs, dealt over the five services")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--down-min", type=float, default=1.0, help="seconds a victim stays dead, at least")
    p.add_argument("--down-max", type=float, default=12.0, help="... at most (past lease_ttl_ms, 6 s: the other "
                   "replica takes its partitions over; before it, often the restarted victim takes them back)")
    p.add_argument("--redis", choices=["cluster", "sentinel", "single"], default="cluster")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--keep", type=Path, default=None, help="keep logs and outputs here")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos_cluster.json")
    args = p.parse_args()
    if args.keep:
        report = asyncio.run(run(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-cluster-") as tmp:
            report = asyncio.run(run(args, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(summary_lines(report)))
    print(f"full report: {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
