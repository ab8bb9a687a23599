"""Book rules at scale: 200 pairs, a book snapshot per pair every 100 ms (2,000 updates/s), 5 book rules each (1,000
rule bindings), through ``AlertEngineApp`` in its own process as ``sentinel alert-engine`` runs it. Writes
bench/results/bench_book_alerts.json.

The snapshots are real: market_feed's ``BookSnapshot`` of the 2024-08-08 BTCUSDT book (``book_core.PairBook`` over
the real diffs, top 20 levels, bands 10/25/50 bps, walls), each pair cycling through them from its own offset, with
exchange time = wall time. A producer process XADDs them to the pairs' partition streams (``part_books``, 16
partitions), the pairs in 20 groups spread over each interval (one pipeline per group: 10 snapshots every 5 ms); a
reader process takes the kernel's receive time of each alert on its socket (``bench.common.Probe``). The engine
starts before the producer and is ready once every partition it holds has its engine (``bench.common.run_engine``).
Latency: the snapshot's XADD (the producer's clock just before the pipeline is sent) -> the alert reaching the
reader. The first WARMUP_S seconds are not sampled. "floor": the same producer and reader with no engine, the reader
reading the snapshots themselves: the machine's own cost at that moment (runs alternate with the engine's). Also
reported: the engine's CPU seconds per second of the run (its share of one core), its CPU per update and alerts per
second. p50 / p99 per run; median [min-max] over the runs.

Usage: ``python bench/bench_book_alerts.py [--pairs 200] [--every-ms 100] [--seconds 20] [--runs 3]
[--compare offsets_every_ms=0] [--reference]`` (``--compare``: a variant of the engine with other settings,
alternated with the default one and the floor; ``--reference``: also the engine reading and committing through
redis-py's asyncio client instead of ``shared.resp``, alternated likewise).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Probe, fmt_spread, pick, proc_cpu_s, run_engine, spread, write_result  # noqa: E402
from services.market_feed.book_core import BookView, PairBook  # noqa: E402
from shared import streams  # noqa: E402
from shared.bus import FIELD  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.orderbook.binance import DiffDepthSync, DiffResult  # noqa: E402
from shared.orderbook.book import parse_levels  # noqa: E402
from shared.orderbook.walls import WallTracker  # noqa: E402
from shared.partitions import partition_of  # noqa: E402
from shared.schemas import Trade, unpack  # noqa: E402
from shared.alert_streams import alert_streams  # noqa: E402
from shared.partitions import DEFAULT_PARTITIONS  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_btcusdt"
WARMUP_S = 3
EX = "bench"
GOAL_P99_MS = 20.0  # issue 24
SLOTS = 20  # the pairs publish in 20 groups spread over each interval (5 ms apart at 100 ms)
RULES = """
rules:
  - {name: bid_heavy, symbols: "B*/USDT", frequency: every_time, condition: {left: {imbalance: 10}, op: above,
     right: "0.1"}}
  - {name: thin_asks, symbols: "B*/USDT", frequency: every_time, cooldown: 5s,
     condition: {left: {depth_ask: {bps: 25, unit: quote}}, op: below, right: 6000000}}
  - {name: ask_wall, symbols: "B*/USDT", frequency: every_time, cooldown: 5s,
     condition: {left: {wall_ratio_ask: 25}, op: above, right: 60}}
  - {name: micro_up, symbols: "B*/USDT", frequency: every_time,
     condition: {left: microprice, op: crosses_up, right: book_mid}}
  - {name: pulled, symbols: "B*/USDT", frequency: every_time, cooldown: 5s,
     condition: {left: {wall_pulled: any}, op: above, right: 5}}
"""


def real_snapshots(every: int = 1) -> list[dict[str, Any]]:
    """market_feed's snapshots of the real book (2024-08-08 capture) after every ``every``-th diff, with the trades
    between them for wall events, as unpacked message maps."""
    with gzip.open(DATA / "raw_ws_btcusdt_20240808.gz", "rt") as f:
        frames = [json.loads(line.split(" ", 1)[1]) for line in f]
    snap = next(f for f in frames if "lastUpdateId" in f)
    pair = PairBook(EX, "BTC/USDT", top_n=20, walls=WallTracker(25, 10))
    floor, ceiling = Decimal(snap["bids"][-1][0]), Decimal(snap["asks"][-1][0])
    sync = DiffDepthSync()
    out = []
    n = 0
    for f in frames:
        stream = f.get("stream", "")
        if "lastUpdateId" in f:
            sync.snapshot(f["lastUpdateId"], parse_levels(f["bids"]), parse_levels(f["asks"]))
        elif stream.endswith("@trade"):
            d = f["data"]
            pair.add_trades([Trade(d["t"], d["T"], Decimal(d["p"]), Decimal(d["q"]), not d["m"])])
        elif stream.endswith("@depth@100ms") and sync.diff(f["data"]) is DiffResult.APPLIED:
            n += 1
            if n % every:
                continue
            book = sync.book
            view = BookView(book.bids.levels(), book.asks.levels(), book.update_id, f["data"]["E"], floor, ceiling)
            out.append(unpack(pair.snapshot(view).encode()))
    return out


def _producer(url: str, pairs: int, every_ms: int, seconds: float, partitions: int, out: Any) -> None:
    """Each pair's snapshot every ``every_ms``, the pairs spread over the interval in ``SLOTS`` groups (as
    independent books update), one pipeline per group."""
    import redis as redis_sync

    bases = real_snapshots()
    symbols = [f"B{i}/USDT" for i in range(pairs)]
    keys = [streams.part_books(partition_of(EX, s, partitions)) for s in symbols]
    groups = [list(range(g, pairs, SLOTS)) for g in range(SLOTS)]
    r = redis_sync.Redis.from_url(url)
    sent: dict[str, float] = {}
    step = every_ms / 1000 / SLOTS
    n = 0
    start = time.time()
    next_at = start
    while time.time() - start < seconds:
        tick, group = divmod(n, SLOTS)
        now_ms = int(time.time() * 1000)
        pipe = r.pipeline(transaction=False)
        for i in groups[group]:
            msg = dict(bases[(tick + 37 * i) % len(bases)])
            msg["exchange"], msg["symbol"], msg["ts"], msg["update_id"] = EX, symbols[i], now_ms, tick
            pipe.xadd(keys[i], {FIELD: msgpack.packb(msg)}, maxlen=20_000, approximate=True)
        t_send = time.time()
        pipe.execute()
        for i in groups[group]:
            sent[f"{symbols[i]}|{now_ms}"] = t_send
        n += 1
        next_at += step
        time.sleep(max(0.0, next_at - time.time()))
    out.put((sent, n // SLOTS, start))


def _reader(url: str, stop: Any, ready: Any, out: Any, floor: bool) -> None:
    """When each alert reached this process (the kernel's receive time); ``floor``: each book snapshot itself, read
    from the partition streams with no engine running (producer -> Redis -> reader: what the machine costs)."""
    probe = Probe(url)
    last = ({streams.part_books(p): "0-0" for p in range(DEFAULT_PARTITIONS)} if floor
            else dict.fromkeys(alert_streams(DEFAULT_PARTITIONS), "0-0"))  # every partition's alerts stream
    received: list[tuple[str, str, float]] = []
    ready.set()
    while not stop.is_set():
        resp, arrived = probe.call("XREAD", "COUNT", 1000, "BLOCK", 100, "STREAMS", *last, *last.values())
        for stream, entries in resp or ():
            for entry_id, fields in entries:
                last[stream.decode()] = entry_id.decode()
                msg = unpack(fields[fields.index(FIELD) + 1])
                received.append((msg.get("rule", "book"), f"{msg['symbol']}|{msg['ts']}", arrived))
    out.put(received)


def run_once(url: str, pairs: int, every_ms: int, seconds: float, rules: Path, redis_pid: int,
             floor: bool = False, options: dict[str, Any] | None = None, reference: bool = False) -> dict[str, Any]:
    import redis as redis_sync

    r = redis_sync.Redis.from_url(url)
    r.flushall()
    r.sadd(streams.BOOK_REGISTRY, *(streams.registry_member(EX, f"B{i}/USDT", "book") for i in range(pairs)))
    ctx = mp.get_context("spawn")
    mark, stop, engine_ready, reader_stop, reader_ready = (ctx.Event() for _ in range(5))
    cpu_q, seen_q, sent_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    engine = ctx.Process(target=run_engine, args=(url, str(rules), mark, stop, engine_ready, cpu_q),
                         kwargs={"options": options})
    reader = ctx.Process(target=_reader, args=(url, reader_stop, reader_ready, seen_q, floor))
    if floor:
        engine_ready.set()
    else:
        os.environ["BENCH_REDIS_PY"] = "1" if reference else ""  # (``bench.common.reference_client``)
        engine.start()
        os.environ.pop("BENCH_REDIS_PY")
    reader.start()
    engine_ready.wait(60)
    reader_ready.wait(60)
    producer = ctx.Process(target=_producer, args=(url, pairs, every_ms, seconds, 16, sent_q))
    producer.start()
    r.config_resetstat()
    mark.set()
    redis_cpu = proc_cpu_s(redis_pid)
    sent, ticks, started = sent_q.get(timeout=seconds + 120)
    producer.join()
    redis_cpu = proc_cpu_s(redis_pid) - redis_cpu
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()}
    time.sleep(1.0)  # the last alerts
    stop.set()
    engine_cpu = 0.0 if floor else cpu_q.get(timeout=60)
    reader_stop.set()
    received = seen_q.get(timeout=60)
    if not floor:
        engine.join()
    reader.join()
    lat = sorted((arrived - sent[key]) * 1000 for _rule, key, arrived in received
                 if key in sent and sent[key] - started >= WARMUP_S)
    by_rule: dict[str, int] = {}
    for rule, _, _ in received:
        by_rule[rule] = by_rule.get(rule, 0) + 1
    return {"updates": ticks * pairs, "updates_per_s": round(ticks * pairs / seconds), "alerts": len(received),
            "alerts_per_s": round(len(received) / seconds), "alerts_by_rule": by_rule, "sampled": len(lat),
            "p50_ms": pick(lat, 0.5), "p99_ms": pick(lat, 0.99), "max_ms": round(lat[-1], 3) if lat else None,
            "engine_cpu_share": round(engine_cpu / seconds, 3),
            "engine_cpu_us_per_update": round(engine_cpu / (ticks * pairs) * 1e6, 1),
            "redis_cpu_share": round(redis_cpu / seconds, 3), "load_avg_1m": os.getloadavg()[0],
            # Redis calls per book update during the run (the producer's XADDs, the engine's XREADs and commits)
            "calls_per_update": {k: round(calls.get(k, 0) / (ticks * pairs), 3) for k in ("xread", "evalsha", "xadd")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--every-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", action="append", default=[], metavar="SETTING=VALUE",
                        help="also run the engine with this alert_engine setting (repeatable: one variant with all of "
                             "them), alternating with the default engine and the floor")
    parser.add_argument("--reference", action="store_true",
                        help="also run the engine on redis-py's asyncio client (bench.common.reference_client)")
    parser.add_argument("--output", default="bench_book_alerts.json", help="file name in bench/results/")
    args = parser.parse_args()
    variant = dict(item.split("=", 1) for item in args.compare)
    layouts: dict[str, dict[str, Any] | None] = {"engine": {}, **({"variant": variant} if variant else {}),
                                                  **({"reference": {}} if args.reference else {}), "floor": None}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(RULES)
        server = EmbeddedRedis(Path(tmp) / "redis", persist=False)
        server.start()
        try:
            for _ in range(args.runs):  # the layouts alternate: all see the same moments of the machine
                for name, options in layouts.items():
                    res = run_once(server.url, args.pairs, args.every_ms, args.seconds, rules, server.process.pid,
                                   floor=options is None, options=options, reference=name == "reference")
                    print(f"    {name}", json.dumps(res), flush=True)
                    runs[name].append(res)
        finally:
            server.stop()
    result: dict[str, Any] = {"machine": platform.platform(), "cpus": mp.cpu_count(), "pairs": args.pairs,
                              "every_ms": args.every_ms, "rules_per_pair": 5, "seconds": args.seconds,
                              "goal_p99_ms": GOAL_P99_MS, "variant_settings": variant}
    for name, rs in runs.items():
        row = result[name] = {k: spread([r[k] for r in rs if r[k] is not None]) for k in ("p50_ms", "p99_ms")}
        if name != "floor":
            row["cpu_us_per_update"] = spread([r["engine_cpu_us_per_update"] for r in rs], 1)
            row["calls_per_update"] = {k: spread([r["calls_per_update"][k] for r in rs]) for k in ("xread", "evalsha")}
        row["runs"] = rs
    engine = result["engine"]
    if "reference" in result:  # this engine's figures over the reference's (medians; below 1: better)
        ref = result["reference"]
        result["ratio_to_reference"] = {k: _ratio(engine[k]["median"], ref[k]["median"])
                                        for k in ("p50_ms", "p99_ms", "cpu_us_per_update")}
        print(f"engine / reference (medians): {result['ratio_to_reference']}")
    result["met"] = engine["p99_ms"]["median"] is not None and engine["p99_ms"]["median"] <= GOAL_P99_MS
    print(f"{args.pairs} pairs x {1000 // args.every_ms}/s x 5 book rules, {args.runs} runs, update -> alert "
          f"(goal p99 <= {GOAL_P99_MS}: {'MET' if result['met'] else 'NOT MET'}):")
    for name in runs:
        row = result[name]
        label = {"engine": "engine", "variant": f"engine {variant}", "reference": "engine on redis-py (reference)",
                 "floor": "floor (no engine)"}[name]
        cpu = (f", CPU per update {fmt_spread(row['cpu_us_per_update'], 'us')}, Redis calls per update: XREAD "
               f"{row['calls_per_update']['xread']['median']}, EVALSHA {row['calls_per_update']['evalsha']['median']}"
               if name != "floor" else "")
        print(f"  {label}: p50 {fmt_spread(row['p50_ms'])}, p99 {fmt_spread(row['p99_ms'])}{cpu}")
    print(f"written: {write_result(args.output, result)}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


if __name__ == "__main__":
    main()
