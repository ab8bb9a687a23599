"""issue 21's live figure: a whole market live. 1,000 symbols x 4 timeframes (1s 1m 3m 5m) x 10 rules at 10,000
trades/s; trade -> alert p99 <= 10 ms on this box.

bench_alerts' latency harness at market size (``bench.common``: the probe taking the kernel's receive time, CPU of
each process): a producer process publishes trades (market_feed's stream format, one XADD per symbol per 1 ms tick, to
the partition's trades stream; one pipeline every ``--tick-ms``) round-robin over the symbols at ``--rate`` trades/s, exchange time = wall time;
``CandleBuilderApp`` (the 4 timeframes, 1s the base) and ``AlertEngineApp`` (the 10 rules below on every symbol) run
each in its own process, as ``sentinel candle-builder`` and ``sentinel alert-engine`` run them; a reader process
reads every partition's alerts and closed-candles streams (32 streams whatever the symbol count) and takes the
kernel's receive time of each.

A 1s bar closes when the first trade of the next second of its symbol arrives (``flat_candles`` off: every symbol
trades ~10 times a second), so the latency of rule ``every_bar`` (fires on every closed 1s bar: 1,000 alerts/s) runs
from the publish of that trade to the alert at the reader. The other 9 rules (EMA/RSI/MACD crosses, Bollinger exit,
volume spike, % moves on 1s, 1m, 3m, 5m) are evaluated on every bar of their timeframe and fire what they fire (they
are the load). "floor": the same producer and reader with no services, the reader reading the trades themselves.
The first WARMUP_S seconds are not sampled. p50 / p99 per run; median, min and max over runs; CPU seconds per process
per trade; load average before each run. ``BENCH_PYSPY_DIR=<dir>``: py-spy records each service (speedscope JSON).

Writes bench/results/bench_market_live.json. Usage: ``python bench/bench_market_live.py [--runs 3] [--seconds 10]
[--symbols 1000] [--rate 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (end_services, fmt_spread, paced_trades, pick, proc_cpu_s, read_arrivals, serve, spread,  # noqa: E402
                          start_services, write_result)  # noqa: E402
from shared import streams  # noqa: E402
from shared.alert_streams import alert_streams  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.partitions import DEFAULT_PARTITIONS, partition_of  # noqa: E402
from shared.runtime import connect  # noqa: E402

WARMUP_S = 3  # seconds of trades at the start of each run that are not sampled
GOAL_P99_MS = 10.0
EXCHANGE = "bench"
TIMEFRAMES = ["1s", "1m", "3m", "5m"]
PROBE_RULE = "every_bar"
RULES = f"""
rules:
  - {{name: {PROBE_RULE}, symbols: ['*/USDT'], timeframe: 1s, condition: {{op: above, right: 0}}}}
  - {{name: ema_cross, symbols: ['*/USDT'], timeframe: 1s, condition: {{left: {{ema: 9}}, op: crosses_up, right: {{ema: 21}}}}}}
  - {{name: rsi_hot, symbols: ['*/USDT'], timeframe: 1s, condition: {{left: {{rsi: 14}}, op: crosses_up, right: 70}}}}
  - {{name: macd_turn, symbols: ['*/USDT'], timeframe: 1m, condition: {{left: {{macd: histogram}}, op: crosses_up, right: 0}}}}
  - {{name: bb_exit, symbols: ['*/USDT'], timeframe: 1m, condition: {{op: exiting_channel, lower: {{bbands: {{output: lower}}}},
                                                          upper: {{bbands: {{output: upper}}}}}}}}
  - {{name: spike, symbols: ['*/USDT'], timeframe: 1s, cooldown: 1m, condition: {{op: volume_spike, factor: 3, period: 20}}}}
  - {{name: up_pct, symbols: ['*/USDT'], timeframe: 3m, cooldown: 10m, condition: {{op: moving_up_pct, percent: 1, bars: 3}}}}
  - {{name: close_ema, symbols: ['*/USDT'], timeframe: 3m, condition: {{left: close, op: crossing, right: {{ema: 50}}}}}}
  - {{name: down_pct, symbols: ['*/USDT'], timeframe: 5m, cooldown: 10m, condition: {{op: moving_down_pct, percent: 1, bars: 3}}}}
  - {{name: rsi_cold, symbols: ['*/USDT'], timeframe: 5m, condition: {{left: {{rsi: 14}}, op: crosses_down, right: 30}}}}
"""
ALERT_STREAMS = sorted(alert_streams(DEFAULT_PARTITIONS))
CANDLE_STREAMS = [streams.part_candles(p) for p in range(DEFAULT_PARTITIONS)]


def symbols(n: int) -> list[str]:
    return [f"S{i:04d}/USDT" for i in range(n)]


def _trades_stream(symbol: str) -> str:
    return streams.part_trades(partition_of(EXCHANGE, symbol, DEFAULT_PARTITIONS))


def _producer(url: str, syms: list[str], rate: int, seconds: float, tick_ms: int, out: Any) -> None:
    """``rate`` trades/s in ``tick_ms`` ticks, round-robin over ``syms`` (one XADD per symbol per tick, pipelined);
    a random walk per symbol. Reports when the first trade of each second of each symbol was sent ("symbol|ms of its
    second"), the trades published and how many ticks ran late (more than 5 ms behind their schedule: the producer
    could not keep the rate)."""
    price = {s: 10_000 + 37 * i for i, s in enumerate(syms)}  # in 0.01

    def next_price(sym: str, rng: Any) -> Decimal:  # a random walk per symbol
        p = price[sym] = max(100, price[sym] + rng.randint(-3, 3))
        return Decimal(p).scaleb(-2)

    out.put(paced_trades(url, EXCHANGE, syms, rate, seconds, tick_ms=tick_ms, stream_of=_trades_stream,
                         next_price=next_price, maxlen=200_000))


def _reader(url: str, syms: list[str], stop: Any, ready: Any, out: Any, floor: bool) -> None:
    """When each ``every_bar`` alert and each closed 1s candle reached this process ("symbol|bar end ms"); ``floor``:
    when the first trade of each second of each symbol did (reading the trades streams, no services)."""
    names = sorted({_trades_stream(s) for s in syms}) if floor else ALERT_STREAMS + CANDLE_STREAMS
    last = dict.fromkeys(names, "0-0")  # (every run begins with FLUSHALL)
    ready.set()
    received, candles = read_arrivals(url, last, stop, floor=floor, alert_streams=frozenset(ALERT_STREAMS),
                                      count=2000, rule=PROBE_RULE)
    out.put((received, candles))


def _service(url: str, rules: str, which: str, mark: Any, stop: Any, ready: Any, out: Any) -> None:
    """One service in its own process, as ``sentinel <service>`` runs it; its CPU seconds between ``mark`` and
    ``stop``. ``BENCH_PYSPY_DIR``: py-spy records each service there."""
    spy_dir = os.environ.get("BENCH_PYSPY_DIR")
    out.put((which, serve(url, which, mark, stop, ready, rules=rules,
                          options={"intrabar": False} if which == "alert_engine" else {"timeframes": TIMEFRAMES},
                          spy_path=f"{spy_dir}/{which}.json" if spy_dir else None)))


async def run_once(url: str, redis_pid: int, syms: list[str], rate: int, seconds: float, tick_ms: int, tmp: Path,
                   floor: bool) -> dict[str, Any]:
    redis = connect(url)
    await redis.flushall()
    await redis.sadd(streams.FEED_REGISTRY, *[streams.registry_member(EXCHANGE, s) for s in syms])
    await redis.aclose()
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    ctx = mp.get_context("spawn")
    stop, mark, cpu_q = ctx.Event(), ctx.Event(), ctx.Queue()
    services = await start_services(ctx, _service, url, str(rules), () if floor else ("candle_builder", "alert_engine"), mark, stop, cpu_q, 120)
    seen_q, reader_stop, reader_ready = ctx.Queue(), ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(url, syms, reader_stop, reader_ready, seen_q, floor))
    reader.start()
    await asyncio.to_thread(reader_ready.wait, 30)
    await asyncio.sleep(2.0)  # discovery, subscriptions
    load = os.getloadavg()
    sent_q = ctx.Queue()
    producer = ctx.Process(target=_producer, args=(url, syms, rate, seconds, tick_ms, sent_q))
    redis_cpu = proc_cpu_s(redis_pid)
    wall = time.perf_counter()
    mark.set()
    producer.start()
    sent, published, late_ticks = await asyncio.to_thread(sent_q.get)
    await asyncio.to_thread(producer.join)
    await asyncio.sleep(1.5)  # the last bars' alerts
    stop.set()
    wall = time.perf_counter() - wall
    redis_cpu = proc_cpu_s(redis_pid) - redis_cpu
    reader_stop.set()
    received, candles = await asyncio.to_thread(seen_q.get)
    await asyncio.to_thread(reader.join)
    cpu = await end_services(services, cpu_q, 60)
    start = min((int(k.rsplit("|", 1)[1]) for k in sent), default=0)
    # bars from WARMUP_S on, and not the last second's (its closing trade may never have come)
    newest = max((int(k.rsplit("|", 1)[1]) for k in sent), default=0)
    sampled = {k: v for k, v in sent.items() if start + WARMUP_S * 1000 <= int(k.rsplit("|", 1)[1]) < newest}
    lat = sorted((received[k] - sampled[k]) * 1000 for k in received if k in sampled)
    to_candle = sorted((candles[k] - sampled[k]) * 1000 for k in candles if k in sampled)
    cpu["redis_server"] = redis_cpu
    return {"layout": "floor" if floor else "processes", "symbols": len(syms), "rate_trades_per_s": rate,
            "published_trades": published, "producer_late_ticks": late_ticks, "bars": len(sampled),
            "samples": len(lat), "missing": len(sampled) - len(lat), "p50_ms": pick(lat, 0.5),
            "p99_ms": pick(lat, 0.99), "max_ms": round(lat[-1], 3) if lat else None,
            "trade_to_candle_p50_ms": pick(to_candle, 0.5), "trade_to_candle_p99_ms": pick(to_candle, 0.99),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_share_of_a_core": {k: round(v / wall, 3) for k, v in cpu.items()},
            "cpu_us_per_trade": {k: round(v * 1e6 / published, 2) for k, v in cpu.items()} if published else {},
            "load_avg_before": [round(x, 2) for x in load]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of trades per run")
    ap.add_argument("--symbols", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=10_000, help="trades/s over all symbols")
    ap.add_argument("--tick-ms", type=int, default=2, help="the producer publishes every tick (one pipeline)")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor runs (no services)")
    args = ap.parse_args()
    syms = symbols(args.symbols)
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                           "load_avg_before": os.getloadavg(), "symbols": args.symbols, "timeframes": TIMEFRAMES,
                           "rules": 10, "rate_trades_per_s": args.rate, "tick_ms": args.tick_ms, "seconds": args.seconds, "runs": args.runs,
                           "goal_p99_ms": GOAL_P99_MS}
    results: dict[str, list[dict[str, Any]]] = {"processes": []} if args.no_floor else {"floor": [], "processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persist=False)
        server.start()
        assert server.process is not None
        try:
            for _ in range(args.runs):  # alternating: floor and pipeline see the same moments of the machine
                for layout in results:
                    res = asyncio.run(run_once(server.url, server.process.pid, syms, args.rate, args.seconds, args.tick_ms,
                                               Path(tmp), layout == "floor"))
                    print("   ", json.dumps(res), flush=True)
                    results[layout].append(res)
        finally:
            server.stop()
    for layout, rs in results.items():
        row: dict[str, Any] = {k: spread([r[k] for r in rs if r.get(k) is not None])
                               for k in ("p50_ms", "p99_ms", "max_ms", "trade_to_candle_p50_ms",
                                         "trade_to_candle_p99_ms")}
        row["runs_detail"] = rs
        out[layout] = row
    p = out["processes"]
    out["met"] = p["p99_ms"]["median"] is not None and p["p99_ms"]["median"] <= GOAL_P99_MS
    out["load_avg_after"] = os.getloadavg()
    print(f"{args.symbols} symbols x {len(TIMEFRAMES)} timeframes x 10 rules at {args.rate} trades/s: trade->alert "
          f"p50 {fmt_spread(p['p50_ms'])}, p99 {fmt_spread(p['p99_ms'])} (goal p99 <= {GOAL_P99_MS} ms: "
          f"{'MET' if out['met'] else 'NOT MET'}); trade->candle p99 {fmt_spread(p['trade_to_candle_p99_ms'])}"
          + (f"; floor p99 {fmt_spread(out['floor']['p99_ms'])}" if "floor" in out else ""))
    print(f"written: {write_result('bench_market_live.json', out)}")


if __name__ == "__main__":
    main()
