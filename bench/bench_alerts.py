"""alert_engine benchmarks. Writes bench/results/bench_alerts.json.

(a) Rule evaluation throughput (``--only throughput``): the pure engine (``AlertEngine.on_candle``) on 500 symbols x
    10 rules, closed 1m candles of a seeded random walk, after 40 bars of warm-up; CPU time of this process
    (``time.process_time``: the machine is shared, wall time measures the neighbours). Two rule sets: "sample" (the
    sample rules' kinds: EMA/RSI/MACD/Bollinger crosses, a volume spike, % moves) and "levels" (the set this bench
    used before the engine was rebuilt, which fires on most candles: level rules, CVD, ATR/VWAP). Beside each, in the
    same run, the bare library: TA-Lib's streaming objects alone updating the same indicators on the same candles
    (the floats converted from the candles' Decimals included). Candles/s per run; median, min and max.

(b) Trade -> alert latency (``--only latency``): a producer process publishes trades (market_feed's stream format)
    at 5k and 20k trades/s over 10 symbols, exchange time = wall time; ``CandleBuilderApp`` builds 1s candles and
    ``AlertEngineApp`` runs a rule firing on every closed 1s bar, each in its own process (as ``sentinel
    candle-builder`` and ``sentinel alert-engine`` run them); a reader process (as the notifier is) takes the kernel's
    receive time of each alert on its socket. A 1s bar closes when the first trade of the next second arrives, so an
    alert's latency runs from the publish of that trade. "floor": the same producer and reader with no services, the
    reader reading the trades themselves (producer -> Redis -> reader): what the machine costs before any of our
    work. The first WARMUP_S seconds are not sampled. p50 / p99 per run; median, min and max over the runs.

Each latency run also records what the kernel's ``kdamond`` did meanwhile (``bench.common.KernelNoise``): on these VMs
it holds a CPU for 2-5 ms about twice a second, and a sample whose path crosses one of its runs is that much longer.

``--reference``: each pipeline and engine-hop run alternates with one whose services read and commit through
redis-py's asyncio client instead of ``shared.resp`` (the reference); CPU per trade and the ratios to it printed.

Usage: ``python bench/bench_alerts.py [--runs 3] [--seconds 30] [--rates 5000,20000] [--only throughput|latency]
[--reference]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from talib import stream as ta

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (KernelNoise, end_services, fmt_spread, paced_trades, pick, proc_cpu_s,  # noqa: E402
                          read_arrivals, serve, spread, start_services, write_result)  # noqa: E402
from services.alert_engine.core import AlertEngine  # noqa: E402
from shared import streams  # noqa: E402
from shared.bus import FIELD  # noqa: E402
from shared.candle_series import series_stream  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.partitions import DEFAULT_PARTITIONS, partition_of  # noqa: E402
from shared.rules import parse_rules  # noqa: E402
from shared.runtime import connect  # noqa: E402
from shared.schemas import Candle  # noqa: E402
from shared.alert_streams import alert_streams  # noqa: E402

WARMUP_S = 2  # seconds of trades at the start of each latency run that are not sampled
SYMBOLS = [f"S{i}/USDT" for i in range(10)]
#: every partition's alerts stream (the engine's services run with the default partitions)
ALERT_STREAMS = frozenset(alert_streams(DEFAULT_PARTITIONS))
GOALS = {5000: {"p99_ms": 5.0}, 20000: {"p99_ms": 8.0}}  # issue 20
EVAL_GOAL = 30_000  # candles/s, 500 symbols x 10 rules of the sample rules' kinds (issue 20)

# ---- (a) rule evaluation throughput ----------------------------------------------------------------------------------

RULE_SETS = {
    "sample": """
rules:
  - {name: ema_cross, symbols: ['*'], condition: {left: {ema: 9}, op: crosses_up, right: {ema: 21}}}
  - {name: close_ema, symbols: ['*'], condition: {left: close, op: crossing, right: {ema: 50}}}
  - {name: rsi_hot, symbols: ['*'], condition: {left: {rsi: 14}, op: crosses_up, right: 70}}
  - {name: rsi_cold, symbols: ['*'], condition: {left: {rsi: 14}, op: crosses_down, right: 30}}
  - {name: macd_turn, symbols: ['*'], condition: {left: {macd: histogram}, op: crosses_up, right: 0}}
  - {name: bb_exit, symbols: ['*'], condition: {op: exiting_channel, lower: {bbands: {output: lower}},
                                                upper: {bbands: {output: upper}}}}
  - {name: bb_mid, symbols: ['*'], condition: {left: close, op: crosses_down, right: {bbands: {output: middle}}}}
  - {name: spike, symbols: ['*'], cooldown: 5m, condition: {op: volume_spike, factor: 3, period: 20}}
  - {name: up_pct, symbols: ['*'], cooldown: 10m, condition: {op: moving_up_pct, percent: 1, bars: 3}}
  - {name: down_pct, symbols: ['*'], cooldown: 10m, condition: {op: moving_down_pct, percent: 1, bars: 3}}
""",
    "levels": """
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
""",
}
EVAL_SYMBOLS, EVAL_WARMUP_BARS = 500, 40


def _bare_streams(close: np.ndarray, volume: np.ndarray, high: np.ndarray, low: np.ndarray, which: str) -> list:
    """TA-Lib streams of the indicators rule set ``which`` reads, opened on a first stretch of history."""
    if which == "sample":
        return [ta.EMA(close, 9), ta.EMA(close, 21), ta.EMA(close, 50), ta.RSI(close, 14), ta.MACD(close, 12, 26, 9),
                ta.BBANDS(close, 20, 2.0, 2.0, 0), ta.SMA(volume, 20)]
    return [ta.EMA(close, 21), ta.EMA(close, 9), ta.SMA(close, 50), ta.RSI(close, 14),
            ta.BBANDS(close, 20, 2.0, 2.0, 0), ta.SMA(volume, 20), ta.MACD(close, 12, 26, 9),
            ta.ATR(high, low, close, 14)]


def _bare(candles: list[Candle], which: str) -> float:
    """CPU seconds of the bare library over the candles after the warm-up (CVD and VWAP, exact Decimal sums in the
    engine, have no TA-Lib counterpart and are left out)."""
    state: dict[str, list] = {}
    warm = EVAL_SYMBOLS * EVAL_WARMUP_BARS
    history = np.linspace(99.0, 101.0, 60)
    cpu = 0.0
    for n, c in enumerate(candles):
        if n == warm:
            cpu = time.process_time()
        s = state.get(c.symbol)
        if s is None:
            s = state[c.symbol] = _bare_streams(history, history / 100, history + 0.5, history - 0.5, which)
        x, v = float(c.close), float(c.volume)
        if which == "sample":
            s[0].update(x), s[1].update(x), s[2].update(x), s[3].update(x), s[4].update(x), s[5].update(x)
            s[6].update(v)
        else:
            h, lo = float(c.high), float(c.low)
            s[0].update(x), s[1].update(x), s[2].update(x), s[3].update(x), s[4].update(x), s[5].update(v)
            s[6].update(x), s[7].update(h, lo, x)
    return time.process_time() - cpu


def _engine(candles: list[Candle], which: str) -> tuple[float, int]:
    """CPU seconds of ``AlertEngine.on_candle`` over the candles after the warm-up, and the alerts it gave."""
    engine = AlertEngine(parse_rules(RULE_SETS[which], "bench"))
    warm = EVAL_SYMBOLS * EVAL_WARMUP_BARS
    fired, cpu = 0, 0.0
    for n, c in enumerate(candles):
        if n == warm:
            cpu = time.process_time()
        fired += len(engine.on_candle(c))
    return time.process_time() - cpu, fired


def eval_candles(bars: int, seed: int = 7) -> list[Candle]:
    """``bars`` closed 1m candles for each of 500 symbols: a random walk (0.4% per bar), in bar order."""
    rng = random.Random(seed)
    syms = [f"B{i}/USDT" for i in range(EVAL_SYMBOLS)]
    prices = dict.fromkeys(syms, 100.0)
    out = []
    for i in range(bars):
        for s in syms:
            p = prices[s] = prices[s] * (1 + rng.gauss(0, 0.004))
            o, c = Decimal(f"{p:.2f}"), Decimal(f"{p * (1 + rng.gauss(0, 0.002)):.2f}")
            v = Decimal(f"{rng.expovariate(1):.4f}")
            b = v * Decimal(rng.randint(0, 10)) / 10
            out.append(Candle(exchange="x", symbol=s, timeframe="1m", ts=i * 60_000, open=o, high=max(o, c),
                              low=min(o, c), close=c, volume=v, buy_volume=b, sell_volume=v - b, quote_volume=v * c,
                              trades=10))
    return out


def throughput(runs: int, bars: int) -> dict:
    candles = eval_candles(bars)
    measured = len(candles) - EVAL_SYMBOLS * EVAL_WARMUP_BARS
    out: dict = {"symbols": EVAL_SYMBOLS, "rules": 10, "bars_per_symbol": bars, "warmup_bars": EVAL_WARMUP_BARS,
                 "candles_measured": measured, "clock": "process CPU time"}
    for which in RULE_SETS:
        engine_rates, bare_rates, alerts = [], [], 0
        for _ in range(runs):  # alternating, so both see the same moments of the machine
            bare_rates.append(measured / _bare(candles, which))
            cpu, alerts = _engine(candles, which)
            engine_rates.append(measured / cpu)
        out[which] = {"engine_candles_per_s": _spread(engine_rates), "bare_talib_candles_per_s": _spread(bare_rates),
                      "alerts_per_candle": round(alerts / measured, 3),
                      "us_per_candle_median": round(1e6 / statistics.median(engine_rates), 1)}
        e, b = out[which]["engine_candles_per_s"], out[which]["bare_talib_candles_per_s"]
        met = "MET" if e["median"] >= EVAL_GOAL else "NOT MET"
        goal = f" (goal >= {EVAL_GOAL}: {met})" if which == "sample" else ""
        print(f"  {which:7} engine {e['median']:,} candles/s [{e['min']:,}-{e['max']:,}]{goal}; bare TA-Lib "
              f"{b['median']:,} [{b['min']:,}-{b['max']:,}]; {out[which]['alerts_per_candle']} alerts/candle",
              flush=True)
    return out


def _spread(values: list[float]) -> dict:
    """``spread`` in whole candles/s, with each run's figure."""
    return {**spread(values, None), "runs": [round(v) for v in values]}


# ---- (b) trade -> alert latency ------------------------------------------------------------------------------------

RULE_EVERY_BAR = ("rules:\n  - {name: every_bar, exchange: bench, symbols: ['*/USDT'], timeframe: 1s, "
                  "frequency: once_per_bar_close, condition: {op: above, right: 0}}\n")


def _producer(url: str, rate: int, seconds: float, out: Any) -> None:
    """Publishes ``rate`` trades/s in 1 ms ticks (one XADD per symbol per tick); reports when the first trade of each
    second of each symbol was sent, keyed "symbol|ms of its second"."""
    def next_price(_sym: str, rng: Any) -> Decimal:
        return Decimal(100 + rng.randint(0, 100)) / 10

    firsts, _, _ = paced_trades(url, "bench", SYMBOLS, rate, seconds, stream_of=_trades_stream, next_price=next_price)
    out.put(firsts)


def _trades_stream(symbol: str) -> str:
    """The partition trades stream of a bench pair (the default partition count)."""
    return streams.part_trades(partition_of("bench", symbol, DEFAULT_PARTITIONS))


def _reader(url: str, stop: Any, ready: Any, out: Any, floor: bool) -> None:
    """The alerts' consumer in its own process: when each alert (and each closed candle: the builder's share) reached
    it, keyed "symbol|bar end ms" (the second whose first trade closed the bar). ``floor``: reads the trades streams
    instead — when the first trade of each second reached it (no services ran)."""
    trades = {_trades_stream(s) for s in SYMBOLS}
    # from the start ("0-0": every run begins with FLUSHALL)
    last = dict.fromkeys(sorted(trades), "0-0") if floor else \
        {**dict.fromkeys(ALERT_STREAMS, "0-0"), **{series_stream("bench", s, "1s", DEFAULT_PARTITIONS): "0-0" for s in SYMBOLS}}
    ready.set()
    received, candles = read_arrivals(url, last, stop, floor=floor, alert_streams=frozenset(ALERT_STREAMS))
    out.put((received, candles))


def _service(url: str, rules: str, which: str, mark: Any, stop: Any, ready: Any, out: Any) -> None:
    """One service in its own process, run as ``sentinel <service>`` runs it, until ``stop``; reports its CPU
    seconds between ``mark`` (the producer starts) and ``stop``. ``BENCH_PYSPY=<file>`` records the engine,
    ``BENCH_PYSPY_BUILDER=<file>`` the builder."""
    engine = which == "alert_engine"
    out.put((which, serve(url, which, mark, stop, ready, rules=rules,
                          options={"intrabar": False} if engine else {"timeframes": ["1s"]},
                          spy_path=os.environ.get("BENCH_PYSPY" if engine else "BENCH_PYSPY_BUILDER"))))


def _candle_producer(url: str, seconds: float, out: Any) -> None:
    """Closed 1s candles of every symbol, all written in one MULTI every 20 ms (a bar boundary 50 times a second);
    reports when each was sent, keyed "symbol|bar end ms", from WARMUP_S seconds on."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(url)
    r.ping()
    sent: dict[str, float] = {}
    base = int(time.time()) * 1000
    p = Decimal(1)
    start = time.time()
    i = 0
    while time.time() < start + seconds:
        ts = base + i * 1000
        pipe = r.pipeline(transaction=True)
        for sym in SYMBOLS:
            c = Candle(exchange="bench", symbol=sym, timeframe="1s", ts=ts, open=p, high=p, low=p, close=p, volume=p,
                       buy_volume=p, sell_volume=Decimal(0))
            # the partition's stream, which the engine reads (its series stream serves warm-ups: not needed here)
            pipe.xadd(streams.part_candles(partition_of("bench", sym, DEFAULT_PARTITIONS)), {FIELD: c.encode()})
        at = time.time()
        pipe.execute()
        if at - start >= WARMUP_S:
            sent.update({f"{sym}|{ts + 1000}": at for sym in SYMBOLS})
        i += 1
        time.sleep(max(0.0, start + i * 0.02 - time.time()))
    out.put(sent)


async def latency(url: str, rate: int, seconds: float, tmp: Path, layout: str, redis_pid: int) -> dict:
    """``layout``: "processes" (trades -> candle_builder -> alert_engine -> reader), "floor" (trades -> reader, no
    services), "engine" (closed candles -> alert_engine -> reader: the engine's hop alone, 10 candles of one
    boundary written in one MULTI 50 times a second)."""
    floor, engine_only = layout == "floor", layout == "engine"
    redis = connect(url)
    await redis.flushall()
    for sym in SYMBOLS:
        await redis.sadd(streams.FEED_REGISTRY, streams.registry_member("bench", sym))
        if engine_only:
            await redis.sadd(streams.part_candle_registry(partition_of("bench", sym, DEFAULT_PARTITIONS)),
                             streams.registry_member("bench", sym, "1s"))
    rules = tmp / "rules.yaml"
    rules.write_text(RULE_EVERY_BAR)
    ctx = mp.get_context("spawn")
    stop, mark, cpu_q = ctx.Event(), ctx.Event(), ctx.Queue()
    kinds = {"floor": (), "engine": ("alert_engine",)}.get(layout, ("candle_builder", "alert_engine"))
    services = await start_services(ctx, _service, url, str(rules), kinds, mark, stop, cpu_q, 60)
    seen_q, reader_stop, reader_ready = ctx.Queue(), ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(url, reader_stop, reader_ready, seen_q, floor))
    reader.start()
    await asyncio.to_thread(reader_ready.wait, 30)
    await asyncio.sleep(1.5)  # discovery, groups, subscriptions
    sent_q = ctx.Queue()
    producer = ctx.Process(target=_candle_producer, args=(url, seconds, sent_q)) if engine_only else \
        ctx.Process(target=_producer, args=(url, rate, seconds, sent_q))
    redis_cpu = proc_cpu_s(redis_pid)
    noise = KernelNoise()
    mark.set()
    producer.start()
    sent = await asyncio.to_thread(sent_q.get)
    await asyncio.to_thread(producer.join)
    await asyncio.sleep(1.0)  # the last bars' alerts
    stop.set()
    redis_cpu = proc_cpu_s(redis_pid) - redis_cpu
    kernel = noise.since()
    reader_stop.set()
    received, candles = await asyncio.to_thread(seen_q.get)
    await asyncio.to_thread(reader.join)
    cpu = await end_services(services, cpu_q, 30)
    await redis.aclose()
    start = min((int(k.rsplit("|", 1)[1]) for k in sent), default=0)
    sampled = {k: v for k, v in sent.items() if int(k.rsplit("|", 1)[1]) >= start + WARMUP_S * 1000}
    lat = sorted((received[k] - sampled[k]) * 1000 for k in received if k in sampled)
    to_candle = sorted((candles[k] - sampled[k]) * 1000 for k in candles if k in sampled)
    out = {"layout": layout, "rate_trades_per_s": None if engine_only else rate, "samples": len(lat),
           "bars": len(sampled), "p50_ms": pick(lat, 0.5), "p99_ms": pick(lat, 0.99),
           "max_ms": round(lat[-1], 3) if lat else None, **kernel}
    if engine_only:
        return {**out, "cpu_s": {**cpu, "redis_server": redis_cpu}}
    trades = rate * seconds
    # the builder's share: the closing trade's publish -> its closed candle at the reader
    return {**out, "trade_to_candle_p50_ms": pick(to_candle, 0.5), "trade_to_candle_p99_ms": pick(to_candle, 0.99),
            "cpu_us_per_trade": {**{k: round(v * 1e6 / trades, 2) for k, v in cpu.items()},
                                 "redis_server": round(redis_cpu * 1e6 / trades, 2)}}


def latencies(rates: list[int], runs: int, seconds: float, reference: bool = False) -> list[dict]:
    """Per rate: ``runs`` rounds of the floor and the pipeline, alternating (both see the same moments of the
    machine); then the engine's hop alone (``layout`` "engine", no trades). ``reference``: each pipeline and engine
    run alternates with one whose services read and commit through redis-py's asyncio client
    (``bench.common.reference_client``): "reference" and "engine_reference"."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persist=False)
        server.start()

        def run(rate: int, layout: str) -> dict:
            os.environ["BENCH_REDIS_PY"] = "1" if layout.endswith("reference") else ""  # (inherited by services)
            name = {"reference": "processes", "engine_reference": "engine"}.get(layout, layout)
            res = asyncio.run(latency(server.url, rate, seconds, Path(tmp), name, server.process.pid))
            res = {**res, "layout": layout, "load_avg_1m": os.getloadavg()[0]}
            print("   ", json.dumps(res), flush=True)
            return res

        try:
            for rate in rates:
                results: dict[str, list[dict]] = {"floor": [], "processes": [], **({"reference": []} if reference
                                                                                     else {})}
                for _ in range(runs):
                    for layout in results:
                        results[layout].append(run(rate, layout))
                row: dict = {"rate_trades_per_s": rate, "runs": runs}
                for layout, rs in results.items():
                    row[layout] = {k: spread([r[k] for r in rs if r.get(k) is not None])
                                   for k in ("p50_ms", "p99_ms", "trade_to_candle_p50_ms", "trade_to_candle_p99_ms")}
                    row[layout]["runs_detail"] = rs
                goal = GOALS[rate]["p99_ms"] if rate in GOALS else None
                p = row["processes"]
                if goal is not None:
                    row["goal_p99_ms"] = goal
                    row["met"] = p["p99_ms"]["median"] is not None and p["p99_ms"]["median"] <= goal
                print(f"  {rate}/s trade->alert {fmt_latency(p)} (goal p99 <= {goal}: "
                      f"{'MET' if row.get('met') else 'NOT MET'}); of which trade->candle p50 "
                      f"{p['trade_to_candle_p50_ms']['median']}, p99 {p['trade_to_candle_p99_ms']['median']}; "
                      f"floor {fmt_latency(row['floor'])}", flush=True)
                if any("kdamond_runs" in r for r in results["processes"]):
                    print(f"    kernel: kdamond ran {[r['kdamond_runs'] for r in results['processes']]} times "
                          f"({[r['kdamond_cpu_ms'] for r in results['processes']]} ms) during the pipeline runs "
                          f"(bench.common.KernelNoise)", flush=True)
                for layout in ("processes", "reference"):
                    if layout in results:
                        row[layout]["cpu_us_per_trade"] = {
                            k: spread([r["cpu_us_per_trade"][k] for r in results[layout]], 2)
                            for k in ("candle_builder", "alert_engine", "redis_server")}
                if reference:
                    row["ratio_to_reference"] = _ratios(row["processes"], row["reference"])
                    print(f"    on redis-py (reference): {fmt_latency(row['reference'])}; CPU us/trade engine "
                          f"{fmt_spread(row['processes']['cpu_us_per_trade']['alert_engine'], '')} vs "
                          f"{fmt_spread(row['reference']['cpu_us_per_trade']['alert_engine'], '')}, builder "
                          f"{fmt_spread(row['processes']['cpu_us_per_trade']['candle_builder'], '')} vs "
                          f"{fmt_spread(row['reference']['cpu_us_per_trade']['candle_builder'], '')}; ratios "
                          f"{row['ratio_to_reference']}", flush=True)
                out.append(row)
            hops: dict[str, list[dict]] = {"engine": [], **({"engine_reference": []} if reference else {})}
            for _ in range(runs):
                for layout in hops:
                    hops[layout].append(run(0, layout))
            for layout, rs in hops.items():
                row = {"layout": layout, "runs": runs, **{k: spread([r[k] for r in rs if r.get(k) is not None])
                                                          for k in ("p50_ms", "p99_ms")},
                       "engine_cpu_s": spread([r["cpu_s"]["alert_engine"] for r in rs]), "runs_detail": rs}
                print(f"  the engine's hop alone (closed candle -> alert, 10 per boundary)"
                      f"{' on redis-py (reference)' if layout != 'engine' else ''}: {fmt_latency(row)}, engine CPU "
                      f"{fmt_spread(row['engine_cpu_s'], 's')}", flush=True)
                out.append(row)
            if reference:
                out.append({"layout": "engine_ratio_to_reference",
                            **_ratios({**out[-2], "cpu": out[-2]["engine_cpu_s"]},
                                      {**out[-1], "cpu": out[-1]["engine_cpu_s"]})})
                print(f"  engine hop / reference (medians): {out[-1]}", flush=True)
        finally:
            server.stop()
    return out


def _ratios(row: dict, ref: dict) -> dict:
    """``row``'s medians over ``ref``'s (below 1: better than the reference)."""
    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a is not None and b else None
    out = {k: ratio(row[k]["median"], ref[k]["median"]) for k in ("p50_ms", "p99_ms")}
    if "cpu" in row:
        out["engine_cpu"] = ratio(row["cpu"]["median"], ref["cpu"]["median"])
    if "cpu_us_per_trade" in row:
        out.update({f"cpu_{k}": ratio(row["cpu_us_per_trade"][k]["median"], ref["cpu_us_per_trade"][k]["median"])
                    for k in ("alert_engine", "candle_builder")})
    return out


def fmt_latency(row: dict) -> str:
    return f"p50 {fmt_spread(row['p50_ms'])}, p99 {fmt_spread(row['p99_ms'])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each measurement (medians, min and max reported)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of trades per latency run (30: ~270 bars, a p99 that is not the one worst bar)")
    ap.add_argument("--rates", default="5000,20000", help="trades/s of the latency runs")
    ap.add_argument("--bars", type=int, default=120, help="bars per symbol of the throughput runs (40 warm up)")
    ap.add_argument("--only", choices=("throughput", "latency"), help="one part only")
    ap.add_argument("--reference", action="store_true", help="latency: also the services on redis-py's asyncio "
                    "client instead of shared.resp (alternated with the others; ratios printed)")
    args = ap.parse_args()
    out: dict = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "load_avg_before": os.getloadavg(), "runs": args.runs}
    if args.only != "latency":
        print("rule evaluation, 500 symbols x 10 rules:", flush=True)
        out["throughput"] = throughput(args.runs, args.bars)
    if args.only != "throughput":
        print("trade -> alert, candle_builder and alert_engine in their own processes:", flush=True)
        out["latency"] = latencies([int(r) for r in args.rates.split(",") if r], args.runs, args.seconds,
                                   args.reference)
    out["load_avg_after"] = os.getloadavg()
    name = f"bench_alerts_{args.only}.json" if args.only else "bench_alerts.json"
    print(f"written: {write_result(name, out)}")


if __name__ == "__main__":
    main()
