"""``sentinel backtest`` speed beside its references, side by side in one run on the same generated trades (issue 22).

Inputs (generated, deterministic, Binance's public-data trades layout with no header, as data.binance.vision serves):
  one:  ``--trades`` trades (default 1,000,000) of one symbol over one day;
  many: ``--many-trades`` trades (default 50,000) over ``--symbols`` symbols (default 500), one file each, interleaved
        over the time that many trades of the one-symbol file span (the same activity, spread over many symbols).
Measured, each ``--repeat`` times (default 3) in turns, medians with min-max:
  sentinel   ``python -m sentinel.cli backtest`` with the sample rules, as a user runs it (CSV parsing, the services
             on an embedded Redis, candles, alerts, report.html): wall time of the command, and the closed
             candles it wrote per trade (the 500-symbol input makes ~0.7, the one-symbol one ~0.002: per-candle
             work, not per-trade work, sets the many-symbol rate);
  bus        the bare bus baseline: a producer process parsing the CSV (``shared.recordings``), packing 200 trades per
             entry (msgpack) and publishing with pipelined XADD (``Bus.publish_many``), a consumer process reading with
             XREADGROUP, decoding and XACKing every entry, on a fresh embedded redis-server;
  bus_columnar  the same, its producer parsing with the columnar reader sentinel's replay uses
             (``shared.trade_blocks``: prices as text, 200-trade runs of its blocks packed as columns);
  pandas     ``read_csv`` and a one-shot resample to 1m/5m/15m/1h OHLCV (float, no rules);
  nautilus   NautilusTrader's BacktestEngine building 1m/5m/15m/1h bars from the same trades (CSV loading included), in
             its own venv (``bench/.venv-nautilus``, created with the version pinned in pyproject's ``nautilus`` extra);
             skipped with a note when it cannot be installed.
Rates are trades / wall seconds with each contender's start-up counted (sentinel's command, nautilus' process, the
bus' redis-server and consumer start); beside them, start-up left out (``inner_trades_per_s``): sentinel's own
figure from its summary line (its Redis up to the last alert), the bus from its producer's start, nautilus' CSV
loading and engine. Each run also records the CPU seconds of every process it made (sampled from /proc every 50 ms:
sentinel's main process (candle_builder + alert_engine), its feed process and redis-server; the bus' producer,
consumer and redis-server) and the load average: on a shared box the CPU of the busiest process says more than the wall time.
Writes bench/results/bench_backtest.json. Usage:
``python bench/bench_backtest.py [--trades N] [--repeat R] [--quick] [--skip-many] [--no-nautilus]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402

RULES = ROOT / "services" / "alert_engine" / "sample_rules.yaml"
NAUTILUS_VENV = ROOT / "bench" / ".venv-nautilus"
NAUTILUS_SCRIPT = ROOT / "bench" / "nautilus_bars.py"
T0 = 1_723_075_200_000  # 2024-08-08 00:00 UTC
DAY_MS = 86_400_000


# ---- inputs ---------------------------------------------------------------------------------------------------------


def _rows(n: int, first_id: int, t0: int, step_ms: float, seed: int) -> list[str]:
    price = 6_183_763 + seed * 1000  # cents
    out = []
    for i in range(n):
        price += (i * 7919 + seed) % 11 - 5
        qty = f"0.{(i * 104729 + seed) % 99999 + 1:05d}"
        p = f"{price // 100}.{price % 100:02d}"
        out.append(f"{first_id + i},{p},{qty},0,{t0 + int(i * step_ms)},{'true' if (i + seed) % 3 else 'false'},true\n")
    return out


def generate_one(folder: Path, n: int) -> Path:
    path = folder / "BTCUSDT-trades-2024-08-08.csv"
    if not path.exists():
        path.write_text("".join(_rows(n, 1, T0, (DAY_MS - 1) / n, 0)))
    return path


def generate_many(folder: Path, n: int, symbols: int, one: int) -> Path:
    """``symbols`` files of ``n / symbols`` trades each, interleaved in time over the span ``n`` trades of the
    one-symbol file cover (the same market activity per second, spread over many symbols)."""
    folder.mkdir(parents=True, exist_ok=True)
    each = n // symbols
    span = DAY_MS * n // one
    for s in range(symbols):
        path = folder / f"S{s:03d}USDT-trades-2024-08-08.csv"
        if not path.exists():
            path.write_text("".join(_rows(each, 1, T0 + s * 7, (span - 1 - symbols * 7) / each, s)))
    return folder


# ---- CPU per process -----------------------------------------------------------------------------------------------


class TreeCpu:
    """CPU seconds (user + system) of every descendant of ``root`` (and of ``root`` itself with ``include_root``),
    sampled from /proc every ``every`` seconds until ``stop()``: the last sample of each process, which misses at
    most ``every`` of its end. Empty where there is no /proc."""

    def __init__(self, root: int, *, include_root: bool = True, every: float = 0.05) -> None:
        self.root, self.include_root, self.every = root, include_root, every
        self.cpu: dict[int, float] = {}
        self.cmd: dict[int, str] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __enter__(self) -> TreeCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._halt.wait(self.every):
                return

    def _sample(self) -> None:
        todo = [self.root]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if pid != self.root or self.include_root:
                    self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick
                    if pid not in self.cmd:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            self.cmd[pid] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as fh:
                        todo += [int(c) for c in fh.read().split()]
            except OSError:
                continue

    def by_name(self, names: dict[int, str]) -> dict[str, float]:
        """CPU seconds by process name: ``names`` first, redis-server by its command line, the rest as "other"."""
        out: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            name = names.get(pid) or ("redis" if "redis-server" in self.cmd.get(pid, "") else "other")
            out[name] = round(out.get(name, 0.0) + cpu, 2)
        return out


# ---- the measured runs ----------------------------------------------------------------------------------------------


def run_sentinel(inputs: Path, out: Path) -> dict[str, Any]:
    """The command as a user runs it; wall seconds, and the pipeline's own figure from its summary line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_") and k != "REDIS_URL"}
    env["COLUMNS"] = "200"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sentinel.cli", "backtest", str(inputs), "--rules", str(RULES),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    with TreeCpu(proc.pid) as tree:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sentinel backtest failed: {stderr[-2000:]}")
    # the feed: the main process' python child (the embedded redis-server is named by its command line)
    feed = [pid for pid, cmd in tree.cmd.items() if pid != proc.pid and "redis-server" not in cmd]
    cpu = tree.by_name({proc.pid: "main", **{pid: "feed" for pid in feed}})
    # its summary line: the trades and its own rate (printed to the trade; the seconds beside it are rounded)
    m = re.search(r"([\d,]+) trades of .* in [\d.]+s \(([\d,]+) trades/s end to end\)", " ".join(stdout.split()))
    trades, rate = (int(m[1].replace(",", "")), int(m[2].replace(",", ""))) if m else (0, 0)
    candles = 0  # closed candles written (every timeframe): the per-candle work the input asks for
    for path in out.glob("candles_*.csv"):
        with path.open() as fh:
            candles += sum(1 for _ in fh) - 1
    return {"seconds": wall, "trades": trades, "inner_seconds": trades / rate if rate else None, "candles": candles,
            "candles_per_trade": round(candles / trades, 4) if trades else None, "cpu_s": cpu, "load_1m": load}


def _bus_producer(url: str, files: list[str], stream_of: dict[str, str], out: Any, columnar: bool = False) -> None:
    from shared.bus import Bus
    from shared.feed_codec import TextColumns, encode_trades
    from shared.recordings import guess_symbol, read_trades
    from shared.runtime import connect
    from shared.trade_blocks import read_trade_blocks
    import asyncio

    def parsed(f: str) -> Any:
        """Trades (``read_trades``), or with ``columnar`` runs of up to 200 of them cut from read_trade_blocks'
        blocks (its per-trade items, if any, one by one)."""
        if not columnar:
            yield from read_trades(f)
            return
        for item in read_trade_blocks(f):
            if type(item) is TextColumns:
                for i in range(0, len(item), 200):
                    yield item.slice(i, i + 200)
            else:
                yield item

    async def main() -> None:
        redis = connect(url)
        bus = Bus(redis)
        n = 0
        items: list[tuple[str, bytes]] = []
        for f in files:
            symbol = guess_symbol(f) or "X/Y"
            stream = stream_of[f]
            batch: list = []
            for t in parsed(f):
                if type(t) is TextColumns:  # (columnar: a run of trades, packed as it is)
                    items.append((stream, encode_trades("binance", symbol, t)))
                    n += len(t)
                else:
                    batch.append(t)
                    if len(batch) < 200:
                        continue
                    items.append((stream, encode_trades("binance", symbol, batch)))
                    n += len(batch)
                    batch = []
                if len(items) == 100:
                    await bus.publish_many(items)
                    items = []
            if batch:
                items.append((stream, encode_trades("binance", symbol, batch)))
                n += len(batch)
        if items:
            await bus.publish_many(items)
        await redis.aclose()
        out.put(n)

    asyncio.run(main())


def _bus_consumer(url: str, stream_names: list[str], total: int, ready: Any, out: Any) -> None:
    import redis as sync_redis

    from shared.bus import FIELD
    from shared.feed_codec import decode_feed

    r = sync_redis.Redis.from_url(url)
    for s in stream_names:
        r.xgroup_create(s, "g", id="0", mkstream=True)
    ready.set()
    seen = 0
    while seen < total:
        for i in range(0, len(stream_names), 200):
            got = r.xreadgroup("g", "c", {s: ">" for s in stream_names[i:i + 200]}, count=100, block=100)
            for stream, entries in got or []:
                for _, fields in entries:
                    seen += len(decode_feed(fields[FIELD]).trades)
                r.xack(stream, "g", *[eid for eid, _ in entries])
    out.put(seen)


def run_bus(files: list[Path], total: int, tmp: Path, columnar: bool = False) -> dict[str, Any]:
    from shared.embedded_redis import EmbeddedRedis
    from shared.recordings import guess_symbol

    from shared import streams
    from shared.partitions import DEFAULT_PARTITIONS, partition_of

    load = os.getloadavg()[0]
    tree = TreeCpu(os.getpid(), include_root=False)
    tree.__enter__()
    begin = time.perf_counter()  # (its start-up counted, as sentinel's and nautilus' are: the server, the consumer)
    server = EmbeddedRedis(tmp / "redis-bus", persist=False)
    server.start()
    try:
        stream_of = {str(f): streams.part_trades(partition_of("binance", guess_symbol(f) or "X/Y", DEFAULT_PARTITIONS))
                     for f in files}
        names = sorted(set(stream_of.values()))
        ctx = mp.get_context("spawn")
        ready, out_p, out_c = ctx.Event(), ctx.Queue(), ctx.Queue()
        consumer = ctx.Process(target=_bus_consumer, args=(server.url, names, total, ready, out_c))
        consumer.start()
        ready.wait(30)
        start = time.perf_counter()
        producer = ctx.Process(target=_bus_producer, args=(server.url, [str(f) for f in files], stream_of, out_p,
                                                           columnar))
        producer.start()
        seen = out_c.get(timeout=1800)
        end = time.perf_counter()
        producer.join(60)
        consumer.join(60)
        tree.__exit__()
        return {"seconds": end - begin, "inner_seconds": end - start, "trades": seen, "load_1m": load,
                "cpu_s": tree.by_name({producer.pid: "producer", consumer.pid: "consumer"})}
    finally:
        tree.__exit__()
        server.stop()


def run_pandas(files: list[Path]) -> dict[str, Any]:
    import pandas as pd

    start = time.perf_counter()
    n = 0
    for f in files:
        df = pd.read_csv(f, header=None, names=["id", "price", "qty", "quote", "time", "maker", "best"])
        df.index = pd.to_datetime(df["time"], unit="ms")
        for rule in ("1min", "5min", "15min", "1h"):
            r = df["price"].resample(rule)
            pd.DataFrame({"open": r.first(), "high": r.max(), "low": r.min(), "close": r.last(),
                          "volume": df["qty"].resample(rule).sum()})
        n += len(df)
    return {"seconds": time.perf_counter() - start, "trades": n}


def nautilus_python(pin: str, venv: Path = NAUTILUS_VENV) -> tuple[Path | None, str]:
    """The nautilus venv's python (created on first use), or None and why not."""
    py = venv / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", pin], check=True, capture_output=True,
                           text=True, timeout=1200)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            return None, f"{pin} could not be installed: {str(getattr(exc, 'stderr', exc))[-300:]}"
    ver = subprocess.run([str(py), "-c", "import nautilus_trader; print(nautilus_trader.__version__)"],
                         capture_output=True, text=True)
    if ver.returncode != 0:
        return None, f"nautilus_trader does not import: {ver.stderr[-300:]}"
    return py, ver.stdout.strip()


def run_nautilus(py: Path, files: list[Path]) -> dict[str, Any]:
    """Wall time of the process (as for sentinel: start-up included); its own figure (CSV loading and the engine,
    start-up excluded) as ``inner_seconds``."""
    start = time.perf_counter()
    proc = subprocess.run([str(py), str(NAUTILUS_SCRIPT), *map(str, files)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"nautilus failed: {proc.stderr[-2000:]}")
    inner = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": wall, "trades": inner["trades"], "inner_seconds": inner["seconds"], "bars": inner["bars"]}


def nautilus_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'nautilus\s*=\s*\[\s*"([^"]+)"', text)
    return m[1] if m else "nautilus_trader"


# ---- report ---------------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def measure(name: str, runs: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Each contender ``repeat`` times, in turns (all see the same moments of a shared machine)."""
    rates: dict[str, list[float]] = {k: [] for k in runs}
    extra: dict[str, Any] = {}
    for r in range(repeat):
        for key, fn in runs.items():
            got = fn()
            rates[key].append(got["trades"] / got["seconds"])
            extra.setdefault(key, []).append({k: v for k, v in got.items()})
            cpu = " ".join(f"{k} {v:.2f}" for k, v in got.get("cpu_s", {}).items() if k != "other")
            print(f"{name} run {r + 1}/{repeat} {key}: {got['trades']:,} trades in {got['seconds']:.2f}s = "
                  f"{got['trades'] / got['seconds']:,.0f}/s" + (f"  (load {got['load_1m']:.1f}; cpu s: {cpu})"
                                                                 if cpu else ""), flush=True)
    out = {key: {"trades_per_s": spread(v), "runs": extra[key]} for key, v in rates.items()}
    base = statistics.median(rates["sentinel"])
    for key in rates:
        if key != "sentinel":
            out[key]["sentinel_over_this"] = round(base / statistics.median(rates[key]), 2)
    # start-up left out: each contender's own figure of its work (sentinel's summary line, from its Redis up to its
    # last alert; the bus from its producer's start; nautilus' CSV loading and engine)
    inner = {key: [r["trades"] / r["inner_seconds"] for r in extra[key] if r.get("inner_seconds")] for key in rates}
    if inner["sentinel"]:
        for key, values in inner.items():
            if values:
                out[key]["inner_trades_per_s"] = spread(values)
                if key != "sentinel":
                    out[key]["sentinel_over_this_inner"] = round(statistics.median(inner["sentinel"])
                                                                 / statistics.median(values), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--many-trades", type=int, default=50_000)
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100k trades, 1 repeat")
    ap.add_argument("--no-nautilus", action="store_true")
    ap.add_argument("--skip-many", action="store_true", help="only the one-symbol input")
    ap.add_argument("--nautilus-venv", type=Path, default=NAUTILUS_VENV, help="a venv with nautilus_trader (made "
                                                                            "and filled when absent)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sentinel-bench-backtest")
    args = ap.parse_args()
    if args.quick:
        args.trades, args.repeat = 100_000, 1
    data = args.data / f"{args.trades}"
    data.mkdir(parents=True, exist_ok=True)
    one = generate_one(data, args.trades)
    many = generate_many(args.data / f"many-{args.many_trades}-{args.symbols}-{args.trades}", args.many_trades,
                         args.symbols, args.trades)
    many_files = sorted(many.glob("*.csv"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "trades": args.trades, "many": {"trades": args.many_trades, "symbols": args.symbols},
                               "repeat": args.repeat, "rules": str(RULES.relative_to(ROOT)),
                               "load_avg_before": os.getloadavg()}
    py, note = (None, "skipped (--no-nautilus)") if args.no_nautilus else nautilus_python(nautilus_pin(), args.nautilus_venv)
    results["nautilus"] = {"version": note} if py else {"skipped": note}
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp_s:
        tmp = Path(tmp_s)
        runs: dict[str, Any] = {"sentinel": lambda: run_sentinel(one, tmp / "out-one"),
                                "bus": lambda: run_bus([one], args.trades, tmp),
                                "bus_columnar": lambda: run_bus([one], args.trades, tmp, columnar=True),
                                "pandas": lambda: run_pandas([one])}
        if py:
            runs["nautilus"] = lambda: run_nautilus(py, [one])
        results["one_symbol"] = measure("one symbol", runs, args.repeat)
        if not args.skip_many:
            many_runs: dict[str, Any] = {"sentinel": lambda: run_sentinel(many, tmp / "out-many"),
                                         "bus": lambda: run_bus(many_files, args.many_trades, tmp)}
            results["many_symbols"] = measure(f"{args.symbols} symbols", many_runs, args.repeat)
    if "many_symbols" in results:
        one_rate = results["one_symbol"]["sentinel"]["trades_per_s"]["median"]
        many_rate = results["many_symbols"]["sentinel"]["trades_per_s"]["median"]
        results["many_over_one"] = round(many_rate / one_rate, 2)
    results["load_avg_after"] = os.getloadavg()
    path = write_result("bench_backtest.json", results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("one_symbol", "many_symbols")}, indent=2))
    for part in ("one_symbol", "many_symbols"):
        if part in results:
            print(part, {k: (v["trades_per_s"], v.get("sentinel_over_this")) for k, v in results[part].items()})
            print(f"{part}, start-up left out", {k: (v["inner_trades_per_s"], v.get("sentinel_over_this_inner"))
                                                 for k, v in results[part].items() if "inner_trades_per_s" in v})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
