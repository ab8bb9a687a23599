"""What a whole market costs (issue 21, Evidence): 1 / 50 / 500 / 5,000 symbols, the same total number of generated
trades, the same exchange time span.

Two references for each symbol count N, both with the same trades (``--trades``):
  same span     one symbol over the same span (``--span-min``): the first mode, issue 21's ratio. The N-symbol input
                spreads the trades over N pairs, so each pair is N times quieter and makes N times more candles per
                trade (flat candles for quiet minutes included): this ratio is mostly the cost per candle.
  same density  one symbol over N times the span: the same trades per pair per minute as each of the N pairs, so the
                same candles per trade; what differs is only that N pairs are live at once (their state, partitions,
                watermarks, streams, output files): what having many pairs costs.
Every run reports its candles per trade (closed candles written / trades) and CPU seconds (the command's whole process
tree, from ``getrusage``; and by process: sentinel's main process, its feed process, redis-server, sampled from /proc),
with the load average before it.

Measured per symbol count (``--repeat`` runs, medians with min-max):
  backtest    ``sentinel backtest`` of one CSV with a ``symbol`` column (the sample rules, ``*/USDT`` rules included,
              apply to every symbol): wall seconds, trades/s (and the pipeline's own figure from its summary line),
              the ratio to one symbol's trades/s (issue 21's target: 500 symbols >= 80 %), peak RSS of the command's
              processes (the sentinel process(es) and its embedded redis-server apart), and RSS per symbol above the
              one-symbol run;
  redis       candle_builder (in this process, default settings) on a private redis-server fed the same trades on
              the partitions' trades streams: MEMORY USAGE of every candles stream (bytes per series, per entry) and
              redis-server's used_memory per series;
and once: the idle read cost at 10,000 configured quiet pairs (``bench_idle.builder_idle``: Redis time per XREAD and
redis-server CPU per second), beside 10 pairs.

Writes bench/results/bench_scale.json. Usage: ``python bench/bench_scale.py [--trades 50000] [--symbols 1 50 500 5000]
[--repeat 1] [--idle-seconds 10] [--mode both|span|density]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_idle import builder_idle  # noqa: E402

from bench.common import write_result  # noqa: E402

from shared import streams  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.partitions import DEFAULT_PARTITIONS  # noqa: E402
from shared.runtime import connect  # noqa: E402
from shared.schemas import Trade  # noqa: E402
from tests.support.candles import publish, run_until_caught_up, settings_for  # noqa: E402
from tests.support.chaos.layout import Pair  # noqa: E402
from tests.support.scale_out.progress import series_streams  # noqa: E402

RULES = ROOT / "services" / "alert_engine" / "sample_rules.yaml"
T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC
TIMEFRAMES = ["1m", "5m", "15m", "1h"]  # candle_builder's defaults
EXCHANGE = "binance"


def symbol(k: int) -> str:
    return f"S{k:04d}/USDT"


def rows(total: int, symbols: int, span_ms: int) -> list[tuple[str, int, int, str, str, bool]]:
    """``total`` trades dealt round-robin over ``symbols`` symbols, evenly over ``span_ms``: (symbol, id, ts, price,
    amount, taker buy). Prices walk per symbol (deterministic)."""
    price = [6_183_763 + 1000 * k for k in range(symbols)]
    out = []
    for i in range(total):
        k = i % symbols
        price[k] += (i * 7919 + k) % 11 - 5
        out.append((symbol(k), i // symbols + 1, T0 + i * span_ms // total, f"{price[k] // 100}.{price[k] % 100:02d}",
                    f"0.{(i * 104729 + k) % 99999 + 1:05d}", (i + k) % 3 == 0))
    return out


def write_csv(path: Path, data: list[tuple]) -> Path:
    with open(path, "w") as fh:
        fh.write("timestamp,price,amount,side,id,symbol\n")
        for sym, tid, ts, price, amount, buy in data:
            fh.write(f"{ts},{price},{amount},{'buy' if buy else 'sell'},{tid},{sym}\n")
    return path


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _rss_kb(pid: int) -> tuple[str, int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            text = fh.read()
    except OSError:
        return "", 0
    name = re.search(r"^Name:\s*(\S+)", text, re.M)
    rss = re.search(r"^VmRSS:\s*(\d+)", text, re.M)
    return (name[1] if name else ""), (int(rss[1]) if rss else 0)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def candles_written(out: Path) -> int:
    """Closed candles in the run's candle CSVs (one header line each)."""
    n = 0
    for path in out.glob("candles_*.csv"):
        with open(path, "rb") as fh:
            n += sum(1 for _ in fh) - 1
    return n


def run_backtest(csv: Path, out: Path, timeout: float) -> dict[str, Any]:
    """The command as a user runs it; wall seconds, trades/s, peak RSS of its processes (sampled every 50 ms), CPU
    seconds of the whole tree (``getrusage`` of the reaped children) and by process (sampled: the last reading of
    each), candles per trade."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_") and k != "REDIS_URL"}
    env["COLUMNS"] = "200"
    out.mkdir(parents=True, exist_ok=True)
    log_out, log_err = open(out / "stdout.txt", "w+"), open(out / "stderr.txt", "w+")  # not pipes: never full
    load = os.getloadavg()
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sentinel.cli", "backtest", str(csv), "--rules", str(RULES),
                             "--out", str(out), "--exchange", EXCHANGE], stdout=log_out, stderr=log_err, text=True,
                            env=env, cwd=ROOT)
    peak_py = peak_redis = 0
    cpu_seen: dict[int, tuple[str, float]] = {}  # pid -> (role, its CPU seconds when last seen)
    while proc.poll() is None:
        if time.perf_counter() - start > timeout:
            proc.kill()
            proc.wait()
            return {"timeout_s": timeout}
        py = redis = 0
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            name, kb = _rss_kb(pid)
            if name == "redis-server":
                redis += kb
            else:
                py += kb
            role = "redis_server" if name == "redis-server" else "main" if pid == proc.pid else "feed"
            cpu = _cpu_s(pid)
            if cpu:
                cpu_seen[pid] = (role, cpu)
            todo += _children(pid)
        peak_py, peak_redis = max(peak_py, py), max(peak_redis, redis)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    cpu_total = _children_cpu_s() - cpu_before
    by_role: dict[str, float] = {}
    for role, cpu in cpu_seen.values():
        by_role[role] = round(by_role.get(role, 0.0) + cpu, 2)
    log_out.seek(0)
    log_err.seek(0)
    stdout, stderr = log_out.read(), log_err.read()
    log_out.close()
    log_err.close()
    if proc.returncode != 0:
        raise RuntimeError(f"sentinel backtest failed: {stderr[-2000:]}")
    m = re.search(r"([\d,]+) trades of .* in ([\d.]+)s", " ".join(stdout.split()))
    trades = int(m[1].replace(",", "")) if m else 0
    candles = candles_written(out)
    return {"seconds": round(wall, 2), "trades": trades, "pipeline_seconds": float(m[2]) if m else None,
            "trades_per_s": round(trades / wall, 1) if trades else None,
            "pipeline_trades_per_s": round(trades / float(m[2]), 1) if m and float(m[2]) else None,
            "cpu_s": round(cpu_total, 2), "cpu_s_by_process": by_role,
            "cpu_trades_per_s": round(trades / cpu_total, 1) if trades and cpu_total else None,
            "candles": candles, "candles_per_trade": round(candles / trades, 4) if trades else None,
            "load_avg_before": [round(x, 2) for x in load],
            "peak_rss_mb": round(peak_py / 1024, 1), "peak_redis_rss_mb": round(peak_redis / 1024, 1)}


async def redis_memory(data: list[tuple], symbols: int, tmp: Path) -> dict[str, Any]:
    """candle_builder on the trades, then MEMORY USAGE of every candles stream."""
    with EmbeddedRedis(tmp / "redis-mem", persist=False) as server:
        redis = connect(server.url)
        try:
            await redis.flushall()
            base = (await redis.info("memory"))["used_memory"]
            by_symbol: dict[str, list[Trade]] = {}
            for sym, tid, ts, price, amount, buy in data:
                by_symbol.setdefault(sym, []).append(Trade(tid, ts, Decimal(price), Decimal(amount), buy))
            for sym, trades in by_symbol.items():
                await publish(redis, EXCHANGE, sym, trades, per_entry=100)
            before_build = (await redis.info("memory"))["used_memory"]
            t0 = time.perf_counter()
            await run_until_caught_up(redis, settings_for(server.url), timeout=1800)
            build_s = time.perf_counter() - t0
            after = (await redis.info("memory"))["used_memory"]
            sizes, entries = [], []
            for sym in by_symbol:
                for tf in TIMEFRAMES:
                    for name in await series_streams(redis, Pair(EXCHANGE, sym), tf, DEFAULT_PARTITIONS):
                        sizes.append(await redis.memory_usage(name, samples=0) or 0)
                        entries.append(await redis.xlen(name))
            part = [await redis.memory_usage(streams.part_candles(p), samples=0) or 0
                    for p in range(DEFAULT_PARTITIONS) if await redis.exists(streams.part_candles(p))]
            series = len(sizes)
            return {"series": series, "candles": sum(entries), "builder_s": round(build_s, 2),
                    "bytes_per_series_mean": round(sum(sizes) / series) if series else None,
                    "bytes_per_series_max": max(sizes, default=None),
                    "bytes_per_candle_entry": round(sum(sizes) / sum(entries), 1) if sum(entries) else None,
                    "part_candles_bytes": sum(part),
                    "used_memory_by_candles_per_series": round((after - before_build) / series) if series else None,
                    "used_memory_trades_mb": round((before_build - base) / 2**20, 2)}
        finally:
            await redis.aclose()


def spread(values: list[float], digits: int = 2) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


async def idle(seconds: float, tmp: Path) -> list[dict]:
    with EmbeddedRedis(tmp / "redis-idle", persist=False) as server:
        assert server.process is not None
        return [await builder_idle(server.url, server.process.pid, n, seconds) for n in (10, 10_000)]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians with min-max of the runs that finished."""
    done = [r for r in runs if "seconds" in r]
    out: dict[str, Any] = {}
    if not done:
        return out
    for key in ("trades_per_s", "pipeline_trades_per_s", "cpu_trades_per_s", "cpu_s", "candles_per_trade",
                "peak_rss_mb", "peak_redis_rss_mb"):
        if all(r.get(key) is not None for r in done):
            out[key] = spread([r[key] for r in done], 4 if key == "candles_per_trade" else 2)
    roles = sorted({role for r in done for role in r.get("cpu_s_by_process", {})})
    out["cpu_s_by_process"] = {role: spread([r["cpu_s_by_process"].get(role, 0.0) for r in done]) for role in roles}
    return out


def _ratio(row: dict[str, Any], ref: dict[str, Any], key: str) -> float | None:
    if key in row and key in ref and ref[key]["median"]:
        return round(row[key]["median"] / ref[key]["median"], 3)
    return None


def _runs(csv: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    try:
        return run_backtest(csv, out, args.timeout)
    except RuntimeError as exc:  # recorded: 5,000 symbols ended in "Redis: Too many connections" once
        return {"error": str(exc)[-600:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trades", type=int, default=50_000)
    ap.add_argument("--symbols", type=int, nargs="+", default=[1, 50, 500, 5000])
    ap.add_argument("--span-min", type=int, default=72, help="exchange minutes the trades span")
    ap.add_argument("--mode", choices=("both", "span", "density"), default="both",
                    help="the references: one symbol over the same span, over N times the span (same density), both")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds one backtest may take")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="0: skip the idle read measurement")
    ap.add_argument("--no-redis-memory", action="store_true")
    ap.add_argument("--no-backtest", action="store_true", help="only the Redis memory and idle measurements")
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                           "load_avg_before": os.getloadavg()},
                               "trades": args.trades, "span_min": args.span_min, "mode": args.mode, "runs": []}
    density = args.mode in ("both", "density")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        for n in args.symbols:
            data = rows(args.trades, n, args.span_min * 60_000)
            csv = write_csv(tmp / f"trades-{n}.csv", data)
            ref_csv = write_csv(tmp / f"trades-1x{n}.csv", rows(args.trades, 1, n * args.span_min * 60_000)) \
                if density and n > 1 and not args.no_backtest else None
            runs, ref_runs = [], []
            for r in range(0 if args.no_backtest else args.repeat):  # (alternating: both see the same moments)
                runs.append(_runs(csv, tmp / f"out-{n}-{r}", args))
                if ref_csv is not None:
                    ref_runs.append(_runs(ref_csv, tmp / f"out-1x{n}-{r}", args))
            row: dict[str, Any] = {"symbols": n, "runs": runs, **summarize(runs)}
            if ref_csv is not None:
                ref = {"symbols": 1, "span_min": n * args.span_min, "runs": ref_runs, **summarize(ref_runs)}
                row["same_density_reference"] = ref
                row["ratio_same_density"] = _ratio(row, ref, "trades_per_s")
                row["cpu_ratio_same_density"] = _ratio(row, ref, "cpu_trades_per_s")
            if not args.no_redis_memory:
                row["redis"] = asyncio.run(redis_memory(data, n, tmp))
            results["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
        one = next((r for r in results["runs"] if r["symbols"] == 1 and "trades_per_s" in r), None)
        for row in results["runs"]:
            if one and "trades_per_s" in row and args.mode != "density":
                row["ratio_to_one_symbol"] = _ratio(row, one, "trades_per_s")
                row["pipeline_ratio_to_one_symbol"] = _ratio(row, one, "pipeline_trades_per_s")
                row["cpu_ratio_to_one_symbol"] = _ratio(row, one, "cpu_trades_per_s")
                if row["symbols"] > 1:
                    row["rss_mb_per_symbol_above_one"] = round(
                        (row["peak_rss_mb"]["median"] - one["peak_rss_mb"]["median"]) / (row["symbols"] - 1), 4)
        if args.idle_seconds:
            results["idle"] = asyncio.run(idle(args.idle_seconds, tmp))
    results["machine"]["load_avg_after"] = os.getloadavg()
    path = write_result("bench_scale.json", results)
    for row in results["runs"]:
        med = {k: (row.get(k) or {}).get("median") for k in ("trades_per_s", "cpu_trades_per_s", "candles_per_trade")}
        print(f"{row['symbols']:>5} symbols: {row.get('trades_per_s')} trades/s, {med['cpu_trades_per_s']} per CPU s, "
              f"{med['candles_per_trade']} candles/trade; same span: x{row.get('ratio_to_one_symbol')} of one symbol "
              f"(CPU x{row.get('cpu_ratio_to_one_symbol')})", end="")
        ref = row.get("same_density_reference")
        if ref:
            print(f"; same density (one symbol over {ref['span_min']} min: {(ref.get('trades_per_s') or {}).get('median')}"
                  f" trades/s, {(ref.get('candles_per_trade') or {}).get('median')} candles/trade): "
                  f"x{row.get('ratio_same_density')} (CPU x{row.get('cpu_ratio_same_density')})", end="")
        print(f"; peak RSS {row.get('peak_rss_mb')} MB (+{row.get('rss_mb_per_symbol_above_one')} MB per symbol), "
              f"redis {row.get('redis', {}).get('bytes_per_series_mean')} B per series")
    for r in results.get("idle", []):
        print(f"idle, {r['pairs']:>6} quiet pairs: {r['xread_usec_per_call']} us per XREAD in Redis, redis-server "
              f"CPU {r['redis_cpu_ms_per_s']} ms/s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
