"""alert_engine benchmarks, on one private redis-server.

(a) trade in → alert out: a producer process publishes trades (market_feed's stream format) at 1k / 5k / 20k
    trades/s over 10 symbols with exchange time = wall time; the real ``CandleBuilderApp`` builds 1s candles and
    ``AlertEngineApp`` runs an ``every_time`` rule on them, both on one event loop as ``sentinel up`` runs them. A 1s
    candle closes when the first trade of the next second arrives, so the latency of an alert is measured from the
    publish of that trade to the alert entry being read from the alerts stream (p50 / p99) by a reader in its own
    process (as the notifier is), so the reader's wake-up does not queue behind the builder's and engine's work.
(b) evaluation throughput of the pure core: 500 symbols × 10 rules (crossings, indicators, channels, moves, volume
    spike, all/any) on closed candles.

Writes bench/results/bench_alerts.json. Usage: ``python bench/bench_alerts.py [--seconds 6] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.alert_engine.app import AlertEngineApp  # noqa: E402
from services.alert_engine.core import AlertEngine  # noqa: E402
from services.alert_engine.rules import parse_rules  # noqa: E402
from services.alert_engine.settings import Settings as EngineSettings  # noqa: E402
from shared import streams  # noqa: E402
from shared.bus import FIELD  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.runtime import connect  # noqa: E402
from shared.schemas import Alert, Candle, encode_trades  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SYMBOLS = [f"S{i}/USDT" for i in range(10)]


def _producer(url: str, rate: int, seconds: float, out: mp.Queue) -> None:
    import redis as sync_redis

    r = sync_redis.Redis.from_url(url)
    per_ms = rate / 1000
    owed, tid = 0.0, 0
    firsts: dict[tuple[str, int], float] = {}
    last_sec: dict[str, int] = {}
    end = time.time() + seconds
    next_tick = time.perf_counter()
    rng = random.Random(1)
    while time.time() < end:
        owed += per_ms
        n, owed = int(owed), owed - int(owed)
        if n:
            by_sym: dict[str, list] = {}
            now_ms = int(time.time() * 1000)
            for _ in range(n):
                sym = SYMBOLS[tid % len(SYMBOLS)]
                tid += 1
                by_sym.setdefault(sym, []).append((tid, now_ms, Decimal(100 + rng.randint(0, 100)) / 10,
                                                   Decimal("0.01"), tid % 2 == 0))
            pipe = r.pipeline(transaction=False)
            for sym, trades in by_sym.items():
                pipe.xadd(streams.trades("bench", sym), {FIELD: encode_trades("bench", sym, trades)}, maxlen=100_000,
                          approximate=True)
            sent = time.time()
            pipe.execute()
            sec = now_ms // 1000
            for sym in by_sym:
                if last_sec.get(sym) != sec:
                    last_sec[sym] = sec
                    firsts[(sym, sec * 1000)] = sent
        next_tick += 0.001
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    out.put({f"{k[0]}|{k[1]}": v for k, v in firsts.items()})


def _reader(url: str, stop: Any, ready: Any, out: mp.Queue, floor: bool = False) -> None:
    """The alerts' consumer, in its own process as the notifier is: when each alert and closed candle is read.

    On the builder/engine loop its reads would wait for their work and add that wait to the figures.

    ``floor``: read the trades streams themselves instead (no services run): when the first trade of each second
    reaches a reader — the empty hop producer → Redis → another process, the machine's floor under our latency."""
    import redis as sync_redis

    from services.candle_builder.decode import decode_feed_fast

    r = sync_redis.Redis.from_url(url)
    trades = {streams.trades("bench", s): s for s in SYMBOLS}
    # From the start ("0-0": every run begins with FLUSHALL). "$" stays "new since THIS call" for a stream until it
    # has returned an entry, so with one stream busy the others' entries were never read (most samples were lost).
    last = {s: "0-0" for s in trades} if floor else \
        {streams.ALERTS: "0-0", **{streams.candles("bench", s, "1s"): "0-0" for s in SYMBOLS}}
    received: dict[str, float] = {}
    candle_seen: dict[str, float] = {}
    ready.set()
    while not stop.is_set():
        resp = r.xread(last, block=100, count=1000)
        now = time.time()
        for stream, entries in resp or ():
            stream = stream.decode()
            for entry_id, fields in entries:
                last[stream] = entry_id
                if floor:  # the key the producer uses for this second's first trade, as the alert's would be
                    msg = decode_feed_fast(fields[FIELD])
                    received.setdefault(f"{trades[stream]}|{msg.trades[0][1] // 1000 * 1000}", now)
                elif stream == streams.ALERTS:
                    a = Alert.decode(fields[FIELD])
                    received[f"{a.symbol}|{a.ts + 1000}"] = now
                else:
                    c = Candle.decode(fields[FIELD])
                    candle_seen.setdefault(f"{c.symbol}|{c.ts + 1000}", now)
    out.put((received, candle_seen))


RULE_TICK = ("rules:\n  - {name: tick, exchange: bench, symbols: ['*/USDT'], timeframe: 1s, "
             "frequency: every_time, condition: {op: above, right: 0}}\n")


def _apps(url: str, rules: Path, redis: Any, which: tuple[str, ...]) -> list:
    from services.candle_builder.app import CandleBuilderApp
    from services.candle_builder.settings import Settings as BuilderSettings

    apps = []
    if "builder" in which:
        apps.append(CandleBuilderApp(BuilderSettings(timeframes=["1s"], base_timeframe="1s", live_candles=False,
                                                     flat_candles=False, block_ms=50, redis_url=url), redis))
    if "engine" in which:
        apps.append(AlertEngineApp(EngineSettings(rules_file=rules, block_ms=50, intrabar=False, redis_url=url,
                                                  registry_poll_s=0.5), redis))
    return apps


def _service(url: str, rules: str, which: tuple[str, ...], mark: Any, stop: Any, ready: Any, out: mp.Queue) -> None:
    """One service process (builder, engine, or both on one loop): runs until ``stop``; reports its CPU seconds
    between ``mark`` (the producer starts) and ``stop``."""
    async def main() -> None:
        redis = connect(url)
        apps = _apps(url, Path(rules), redis, which)
        halt = asyncio.Event()
        tasks = [asyncio.create_task(app.run(halt)) for app in apps]
        ready.set()
        await asyncio.to_thread(mark.wait)
        cpu = time.process_time()
        await asyncio.to_thread(stop.wait)
        cpu = time.process_time() - cpu
        halt.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
        out.put(("+".join(which), cpu))

    asyncio.run(main())


async def _latency(url: str, rate: int, seconds: float, tmp: Path, layout: str = "processes",
                   redis_pid: int | None = None) -> dict:
    """``layout``: "processes" (builder and engine each in its own process, as `sentinel candle-builder` and
    `sentinel alert-engine` run them), "one_loop" (both on one event loop, as `sentinel up` runs them) or "floor"
    (no services: the reader reads the trades themselves; the same producer, reader and timing — what the machine
    costs before any of our work)."""
    redis = connect(url)
    await redis.flushall()
    for sym in SYMBOLS:
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member("bench", sym))
    rules = tmp / "rules.yaml"
    rules.write_text(RULE_TICK)
    ctx = mp.get_context("spawn")
    svc_stop, mark = ctx.Event(), ctx.Event()
    cpu_q: mp.Queue = ctx.Queue()
    groups = {"processes": [("builder",), ("engine",)], "one_loop": [("builder", "engine")], "floor": []}[layout]
    services = []
    for which in groups:
        ready = ctx.Event()
        proc = ctx.Process(target=_service, args=(url, str(rules), which, mark, svc_stop, ready, cpu_q))
        proc.start()
        services.append((proc, ready))
    for _, ready in services:
        await asyncio.to_thread(ready.wait, 60)
    seen_q: mp.Queue = ctx.Queue()
    reader_stop, reader_ready = ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(url, reader_stop, reader_ready, seen_q, layout == "floor"))
    reader.start()
    await asyncio.to_thread(reader_ready.wait, 30)
    await asyncio.sleep(1.5)  # discovery, groups, subscriptions
    q: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_producer, args=(url, rate, seconds, q))
    redis_cpu = _proc_cpu_s(redis_pid) if redis_pid else float("nan")
    mark.set()
    proc.start()
    firsts = await asyncio.to_thread(q.get)
    await asyncio.to_thread(proc.join)
    await asyncio.sleep(0.5)
    svc_stop.set()
    redis_cpu = _proc_cpu_s(redis_pid) - redis_cpu if redis_pid else float("nan")
    reader_stop.set()
    received, candle_seen = await asyncio.to_thread(seen_q.get)
    await asyncio.to_thread(reader.join)
    cpu = dict([await asyncio.to_thread(cpu_q.get, True, 30) for _ in services])
    for p, _ in services:
        await asyncio.to_thread(p.join)
    await redis.aclose()
    lat = sorted((received[k] - firsts[k]) * 1000 for k in received if k in firsts)
    if not lat:
        return {"rate": rate, "layout": layout, "samples": 0}
    pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    clat = sorted((candle_seen[k] - firsts[k]) * 1000 for k in candle_seen if k in firsts)
    cpick = lambda p: clat[min(len(clat) - 1, int(p * len(clat)))] if clat else None  # noqa: E731
    trades = rate * seconds
    return {"rate_trades_per_s": rate, "layout": layout, "samples": len(lat), "p50_ms": round(pick(0.5), 3),
            "p99_ms": round(pick(0.99), 3), "max_ms": round(lat[-1], 3),
            "trade_to_closed_candle_p50_ms": cpick(0.5) and round(cpick(0.5), 3),
            "trade_to_closed_candle_p99_ms": cpick(0.99) and round(cpick(0.99), 3),
            # CPU from the producer's start to 0.5 s after its end (idle polling included) per trade published
            "cpu_us_per_trade": {**{k: round(v * 1e6 / trades, 2) for k, v in cpu.items()},
                                 "redis_server": round(redis_cpu * 1e6 / trades, 2)}}


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _candle_producer(url: str, n: int, out: mp.Queue) -> None:
    import redis as sync_redis

    r = sync_redis.Redis.from_url(url)
    sent: dict[str, float] = {}
    p = Decimal(1)
    for i in range(n):
        sym = SYMBOLS[i % len(SYMBOLS)]
        c = Candle(exchange="bench", symbol=sym, timeframe="1s", ts=i * 1000, open=p, high=p, low=p, close=p,
                   volume=p, buy_volume=p, sell_volume=Decimal(0))
        sent[f"{sym}|{c.ts + 1000}"] = time.time()
        r.xadd(streams.candles("bench", sym, "1s"), {FIELD: c.encode()})
        time.sleep(0.005)
    out.put(sent)


async def _engine_latency(url: str, n: int, tmp: Path) -> dict:
    """Closed candle in → alert out, the engine alone (its own hop of the pipeline)."""
    redis = connect(url)
    await redis.flushall()
    for sym in SYMBOLS:
        await redis.sadd(streams.CANDLE_REGISTRY, streams.registry_member("bench", sym, "1s"))
    rules = tmp / "rules.yaml"
    rules.write_text("rules:\n  - {name: tick, exchange: bench, symbols: ['*/USDT'], timeframe: 1s, "
                     "frequency: every_time, condition: {op: above, right: 0}}\n")
    engine = AlertEngineApp(EngineSettings(rules_file=rules, block_ms=50, intrabar=False, redis_url=url), redis)
    stop = asyncio.Event()
    received: dict[str, float] = {}
    reader = connect(url)

    async def read_alerts() -> None:
        last = "$"
        while not stop.is_set():
            resp = await reader.xread({streams.ALERTS: last}, block=100, count=1000)
            now = time.time()
            for _, entries in resp or ():
                for entry_id, fields in entries:
                    last = entry_id
                    a = Alert.decode(fields[FIELD])
                    received[f"{a.symbol}|{a.ts + 1000}"] = now

    tasks = [asyncio.create_task(engine.run(stop)), asyncio.create_task(read_alerts())]
    await asyncio.sleep(1.0)
    q: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_candle_producer, args=(url, n, q))
    proc.start()
    sent = await asyncio.to_thread(q.get)
    await asyncio.to_thread(proc.join)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await reader.aclose()
    await redis.aclose()
    lat = sorted((received[k] - sent[k]) * 1000 for k in received if k in sent)
    pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {"candles": n, "samples": len(lat), "p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3)}


def _throughput(bars: int) -> dict:
    rules = parse_rules("""
rules:
  - {name: r1, symbols: ['*'], frequency: every_time, condition: {op: above, right: 100}}
  - {name: r2, symbols: ['*'], condition: {left: close, op: crossing, right: {ema: 21}}}
  - {name: r3, symbols: ['*'], condition: {left: {ema: 9}, op: crosses_up, right: {sma: 50}}}
  - {name: r4, symbols: ['*'], condition: {left: {rsi: 14}, op: greater_than, right: 70}}
  - {name: r5, symbols: ['*'], condition: {op: exiting_channel, lower: {bbands: {output: lower}},
                                           upper: {bbands: {output: upper}}}}
  - {name: r6, symbols: ['*'], condition: {op: moving_up_pct, percent: 1, bars: 5}}
  - {name: r7, symbols: ['*'], condition: {op: volume_spike, factor: 3, period: 20}}
  - {name: r8, symbols: ['*'], condition: {left: {macd: histogram}, op: crosses_up, right: 0}}
  - {name: r9, symbols: ['*'], condition: {left: {cvd: {bars: 20}}, op: greater_than, right: 0}}
  - {name: r10, symbols: ['*'], condition: {any: [{left: {atr: 14}, op: above, right: 5},
                                                   {op: below, right: {vwap: 1d}}]}}
""", "bench")
    engine = AlertEngine(rules)
    rng = random.Random(7)
    syms = [f"B{i}/USDT" for i in range(500)]
    prices = {s: 100.0 for s in syms}
    candles = []
    for i in range(bars):
        for s in syms:
            p = prices[s] = prices[s] * (1 + rng.gauss(0, 0.004))
            o, c = Decimal(f"{p:.2f}"), Decimal(f"{p * (1 + rng.gauss(0, 0.002)):.2f}")
            v = Decimal(f"{rng.expovariate(1):.4f}")
            b = v * Decimal(rng.randint(0, 10)) / 10
            candles.append(Candle(exchange="x", symbol=s, timeframe="1m", ts=i * 60_000, open=o, high=max(o, c),
                                  low=min(o, c), close=c, volume=v, buy_volume=b, sell_volume=v - b,
                                  quote_volume=v * c, trades=10))
    fires = 0
    t = time.perf_counter()
    for c in candles:
        fires += len(engine.on_candle(c))
    dt = time.perf_counter() - t
    return {"symbols": 500, "rules": 10, "bars_per_symbol": bars, "candles_per_s": round(len(candles) / dt),
            "rule_evaluations_per_s": round(len(candles) * 10 / dt), "us_per_candle_10_rules": round(dt / len(candles)
                                                                                                    * 1e6, 1),
            "alerts": fires}


GOALS = {5000: {"p50_ms": 1.0, "p99_ms": 3.0}, 20000: {"p99_ms": 5.0}}  # issue 6's Performance section


def _print_latency(res: dict) -> None:
    if res.get("layout") == "floor":
        print(f"  floor (empty hop: producer → redis → reader, no services) {res.get('rate_trades_per_s')}/s: "
              f"p50 {res.get('p50_ms')} ms, p99 {res.get('p99_ms')} ms", flush=True)
        return
    goals = GOALS.get(res.get("rate_trades_per_s"), {})
    marks = [f"{k} {res[k]} (goal <= {g}: {'MET' if res[k] <= g else 'NOT MET'})" for k, g in goals.items()
             if k in res]
    print(f"  {res.get('layout')} {res.get('rate_trades_per_s')}/s: p50 {res.get('p50_ms')} ms, p99 "
          f"{res.get('p99_ms')} ms; candle p50 {res.get('trade_to_closed_candle_p50_ms')} ms; "
          f"cpu us/trade {res.get('cpu_us_per_trade')}  {'; '.join(marks)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layouts", default="floor,processes,one_loop",
                    help="floor (producer → reader, no services), processes (builder and engine in their own "
                         "processes) and/or one_loop (as `sentinel up`)")
    args = ap.parse_args()
    rates = [1000, 5000] if args.quick else [1000, 5000, 20000]
    out: dict = {"python": platform.python_version(), "machine": platform.machine(),
                 "load_avg_before": os.getloadavg(), "goals": {str(k): v for k, v in GOALS.items()},
                 "throughput": _throughput(60 if args.quick else 150), "latency": []}
    print(json.dumps(out["throughput"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persist=False)
        server.start()
        try:
            out["engine_only_candle_to_alert"] = asyncio.run(_engine_latency(server.url, 400, Path(tmp)))
            print(json.dumps(out["engine_only_candle_to_alert"]), flush=True)
            for rate in rates:
                for layout in args.layouts.split(","):
                    res = asyncio.run(_latency(server.url, rate, args.seconds, Path(tmp), layout,
                                               server.process.pid))
                    print(json.dumps(res), flush=True)
                    _print_latency(res)
                    out["latency"].append(res)
        finally:
            server.stop()
    out["load_avg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("bench_alerts_quick.json" if args.quick else "bench_alerts.json")).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
