"""What the latency benches share: the probe that timestamps replies with the kernel's receive time, the alert
engine run as ``sentinel alert-engine`` runs it (in its own process, until told to stop), percentiles and spreads,
a process' CPU seconds, and writing the JSON result.

Used by ``bench_alerts.py`` (trade -> alert) and ``bench_book_alerts.py`` (book update -> alert).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hiredis

RESULTS = Path(__file__).resolve().parent / "results"

_SO_TIMESTAMPNS = 35  # Linux (x86_64 and aarch64): SO_TIMESTAMPNS, also its control message type


class Probe:
    """A Redis client on a raw socket whose replies carry the kernel's receive time (SO_TIMESTAMPNS): when Redis
    delivered an entry to the blocked reader, whatever the reading process was doing then (a reader that sleeps
    between bars wakes with cold caches on these shared cores and takes up to ~1 ms to get to its clock)."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.reader = hiredis.Reader()
        self.space = socket.CMSG_SPACE(16)

    def call(self, *args: Any) -> tuple[Any, float]:
        """(reply, kernel receive time of its first byte, epoch seconds)."""
        self.sock.sendall(hiredis.pack_command(tuple(args)))
        first = None
        while True:
            data, anc, _, _ = self.sock.recvmsg(1 << 20, self.space)
            if first is None:
                for _level, kind, payload in anc:
                    if kind == _SO_TIMESTAMPNS and len(payload) >= 16:
                        sec, ns = struct.unpack("qq", payload[:16])
                        first = sec + ns / 1e9
            self.reader.feed(data)
            reply = self.reader.gets()
            if reply is not False:
                return reply, first if first is not None else time.time()


def read_arrivals(url: str, last: dict[str, str], stop: Any, *, floor: bool, alert_streams: frozenset[str],
                  count: int = 1000, rule: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """The reader of a latency bench, until ``stop``: XREAD of ``last`` (stream -> last id read), and when each alert
    (of ``rule``, or any) and each closed 1s candle reached this process, keyed "symbol|bar end ms" (the second whose
    first trade closed the bar). ``floor``: the streams are trades streams (no services ran): when the first trade of
    each second reached it. Entries are only msgpack-unpacked (decoding the schema is the consumer's work, not the
    pipeline's latency)."""
    from shared.bus import FIELD
    from shared.feed_codec import decode_feed
    from shared.schemas import unpack

    probe = Probe(url)
    received: dict[str, float] = {}
    candles: dict[str, float] = {}
    while not stop.is_set():
        resp, arrived = probe.call("XREAD", "COUNT", count, "BLOCK", 100, "STREAMS", *last, *last.values())
        for stream, entries in resp or ():
            name = stream.decode()
            for entry_id, fields in entries:
                last[name] = entry_id.decode()
                data = fields[fields.index(FIELD) + 1]
                if floor:
                    trades = decode_feed(data)
                    received.setdefault(f"{trades.symbol}|{trades.trades[0][1] // 1000 * 1000}", arrived)
                    continue
                msg = unpack(data)
                if name in alert_streams:
                    if rule is None or msg["rule"] == rule:
                        received.setdefault(f"{msg['symbol']}|{msg['ts'] + 1000}", arrived)
                elif msg["timeframe"] == "1s":
                    candles.setdefault(f"{msg['symbol']}|{msg['ts'] + 1000}", arrived)
    return received, candles


def paced_trades(url: str, exchange: str, syms: list[str], rate: int, seconds: float, *, tick_ms: int = 1,
                 stream_of: Callable[[str], str], next_price: Callable[[str, Any], Any], maxlen: int = 100_000,
                 ) -> tuple[dict[str, float], int, int]:
    """The producer of a latency bench: ``rate`` trades/s in ``tick_ms`` ticks, round-robin over ``syms`` (one XADD
    of market_feed's format per symbol per tick, pipelined), prices from ``next_price(symbol, rng)``. Returns when the
    first trade of each second of each symbol was sent ("symbol|ms of its second"), the trades published, and how
    many ticks ran late (over 5 ms behind their schedule: the producer could not keep the rate)."""
    import random
    from decimal import Decimal

    import redis as sync_redis

    from shared.bus import FIELD
    from shared.feed_codec import encode_trades

    r = sync_redis.Redis.from_url(url)
    r.ping()  # connect now: the first pipeline's send time would include the handshake
    per_tick = rate * tick_ms / 1000
    owed, tid, late = 0.0, 0, 0
    firsts: dict[str, float] = {}
    last_sec: dict[str, int] = {}
    rng = random.Random(1)
    end = time.time() + seconds
    next_tick = time.perf_counter()
    while time.time() < end:
        owed += per_tick
        n, owed = int(owed), owed - int(owed)
        if n:
            by_sym: dict[str, list] = {}
            now_ms = int(time.time() * 1000)
            for _ in range(n):
                sym = syms[tid % len(syms)]
                tid += 1
                by_sym.setdefault(sym, []).append((tid, now_ms, next_price(sym, rng), Decimal("0.01"), tid % 2 == 0))
            pipe = r.pipeline(transaction=False)
            for sym, trades in by_sym.items():
                pipe.xadd(stream_of(sym), {FIELD: encode_trades(exchange, sym, trades)}, maxlen=maxlen,
                          approximate=True)
            sent = time.time()
            pipe.execute()
            sec = now_ms // 1000
            for sym in by_sym:
                if last_sec.get(sym) != sec:
                    last_sec[sym] = sec
                    firsts[f"{sym}|{sec * 1000}"] = sent
        next_tick += tick_ms / 1000
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.005:
            late += 1
    return firsts, tid, late


def pick(values: list[float], p: float) -> float | None:
    """The ``p`` quantile of sorted ``values`` (the sample at that rank), ms rounded to the µs."""
    return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None


def spread(values: list[float], digits: int | None = 3) -> dict[str, Any]:
    """Median, min and max of per-run figures (None when no run gave one)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def fmt_spread(row: dict[str, Any], unit: str = "ms") -> str:
    """"median unit [min-max]" of a ``spread``."""
    return f"{row['median']} {unit} [{row['min']}-{row['max']}]"


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class KernelNoise:
    """What the machine's own kernel threads that hold a CPU for milliseconds did meanwhile: ``KernelNoise()`` at the
    start, ``.since()`` at the end. On these VMs ``kdamond`` (DAMON, the kernel's data-access monitor, turned on when
    the VM boots) runs about every 512 ms for 2-5 ms and is not preempted: a process woken on its CPU meanwhile waits that long (seen with
    ``perf sched timehist``; an asyncio loop alone, nothing else running, wakes 2-5 ms late about twice a second). A
    latency sample whose path crosses one of its runs is a few ms longer, whatever the services do."""

    PREFIXES = ("kdamond",)

    def __init__(self) -> None:
        self.start = {pid: self._schedstat(pid) for pid in self._pids()}

    @classmethod
    def _pids(cls) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().startswith(cls.PREFIXES):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    @staticmethod
    def _schedstat(pid: int) -> tuple[int, int]:
        """(ns run, times run) of ``pid``; (0, 0) once it is gone."""
        try:
            run_ns, _, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
        except (OSError, ValueError):
            return 0, 0
        return int(run_ns), int(slices)

    def since(self) -> dict[str, Any]:
        """CPU ms and runs of those threads since the start (empty when the kernel has none)."""
        if not self.start:
            return {}
        ran = [self._schedstat(pid) for pid in self.start]
        ms = sum(r[0] - s[0] for r, s in zip(ran, self.start.values())) / 1e6
        runs = sum(r[1] - s[1] for r, s in zip(ran, self.start.values()))
        return {"kdamond_cpu_ms": round(ms, 1), "kdamond_runs": runs}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name> (JSON)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2))
    return path


def serve(url: str, which: str, mark: Any, stop: Any, ready: Any, *, rules: str | None = None,
          options: dict[str, Any] | None = None, until_ready: Callable[[Any], bool] | None = None,
          spy_path: str | None = None) -> float:
    """``which`` (``candle_builder`` or ``alert_engine``) in this process as ``sentinel <service>`` runs it, until
    ``stop`` (a multiprocessing event); ``ready`` is set once it runs (an engine: once ``until_ready(app)`` holds,
    by default every partition it holds has its engine, warmed up). ``options``: settings beside the bench's (a
    builder: 1s base, no in-progress or flat candles, no history). Returns its CPU seconds between ``mark`` and
    ``stop``; ``spy_path``: py-spy records it meanwhile (speedscope JSON)."""
    from services.alert_engine.app import AlertEngineApp
    from services.alert_engine.settings import Settings as EngineSettings
    from services.candle_builder.app import CandleBuilderApp
    from services.candle_builder.settings import Settings as BuilderSettings
    from shared.runtime import connect

    reference_client()

    async def main() -> float:
        redis = connect(url)
        app: Any
        if which == "candle_builder":
            base: dict[str, Any] = {"base_timeframe": "1s", "live_candles": False, "flat_candles": False,
                                    "history_bars": 0}
            # the builder's read pacing, if it has one, is on the critical path of every alert: read at once here
            if "linger_ms" in BuilderSettings.model_fields and os.environ.get("BENCH_BUILDER_LINGER") != "default":
                base["linger_ms"] = 0
            app = CandleBuilderApp(BuilderSettings(redis_url=url, **{**base, **(options or {})}), redis)
        else:
            app = AlertEngineApp(EngineSettings(rules_file=Path(str(rules)), redis_url=url, **(options or {})), redis)
        halt = asyncio.Event()
        task = asyncio.create_task(app.run(halt))
        if which == "alert_engine":
            check = until_ready or engines_open
            for _ in range(1200):
                if check(app):
                    break
                await asyncio.sleep(0.05)
        ready.set()
        await asyncio.to_thread(mark.wait)
        spy = py_spy(spy_path)
        cpu = time.process_time()
        await asyncio.to_thread(stop.wait)
        cpu = time.process_time() - cpu
        await asyncio.to_thread(stop_py_spy, spy)
        halt.set()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
        return cpu

    return asyncio.run(main())


async def start_services(ctx: Any, target: Callable[..., None], url: str, rules: str, kinds: Iterable[str], mark: Any,
                         stop: Any, out: Any, timeout: float) -> list[Any]:
    """``target(url, rules, which, mark, stop, ready, out)`` (e.g. a bench's ``serve`` wrapper) in a process of
    ``ctx`` per service kind; returns the processes once each is ready (or ``timeout`` passed)."""
    started = []
    for which in kinds:
        ready = ctx.Event()
        proc = ctx.Process(target=target, args=(url, rules, which, mark, stop, ready, out))
        proc.start()
        started.append((proc, ready))
    for _, ready in started:
        await asyncio.to_thread(ready.wait, timeout)
    return [proc for proc, _ in started]


async def end_services(procs: list[Any], out: Any, timeout: float) -> dict[str, float]:
    """After ``stop``: each service's (kind, CPU seconds) from ``out``, once all ended."""
    cpu = dict([await asyncio.to_thread(out.get, True, timeout) for _ in procs])
    for proc in procs:
        await asyncio.to_thread(proc.join)
    return cpu


def run_engine(url: str, rules: str, mark: Any, stop: Any, ready: Any, out: Any, *, options: dict[str, Any] | None = None,
               until_ready: Callable[[Any], bool] | None = None) -> None:
    """``serve`` of an alert engine as a multiprocessing target: puts its CPU seconds on ``out``;
    ``BENCH_PYSPY=<file>`` records it with py-spy."""
    out.put(serve(url, "alert_engine", mark, stop, ready, rules=rules, options=options, until_ready=until_ready,
                  spy_path=os.environ.get("BENCH_PYSPY")))


def reference_client() -> None:
    """``BENCH_REDIS_PY=1`` in a service's process: its reads (and commits) go through redis-py's asyncio client
    instead of ``shared.resp.RespClient`` (the reference run of an A/B, in the same conditions)."""
    if os.environ.get("BENCH_REDIS_PY") == "1":
        from shared.resp import RespClient

        RespClient.of = classmethod(lambda cls, redis: None)  # type: ignore[assignment,method-assign]


def engines_open(app: Any) -> bool:
    """Every partition ``app`` holds has its engine (warmed up), and it holds some."""
    owned = app.workers.owned
    return bool(owned) and all(p in app.engines for p in owned)


def py_spy(path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording this process into ``path`` (speedscope JSON) until ``stop_py_spy``; None without a path.
    ``BENCH_PYSPY_RATE``: samples per second (250 by default; 1000 for finer profiles, at more overhead)."""
    if not path:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    rate = os.environ.get("BENCH_PYSPY_RATE", "250")
    return subprocess.Popen([str(spy) if spy.exists() else "py-spy", "record", "--pid", str(os.getpid()), "--rate", rate,
                             "--format", "speedscope", "--output", path, "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    """Stop a ``py_spy`` recording (it writes its file on SIGINT)."""
    if spy is not None:
        spy.send_signal(2)
        spy.wait(30)
