"""candle_builder throughput beside the bare bus, on one private redis-server, with the producer running.

(a) the bus baseline: the plain ``shared.bus.Consumer`` decoding (``decode_feed``) and acking every entry, nothing
    else, while a producer process publishes the entries (``produce``: market_feed's entries, pipelined XADD of
    commands packed beforehand, so the producer is not the ceiling; its own rate is reported beside);
(b) the builder (``CandleBuilderApp``, 6 timeframes, its shipped COUNT/BLOCK, one fenced script per read) while the
    same producer publishes the same entries;
for 1 trade per entry and 100 trades per entry, (a) and (b) alternated ``--repeat`` times (default 3): medians with
min-max, so both see the same load on a shared machine; (c) RSS of a builder process following 500 symbols x 6
timeframes. CPU per trade of each process (consumer or builder, producer, redis-server, from /proc) is reported too,
and the part of the builder's run the producer was still publishing during (``producer_overlap``).

Writes bench/results/bench_candles.json (bench_candles_quick.json for --quick / --per-entry / --skip-rss).
``--paced R`` adds one-trade builder runs with the producer paced at R entries/s: does the builder keep up (``lag_s``, and
``backlog_max``: the most entries it was behind while the producer published)?
Usage: ``python bench/bench_candles.py [--trades N] [--repeat R] [--per-entry 1|100] [--paced R] [--skip-rss]
[--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import hiredis
import redis as sync_redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.candle_builder.app import CandleBuilderApp  # noqa: E402
from services.candle_builder.settings import Settings  # noqa: E402
from shared import streams  # noqa: E402
from shared.bus import FIELD, Batch, Bus, Consumer, ConsumerSettings  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.feed_codec import decode_feed, encode_trades, encode_watermark  # noqa: E402
from shared.partitioned import caught_up  # noqa: E402
from shared.partitions import DEFAULT_PARTITIONS, partition_of  # noqa: E402
from shared.runtime import connect  # noqa: E402
from shared.schemas import Trade, Watermark  # noqa: E402

TIMEFRAMES = ["1m", "3m", "5m", "15m", "1h", "4h"]
#: The builder's shipped COUNT and BLOCK of a partition read (the bare consumer reads the same way): what a user runs.
READ_COUNT = Settings.model_fields["read_count"].default
BLOCK_MS = Settings.model_fields["block_ms"].default
GC_THRESHOLDS = gc.get_threshold()
RESULTS = Path(__file__).resolve().parent / "results"


def make_entries(exchange: str, symbol: str, n_trades: int, per_entry: int, t0: int = 1_723_161_255_000) -> list[bytes]:
    """Realistic BTCUSDT-like trades (~30 trades/s of exchange time), packed ``per_entry`` per stream entry."""
    out = []
    price = 61_837_63
    for i in range(0, n_trades, per_entry):
        rows = []
        for j in range(i, min(i + per_entry, n_trades)):
            price += (j * 7919) % 11 - 5
            rows.append(Trade(j, t0 + j * 33, Decimal(price).scaleb(-2), Decimal("0.01234"), j % 3 == 0))
        out.append(encode_trades(exchange, symbol, rows))
    return out


#: MAXLEN of the bench's XADDs (market_feed's trimming, set high enough to keep every entry of a run).
PRODUCER_MAXLEN = 10_000_000
#: Commands per write of the producer (one write in flight while the replies of the one before are read).
PRODUCER_CHUNK = 2_000


def produce(url: str, stream: str, entries: list[bytes], final: bytes, started: mp.Event, out: mp.Queue,
            rate: float = 0.0, ready: mp.Event | None = None) -> None:
    """Producer process: the entries as market_feed writes them (``XADD stream MAXLEN ~ n * d <entry>``: the same
    entries, built with ``encode_trades``), each command packed beforehand with ``hiredis.pack_command`` and sent on a
    plain socket ``PRODUCER_CHUNK`` at a time, the replies of one write read while the next one is on its way. Its
    Python work per entry is one reply parsed by hiredis, so redis-server sets its pace, not this process (the
    ``Bus.publish_many`` producer made ~78k entries/s here: the ceiling of the one-trade runs). ``rate`` > 0: at most
    that many entries per second (paced write by write), else as fast as Redis takes them. Reports (wall seconds, CPU
    seconds)."""
    u = urlparse(url)
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    commands = [hiredis.pack_command(("XADD", stream, "MAXLEN", "~", PRODUCER_MAXLEN, "*", FIELD, data))
                for data in [*entries, final]]
    writes = [b"".join(commands[i:i + PRODUCER_CHUNK]) for i in range(0, len(commands), PRODUCER_CHUNK)]
    sizes = [min(PRODUCER_CHUNK, len(commands) - i) for i in range(0, len(commands), PRODUCER_CHUNK)]
    del commands
    reader = hiredis.Reader()

    def replies(n: int) -> None:
        while n:
            reply = reader.gets()
            if reply is False:
                reader.feed(sock.recv(1 << 20))
            elif isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"XADD failed: {reply}")
            else:
                n -= 1

    if ready is not None:
        ready.set()  # (packing 300k commands took ~0.5 s on a loaded box: the clock starts after it, not during it)
    started.wait()
    t, c = time.perf_counter(), time.process_time()
    for k, data in enumerate(writes):
        sock.sendall(data)
        if k:
            replies(sizes[k - 1])
        if rate:
            ahead = t + sum(sizes[:k + 1]) / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    replies(sizes[-1])
    out.put((time.perf_counter() - t, time.process_time() - c))
    sock.close()


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (e.g. redis-server), from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _trades_stream(exchange: str, symbol: str) -> str:
    return streams.part_trades(partition_of(exchange, symbol, DEFAULT_PARTITIONS))


def publish_sync(url: str, stream: str, entries: list[bytes]) -> None:
    client = sync_redis.Redis.from_url(url)
    for i in range(0, len(entries), 1000):
        pipe = client.pipeline(transaction=False)
        for data in entries[i:i + 1000]:
            pipe.xadd(stream, {FIELD: data})
        pipe.execute()
    client.close()


async def bus_rate(url: str, n_trades: int, per_entry: int, run: int = 0, redis_pid: int | None = None) -> dict:
    """(a) the bare bus: the plain ``Consumer`` (its defaults but COUNT and BLOCK, the builder's) decoding every entry
    with ``decode_feed`` and acking it, nothing else, while the producer process publishes the same entries as in
    (b). The clock starts when the producer is released and stops when the last entry was handled."""
    exchange, symbol = "rawp", f"P{per_entry}-{run}/USDT"
    stream = _trades_stream(exchange, symbol)
    entries = make_entries(exchange, symbol, n_trades, per_entry)
    final = encode_watermark(Watermark(exchange, symbol, 1_723_161_255_000 + n_trades * 33, final=True))
    client = connect(url)
    bus = Bus(client)
    seen = 0
    done = asyncio.Event()

    async def handle(batch: Batch) -> None:
        nonlocal seen
        for entry in batch.entries:
            if type(entry.value) is Watermark:
                done.set()
            else:
                seen += len(entry.value.trades)

    consumer = Consumer(bus, ConsumerSettings(group="bare", consumer="c", count=READ_COUNT, block_ms=BLOCK_MS), decode=decode_feed,
                        handler=handle, streams=[stream])
    await consumer.poll(None)  # creates the group before anything is published
    started, result, ready = mp.Event(), mp.Queue(), mp.Event()
    producer = mp.Process(target=produce, args=(url, stream, entries, final, started, result, 0.0, ready))
    producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.sleep(0.2)
    await asyncio.to_thread(ready.wait, 120)
    started.set()
    t, cpu = time.perf_counter(), time.process_time()
    redis_cpu = proc_cpu_s(redis_pid) if redis_pid else 0.0
    await asyncio.wait_for(done.wait(), 600)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    redis_cpu = proc_cpu_s(redis_pid) - redis_cpu if redis_pid else float("nan")
    stop.set()
    await task
    producer_s, producer_cpu = await asyncio.to_thread(result.get, True, 60)
    producer.join()
    await client.delete(stream)
    await client.aclose()
    if seen != n_trades:
        raise RuntimeError(f"the bare consumer saw {seen} of {n_trades} trades")
    us = 1e6 / n_trades
    return {"trades_per_s": n_trades / elapsed, "producer_trades_per_s": n_trades / producer_s, "cpu_us_per_trade": {
        "consumer": round(cpu * us, 2), "producer": round(producer_cpu * us, 2), "redis_server": round(redis_cpu * us, 2)}}


async def builder_rate(url: str, n_trades: int, per_entry: int, run: int = 0, redis_pid: int | None = None,
                       paced: float = 0.0, **overrides: object) -> dict:
    """Trades/s through the builder while a producer process publishes (``paced``: at most that many entries/s); the
    clock stops when the builder is done, ``lag_s`` after the producer's last entry was acknowledged.

    Also the CPU µs per trade of the builder (this process), the producer and redis-server over the same run."""
    exchange, symbol = "bench", f"B{per_entry}-{run}/USDT"  # a fresh series each run (no saved state)
    partition = partition_of(exchange, symbol, DEFAULT_PARTITIONS)
    stream = streams.part_trades(partition)
    entries = make_entries(exchange, symbol, n_trades, per_entry)
    final = encode_watermark(Watermark(exchange, symbol, 1_723_161_255_000 + n_trades * 33, final=True))
    redis = connect(url)
    await redis.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
    settings = Settings(**{"redis_url": url, "timeframes": TIMEFRAMES, "live_throttle_ms": 250,
                           # in-progress candles as a live feed has them (wall-time throttle): this producer is not
                           # a registered live feed, and "auto" would throttle in exchange time (~8 trades apart here)
                           "live_throttle_clock": "wall", **overrides})
    app = CandleBuilderApp(settings, redis)
    started, result, ready = mp.Event(), mp.Queue(), mp.Event()
    producer = mp.Process(target=produce, args=(url, stream, entries, final, started, result, paced, ready))
    producer.start()
    stop = asyncio.Event()
    await app.discover()
    task = asyncio.create_task(app.run(stop))
    await asyncio.sleep(0.2)
    await asyncio.to_thread(ready.wait, 120)
    spy = _py_spy(os.environ.get("BENCH_PYSPY"))
    started.set()
    t, cpu = time.perf_counter(), time.process_time()
    redis_cpu = proc_cpu_s(redis_pid) if redis_pid else 0.0
    backlog: list[int] = []  # entries in the stream not yet built, every ~50 ms while the producer publishes
    sampled = t
    while app.trades_in < n_trades or not await caught_up(redis, DEFAULT_PARTITIONS, streams.GROUP_CANDLE_BUILDER,
                                                           streams.part_trades):
        if task.done():
            task.result()
        if paced and time.perf_counter() - sampled >= 0.05 and result.empty():  # (the producer has not finished)
            sampled = time.perf_counter()
            backlog.append(await redis.xlen(stream) - app.trades_in // per_entry)
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu
    redis_cpu = proc_cpu_s(redis_pid) - redis_cpu if redis_pid else float("nan")
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # (py-spy writes its file on SIGINT)
        await asyncio.to_thread(spy.wait, 30)
    stop.set()
    await task
    gc.unfreeze()  # (the builder's quiet_gc is for its process; the bare consumer runs next in this one)
    gc.set_threshold(*GC_THRESHOLDS)
    producer_s, producer_cpu = await asyncio.to_thread(result.get, True, 60)
    producer.join()
    candles = sum([await redis.xlen(streams.series_candles(partition, exchange, symbol, tf)) for tf in TIMEFRAMES])
    late = app.status()["late_dropped"]
    if late:
        raise RuntimeError(f"{late} trades were dropped as late: the measurement is void")
    await redis.delete(stream, streams.part_state(partition, streams.GROUP_CANDLE_BUILDER))
    await redis.srem(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
    await redis.aclose()
    us = 1e6 / n_trades
    return {"trades": n_trades, "trades_per_entry": per_entry, "seconds": round(elapsed, 3),
            "builder_trades_per_s": round(n_trades / elapsed), "producer_trades_per_s": round(n_trades / producer_s),
            # the part of the builder's run the producer was publishing during (1: all of it)
            "producer_overlap": round(min(1.0, producer_s / elapsed), 3), "lag_s": round(elapsed - producer_s, 3),
            # (paced) the most entries the builder was behind while the producer published, and the median: a builder
            # that keeps up stays within a write or two of the producer (PRODUCER_CHUNK entries each)
            "backlog_max": max(backlog, default=None), "backlog_median": statistics.median(backlog) if backlog else None,
            "closed_candles": candles, "cpu_us_per_trade": {
                "builder": round(cpu * us, 2), "producer": round(producer_cpu * us, 2),
                "redis_server": round(redis_cpu * us, 2), "sum": round((cpu + producer_cpu + redis_cpu) * us, 2)}}


def _py_spy(path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording this process (raw collapsed stacks, ``BENCH_PYSPY=<file>``; the last run's is kept)."""
    if not path:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy) if spy.exists() else "py-spy", "record", "--pid", str(os.getpid()), "--rate",
                             "250", "--format", "raw", "--output", path, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(url: str, n_symbols: int, trades_each: int, out: mp.Queue) -> None:
    async def main() -> None:
        before = rss_mb()
        redis = connect(url)
        settings = Settings(redis_url=url, timeframes=TIMEFRAMES, live_candles=False)
        app = CandleBuilderApp(settings, redis)
        await app.discover()
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        total = n_symbols * trades_each
        while app.trades_in < total:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        out.put({"symbols": len(app.series), "timeframes": len(TIMEFRAMES), "trades": app.trades_in,
                 "rss_mb_before": round(before, 1), "rss_mb_after": round(rss_mb(), 1)})
        await redis.aclose()

    asyncio.run(main())


def rss_for_symbols(url: str, n_symbols: int, trades_each: int) -> dict:
    client = sync_redis.Redis.from_url(url)
    for k in range(n_symbols):
        exchange, symbol = "rss", f"S{k}/USDT"
        client.sadd(streams.FEED_REGISTRY, streams.registry_member(exchange, symbol))
        publish_sync(url, _trades_stream(exchange, symbol), make_entries(exchange, symbol, trades_each, 100))
    client.close()
    out: mp.Queue = mp.Queue()
    child = mp.Process(target=rss_child, args=(url, n_symbols, trades_each, out))
    child.start()
    result = out.get(timeout=300)
    child.join()
    return result


GOALS = {  # issue 20's speed section
    1: {"builder_trades_per_s": 100_000},
    100: {"builder_trades_per_s": 400_000},
    "rss_mb": 300,
}


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values)), "min": round(min(values)), "max": round(max(values)),
            "runs": [round(v) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=200_000, help="trades for the 1-per-entry runs")
    parser.add_argument("--batched-trades", type=int, default=1_000_000, help="trades for the 100-per-entry runs")
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="alternate (a) and (b) this many times")
    parser.add_argument("--per-entry", type=int, choices=(1, 100), action="append",
                        help="only these trades-per-entry runs (repeatable; default both)")
    parser.add_argument("--paced", type=float, default=0.0, help="also run the one-trade builder runs with the "
                        "producer paced at this many entries/s (e.g. 100000: does the builder keep up with it?)")
    parser.add_argument("--skip-rss", action="store_true", help="leave out the 500-symbol RSS run")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.trades, args.batched_trades, args.symbols, args.repeat = 20_000, 100_000, 50, 1
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "load_avg_before": os.getloadavg()}, "timeframes": TIMEFRAMES,
                     "goals": {str(k): v for k, v in GOALS.items()}}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        url, pid = server.url, server.process.pid
        for per_entry, n in ((1, args.trades), (100, args.batched_trades)):
            if args.per_entry and per_entry not in args.per_entry:
                continue
            # The machine is shared: alternate (a) and (b), so both see similar load; medians with min-max.
            bare, built = [], []
            for run in range(args.repeat):
                bare.append(asyncio.run(bus_rate(url, n, per_entry, run, pid)))
                built.append(asyncio.run(builder_rate(url, n, per_entry, run, pid)))
            out = {"trades": n, "trades_per_entry": per_entry,
                   "bus_baseline_trades_per_s": _summary([b["trades_per_s"] for b in bare]),
                   "builder_trades_per_s": _summary([b["builder_trades_per_s"] for b in built]),
                   "producer_trades_per_s": _summary([b["producer_trades_per_s"] for b in built]),
                   "producer_trades_per_s_bus_runs": _summary([b["producer_trades_per_s"] for b in bare]),
                   "producer_overlap": [b["producer_overlap"] for b in built],
                   "ratio_builder_to_bus_median": round(statistics.median(b["builder_trades_per_s"] for b in built)
                                                        / statistics.median(b["trades_per_s"] for b in bare), 3),
                   "cpu_us_per_trade": {"bus_baseline": [b["cpu_us_per_trade"] for b in bare],
                                        "builder": [b["cpu_us_per_trade"] for b in built]},
                   "closed_candles": built[-1]["closed_candles"]}
            results[f"per_entry_{per_entry}"] = out
            goal = GOALS[per_entry]["builder_trades_per_s"]
            med = out["builder_trades_per_s"]["median"]
            print(f"--- {per_entry} trade(s) per entry, {n} trades, {args.repeat} runs (median, min-max)", flush=True)
            for key in ("bus_baseline_trades_per_s", "producer_trades_per_s_bus_runs", "builder_trades_per_s",
                        "producer_trades_per_s"):
                v = out[key]
                print(f"  {key:28s} {v['median']:>9} ({v['min']}-{v['max']})", flush=True)
            print(f"  builder / bus baseline       {out['ratio_builder_to_bus_median']}", flush=True)
            print(f"  producer overlap (builder)   {out['producer_overlap']}", flush=True)
            cpu = [b["cpu_us_per_trade"]["builder"] for b in built]
            print(f"  builder CPU us/trade         {statistics.median(cpu):.2f} ({min(cpu)}-{max(cpu)})", flush=True)
            print(f"  goal builder >= {goal}: {'MET' if med >= goal else 'NOT MET'}", flush=True)
        if args.paced:
            paced = [asyncio.run(builder_rate(url, args.trades, 1, 100 + run, pid, paced=args.paced))
                     for run in range(args.repeat)]
            results["paced"] = {"entries_per_s": args.paced, "trades": args.trades, "runs": paced,
                                "builder_trades_per_s": _summary([b["builder_trades_per_s"] for b in paced]),
                                "producer_trades_per_s": _summary([b["producer_trades_per_s"] for b in paced]),
                                "lag_s": [b["lag_s"] for b in paced]}
            out = results["paced"]
            print(f"--- 1 trade per entry, producer paced at {args.paced:.0f} entries/s, {args.repeat} runs", flush=True)
            for key in ("producer_trades_per_s", "builder_trades_per_s"):
                v = out[key]
                print(f"  {key:28s} {v['median']:>9} ({v['min']}-{v['max']})", flush=True)
            print(f"  builder done after the producer (s) {out['lag_s']}", flush=True)
            print(f"  backlog while producing (entries) max {[b['backlog_max'] for b in paced]} median "
                  f"{[b['backlog_median'] for b in paced]} (a producer write: {PRODUCER_CHUNK})", flush=True)
            cpu = [b["cpu_us_per_trade"]["builder"] for b in paced]
            print(f"  builder CPU us/trade         {statistics.median(cpu):.2f} ({min(cpu)}-{max(cpu)})", flush=True)
        if not args.skip_rss:
            results["rss"] = rss_for_symbols(url, args.symbols, 200)
            rss = results["rss"]["rss_mb_after"]
            print(json.dumps(results["rss"]), flush=True)
            print(f"  rss_mb {rss}   goal <= {GOALS['rss_mb']}: {'MET' if rss <= GOALS['rss_mb'] else 'NOT MET'}")
    results["machine"]["load_avg_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = args.quick or args.per_entry or args.skip_rss
    path = RESULTS / ("bench_candles_quick.json" if partial else "bench_candles.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
