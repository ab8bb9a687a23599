"""`docker compose up --scale` really run (issue 21): the repo's docker-compose.yml, with bench/docker/compose.replay.yml
feeding four recorded captures (../shared/data) instead of live exchanges, once with every service at 1 replica and
once with ``--replicas`` (default 2) of every service (market_feed — each of the four replay services —,
candle_builder, alert_engine, notifier, API). Then, for each run, through Redis (its port published on loopback) and
each API replica:

- every trade once, against the recording (pandas);
- the closed candles of every pair and timeframe against pandas' group-by of the recording (``tests/support/chaos/
  verify.py``), and each API replica's ``GET /candles`` against the same;
- the alerts delivered — webhook receiver container honouring Idempotency-Key, the notifier's JSONL, each API
  replica's history — against one clean one-process ``sentinel backtest`` of the same files and rules (ids and
  values);

and the two runs against each other: every series' closed candles (digest of every field) and the JSONL alerts.
Writes bench/results/compose_scale.json. Needs a Docker engine, docker-compose (1.29 or the v2 plugin as
``docker compose``), the images (`docker-compose build`; no Docker Hub: bench/docker/base_images.sh first) and the
repo's venv (the host side reads Redis, runs pandas and the reference backtest). Not part of pytest/CI.

    python bench/compose_scale.py                   # 1 then 2 replicas, each recording paced over ~40 s
    python bench/compose_scale.py --replicas 3 --wall 60 --keep /tmp/cs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402

from bench.common import write_result  # noqa: E402
from shared import streams  # noqa: E402
from shared.partitions import DEFAULT_PARTITIONS  # noqa: E402
from shared.redisconn import connect  # noqa: E402
from shared.schemas import Candle  # noqa: E402
from tests.support.chaos.sources import notifier_section  # noqa: E402
from tests.support.chaos.verify import (compare_alerts, compare_candles, read_entries,  # noqa: E402
                                        read_jsonl, recording, reference_candles, scaled, SCALE)
from tests.support.scale_out import compare  # noqa: E402
from tests.support.scale_out.progress import lagging, series_streams, work_streams  # noqa: E402
from tests.support.scale_out.run import backtest  # noqa: E402
from tests.support.scale_out.run import ready as services_ready  # noqa: E402
from tests.support.scale_out.sources import (DEFAULT_RECORDINGS, EXPLICIT_SERIES, RULES,  # noqa: E402
                                             backtest_settings, live_timeframes, pipeline_sections, recordings)

OVERRIDE = REPO / "bench" / "docker" / "compose.replay.yml"
#: recording (tests/support/scale_out/sources.py) -> its replay service in compose.replay.yml
FEEDS = {"btcusdt": "market_feed", "btcusdc": "market_feed_btcusdc", "xrpeth": "market_feed_xrpeth",
         "kraken": "market_feed_kraken"}
CONSUMERS = ("candle_builder", "alert_engine", "notifier", "api")
TOKEN = "compose-scale-bench"
#: heartbeat fields that say how much a replica did (shared.runtime heartbeats, each service's ``status()``)
WORK_FIELDS = {"candle_builder": ("trades", "candles", "partitions"),
               "alert_engine": ("published", "suppressed", "duplicates", "partitions"),
               "notifier": ("delivered", "acked", "dead"), "api": ()}
EXACT = compare.EXACT


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


class Stack:
    """One compose project: docker-compose.yml + compose.replay.yml, with the bench's environment."""

    def __init__(self, project: str, env: dict[str, str], logs: Path) -> None:
        self.project, self.env, self.logs = project, env, logs

    def __call__(self, *args: str, check: bool = True) -> str:
        argv = [*compose_cmd(), "-p", self.project, "-f", str(REPO / "docker-compose.yml"), "-f", str(OVERRIDE),
                *args]
        done = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True)
        with open(self.logs / "compose-commands.log", "a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def ids(self, service: str) -> list[str]:
        """Every container of ``service``, stopped ones included."""
        return self("ps", "-a", "-q", service).split()

    def port(self, service: str, port: int, index: int = 1) -> int:
        out = self("port", "--index", str(index), service, str(port)).strip()
        return int(out.rsplit(":", 1)[1])


def inspect(ids: list[str]) -> dict[str, dict]:
    """Container id -> name, state, exit code, restarts (by its restart policy: a crash)."""
    if not ids:
        return {}
    out = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.Name}} {{.State.Status}} {{.State.ExitCode}} "
                          "{{.RestartCount}}", *ids], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        cid, name, status, code, restarts = line.split()
        rows[cid] = {"name": name.lstrip("/"), "status": status, "exit_code": int(code), "restarts": int(restarts)}
    return rows


class CgroupMeter:
    """CPU seconds and peak memory of each container (cgroup v1 cpuacct/memory under docker/<id>), sampled while it
    runs: an exited container's cgroup is gone, so the last sample stands."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.names: dict[str, str] = {}

    def sample(self, containers: dict[str, dict]) -> None:
        for cid, row in containers.items():
            self.names[cid] = row["name"]
            for root in ("/sys/fs/cgroup/cpuacct/docker", "/sys/fs/cgroup/cpu,cpuacct/docker"):
                with contextlib.suppress(OSError, ValueError):
                    self.cpu_s[cid] = int(Path(root, cid, "cpuacct.usage").read_text()) / 1e9
                    break
            with contextlib.suppress(OSError, ValueError):
                mem = int(Path("/sys/fs/cgroup/memory/docker", cid, "memory.max_usage_in_bytes").read_text())
                self.peak_mb[cid] = round(mem / 2**20, 1)

    def by_service(self, project: str) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for cid, name in self.names.items():
            m = re.fullmatch(rf"{re.escape(project)}[-_](.+)[-_]\d+", name)  # docker-compose 1.x: _, v2: -
            service = m.group(1) if m else name
            row = out.setdefault(service, {"containers": 0, "cpu_s": 0.0, "peak_mb": []})
            row["containers"] += 1
            row["cpu_s"] = round(row["cpu_s"] + self.cpu_s.get(cid, 0.0), 2)
            if cid in self.peak_mb:
                row["peak_mb"].append(self.peak_mb[cid])
        return out


class HookFile:
    """The webhook receiver container's record (bench/docker/webhook_receiver.py), as ``compare.everything`` reads
    a receiver: ``delivered`` counts a repeated Idempotency-Key once, ``raw_delivered`` every request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[dict]:
        return read_jsonl(self.path)

    def delivered(self) -> list[dict]:
        return [line["body"] for line in self._lines() if not line["repeat"]]

    def raw_delivered(self) -> list[dict]:
        return [line["body"] for line in self._lines()]


def free_port_range(n: int) -> tuple[int, int]:
    """``n`` consecutive ports free on loopback now (the API replicas' published ports)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first, first + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def final_candles(entries: list[tuple[str, bytes]]) -> dict[int, tuple]:
    """The last revision of each closed candle of one series' entries, every field as an exact integer."""
    out: dict[int, tuple[int, tuple]] = {}
    for _eid, raw in entries:
        c = Candle.decode(raw)
        if not c.closed:
            continue
        if c.ts not in out or c.revision >= out[c.ts][0]:
            out[c.ts] = (c.revision, (scaled(c.open), scaled(c.high), scaled(c.low), scaled(c.close),
                                      scaled(c.volume), scaled(c.buy_volume), scaled(c.sell_volume),
                                      scaled(c.quote_volume, SCALE * SCALE), c.trades))
    return {ts: row for ts, (_, row) in out.items()}


def digest(candles: dict[int, tuple]) -> str:
    return hashlib.sha256(json.dumps(sorted(candles.items())).encode()).hexdigest()[:16]


async def wait_for(check, timeout: float, every: float = 0.5) -> float | None:
    """Seconds until ``check()`` held (None: not within ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await check():
            return time.monotonic() - t0
        await asyncio.sleep(every)
    return None


async def run_stack(replicas: int, args: argparse.Namespace, work: Path, recs: list, refs: dict,
                    expected: list[dict]) -> dict:
    """One compose run at ``replicas`` per service; its report (comparisons included)."""
    project = f"sentinelscale{replicas}"
    run_dir = work / f"replicas{replicas}"
    out = run_dir / "out"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    out.mkdir(parents=True)
    os.chmod(out, 0o777)  # the containers run as user `sentinel`
    (run_dir / "rules.yaml").write_text(RULES)
    doc = {"log_level": "INFO",
           "market_feed": {"backoff_base_s": 0.1, "backoff_cap_s": 1.0, "silence_timeout_s": 2.0},
           **pipeline_sections(Path("/bench/rules.yaml")),
           "notifier": notifier_section(Path("/out/alerts.jsonl"), "json://webhook:8080/hook")}
    (run_dir / "sentinel.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    first, last = free_port_range(replicas)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "SCALE_")) and k != "REDIS_URL"}
    env.update(SCALE_WORK=str(run_dir), SCALE_DATA=str(args.data.resolve()), SENTINEL_API_TOKEN=TOKEN,
               SENTINEL_API_HOST_PORT=str(first) if first == last else f"{first}-{last}")
    for rec in recs:
        env[f"SCALE_SPEED_{rec.name.upper()}"] = f"{args.speeds[rec.name]:.3f}"
    stack = Stack(project, env, run_dir)
    meter = CgroupMeter()
    feeds = [FEEDS[r.name] for r in recs]
    scale = lambda services: [a for s in services for a in ("--scale", f"{s}={replicas}")]  # noqa: E731
    report: dict = {"replicas": replicas, "project": project, "seconds": {}, "load_before": os.getloadavg()}
    started = time.monotonic()
    stack("down", "-v", "--remove-orphans", check=False)  # leftovers of an interrupted run
    redis = None
    try:
        stack("up", "-d", *scale(CONSUMERS), "redis", "webhook", *CONSUMERS)
        url = f"redis://127.0.0.1:{stack.port('redis', 6379)}/0"
        redis = connect(url)
        api_bases = [f"http://127.0.0.1:{stack.port('api', 8000, i + 1)}" for i in range(replicas)]
        report["api_bases"] = api_bases

        async def ready() -> bool:  # the engines asked for the 1s series the rules name; every API answers
            meter.sample(inspect([i for s in CONSUMERS for i in stack.ids(s)]))
            return await services_ready(redis, api_bases)
        if await wait_for(ready, 180) is None:
            raise RuntimeError(f"{project}: the engines did not subscribe to {EXPLICIT_SERIES} (or an API did not "
                               f"answer) within 180 s; see {run_dir}")
        report["seconds"]["start"] = round(time.monotonic() - started, 1)
        # The feeds only now: a 1s series is built once an engine asks for it (a real user's live feed has the same
        # start-up order question, with nothing to compare against).
        t_feeds = time.monotonic()
        stack("up", "-d", "--no-deps", *scale(feeds), *feeds)
        feed_ids = [i for s in feeds for i in stack.ids(s)]
        report["feed_containers"] = len(feed_ids)

        async def fed() -> bool:
            rows = inspect(feed_ids)
            meter.sample(inspect([i for s in CONSUMERS for i in stack.ids(s)]))
            meter.sample({k: v for k, v in rows.items() if v["status"] == "running"})
            meter.names.update({k: v["name"] for k, v in rows.items()})
            return all(r["status"] == "exited" for r in rows.values())
        fed_s = await wait_for(fed, args.wall * 4 + 180)
        report["feed_exits"] = {r["name"]: r["exit_code"] for r in inspect(feed_ids).values()}
        report["seconds"]["sources"] = fed_s and round(fed_s, 1)
        names = work_streams([r.pair for r in recs], {r.pair: live_timeframes(r.pair) for r in recs},
                             DEFAULT_PARTITIONS)
        jsonl = out / "alerts.jsonl"
        behind: list[str] = []

        async def settled() -> bool:
            nonlocal behind
            meter.sample(inspect([i for s in CONSUMERS for i in stack.ids(s)]))
            behind = await lagging(redis, names, [r.pair for r in recs], DEFAULT_PARTITIONS)
            if behind:
                return False
            before = len(read_jsonl(jsonl))
            await asyncio.sleep(2.0)  # and still so a moment later, nothing more delivered
            behind = await lagging(redis, names, [r.pair for r in recs], DEFAULT_PARTITIONS)
            return not behind and len(read_jsonl(jsonl)) == before
        settle_s = await wait_for(settled, args.settle_timeout)
        report["seconds"]["settle"] = settle_s and round(settle_s, 1)
        report["seconds"]["feeds_to_settled"] = round(time.monotonic() - t_feeds, 1)
        report["not_settled"] = behind[:20]
        report["leases"] = await lease_holders(redis)
        report["work"] = await replica_work(redis)
        report["restarts"] = {r["name"]: r for r in inspect([i for s in CONSUMERS for i in stack.ids(s)]).values()
                              if r["status"] != "running" or r["restarts"]}
        report.update(await compare.everything(redis, [r.pair for r in recs], refs, DEFAULT_PARTITIONS, expected,
                                               jsonl, HookFile(out / "webhook.jsonl"), []))
        report["api"] = await api_checks(api_bases, recs, refs, expected)
        report["series"] = await series_digests(redis, recs)
        report["delivered"] = read_jsonl(jsonl)
        report["containers"] = meter.by_service(project)
    finally:
        report["load_after"] = os.getloadavg()
        with contextlib.suppress(Exception):
            logs = stack("logs", "--no-color", "--timestamps", check=False)
            (run_dir / "compose.log").write_text(logs)
            report.setdefault("work", {})["market_feed"] = feed_work(logs)
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
        if not args.keep_running:
            stack("down", "-v", "--remove-orphans", check=False)
    report["seconds"]["total"] = round(time.monotonic() - started, 1)
    return report


async def lease_holders(redis) -> dict[str, dict[str, int]]:
    """Lease group -> holder (container hostname) -> partitions held at the end: who did the work."""
    out: dict[str, dict[str, int]] = {}
    async for key in redis.scan_iter(match="*:lease:*", count=1000):
        value = await redis.get(key)
        if value is None:
            continue
        group = key.decode().split(":lease:", 1)[1]
        holder = value.decode().rsplit("|", 1)[0]
        out.setdefault(group, {}).setdefault(holder, 0)
        out[group][holder] += 1
    return out


async def replica_work(redis) -> dict[str, dict[str, dict]]:
    """Service -> replica -> what its last heartbeat says it did (``WORK_FIELDS``)."""
    out: dict[str, dict[str, dict]] = {}
    for service, fields in WORK_FIELDS.items():
        for raw in await redis.zrange(streams.replicas(service), 0, -1):
            instance = raw.decode()
            beat = {k.decode(): v.decode() for k, v in (await redis.hgetall(streams.replica_heartbeat(service,
                                                                                                      instance))).items()}
            out.setdefault(service, {})[instance] = {f: beat.get(f) for f in fields}
    return out


def feed_work(logs: str) -> dict[str, str]:
    """Each market_feed container's last word on its replay (its heartbeat is removed when it stops):
    ``source ended: N trades in E entries (S already published before, skipped)``."""
    out = {}
    for m in re.finditer(r"^(market_feed\S*)\s+\|.*source ended: (.*)$", logs, re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


async def api_checks(bases: list[str], recs: list, refs: dict, expected: list[dict]) -> dict:
    """Each API replica (bearer token: the API listens beyond loopback in compose): its candles of every series
    against pandas, its alert history against the backtest."""
    out: dict = {"candles": {}, "alerts": {}, "errors": []}
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for i, base in enumerate(bases):
            try:
                history = await compare.api_alerts(client, base)
                out["alerts"][f"api{i}"] = compare_alerts(expected, {f"api{i}": history})[f"api{i}"]
                for rec in recs:
                    for tf in live_timeframes(rec.pair):
                        got = await compare.api_candles(client, base, rec.pair, tf)
                        out["candles"][f"api{i} {rec.pair} {tf}"] = await asyncio.to_thread(
                            compare_candles, reference_candles(refs[rec.pair], tf), got)
            except httpx.HTTPError as exc:
                out["errors"].append(f"api{i}: {exc!r}")
    c = list(out["candles"].values())
    a = list(out["alerts"].values())
    out["totals"] = {
        "replicas_answered": len(a), "candles_compared": sum(x["compared"] for x in c),
        "candles_wrong": sum(x["missing_count"] + x["extra_count"] + x["differing_count"] for x in c),
        "alerts_missing": sum(x["missing"] for x in a), "alerts_extra": sum(x["extra"] for x in a),
        "alerts_duplicated": sum(x["duplicated"] for x in a), "alerts_differing": sum(x["differing"] for x in a),
        "errors": len(out["errors"])}
    return out


async def series_digests(redis, recs: list) -> dict[str, dict]:
    """Every series' closed candles: count and a digest of every field (to compare two runs)."""
    out = {}
    for rec in recs:
        for tf in live_timeframes(rec.pair):
            entries = [e for n in await series_streams(redis, rec.pair, tf, DEFAULT_PARTITIONS)
                       for e in await read_entries(redis, n, set())]
            candles = final_candles(entries)
            out[f"{rec.pair} {tf}"] = {"candles": len(candles), "digest": digest(candles)}
    return out


def verdict(run: dict, replicas: int) -> list[str]:
    """What is wrong with one run (empty: nothing)."""
    wrong = []
    t = run.get("totals") or {}
    if not t:
        return ["no comparison (the run stopped early)"]
    wrong += [f"{k} {t[k]}" for k in EXACT if k not in ("api_candles_wrong", "api_errors") and t[k]]
    api = run["api"]["totals"]
    wrong += [f"api {k} {v}" for k, v in api.items() if k not in ("replicas_answered", "candles_compared") and v]
    if api["replicas_answered"] != replicas:
        wrong.append(f"{api['replicas_answered']} of {replicas} API replicas answered")
    if not t["candles_compared"] or not t["alerts_expected"] or not api["candles_compared"]:
        wrong.append("nothing compared")
    if run["seconds"].get("sources") is None:
        wrong.append("the feeds did not end")
    if run["seconds"].get("settle") is None:
        wrong.append(f"not settled: {run['not_settled'][:3]}")
    bad_exits = {k: v for k, v in run.get("feed_exits", {}).items() if v != 0}
    if bad_exits:
        wrong.append(f"feeds exited non-zero: {bad_exits}")
    if run.get("restarts"):
        wrong.append(f"containers restarted or not running at the end: {sorted(run['restarts'])}")
    return wrong


def across(one: dict, many: dict) -> dict:
    """The scaled run against the one-replica run: every series' candles, and the alerts the JSONL got."""
    series = sorted(set(one["series"]) | set(many["series"]))
    differ = [s for s in series if one["series"].get(s) != many["series"].get(s)]
    alerts = compare_alerts(one["delivered"], {"scaled": many["delivered"]})["scaled"]
    return {"series": len(series), "series_differing": differ,
            "candles": sum(v["candles"] for v in many["series"].values()),
            "alerts": {k: alerts[k] for k in ("delivered", "missing", "extra", "duplicated", "differing")}}


def summary(result: dict) -> list[str]:
    lines = [f"compose_scale: {'OK' if result['ok'] else 'FAILED'}; load average {result['load_before']} before, "
             f"{result['load_after']} after; backtest {result['backtest_s']} s"]
    for run in result["runs"]:
        t, api, s = run.get("totals", {}), run.get("api", {}).get("totals", {}), run["seconds"]
        lines.append(f"replicas {run['replicas']}: start {s.get('start')} s, feeds {s.get('sources')} s, settle "
                     f"{s.get('settle')} s, total {s.get('total')} s; feed containers {run.get('feed_containers')}")
        if t:
            lines.append(f"  trades {t['trades_expected']:,}: missing {t['trades_missing']} doubled "
                         f"{t['trades_doubled']} differing {t['trades_differing']}")
            lines.append(f"  candles {t['candles_compared']:,}/{t['candles_expected']:,} vs pandas: missing "
                         f"{t['candles_missing']} extra {t['candles_extra']} doubled {t['candles_doubled']} differing "
                         f"{t['candles_differing']}; API x{api.get('replicas_answered')}: "
                         f"{api.get('candles_compared'):,} compared, {api.get('candles_wrong')} wrong")
            lines.append(f"  alerts {t['alerts_expected']} (backtest): missing {t['alerts_missing']} extra "
                         f"{t['alerts_extra']} dup {t['alerts_duplicated']} differing {t['alerts_differing']} "
                         f"(webhook+JSONL); API history missing {api.get('alerts_missing')} extra "
                         f"{api.get('alerts_extra')}; repeated on the wire {t['webhook_raw_repeated_ids']}")
        lines.append(f"  leases at the end: {run.get('leases')}")
        for service, replicas in run.get("work", {}).items():
            lines.append(f"  {service}: {replicas}")
        cpu = {k: v['cpu_s'] for k, v in run.get("containers", {}).items()}
        lines.append(f"  container CPU s: {cpu}")
        if run.get("problems"):
            lines.append(f"  PROBLEMS: {run['problems']}")
    if "across" in result:
        a = result["across"]
        lines.append(f"1 vs {result['runs'][-1]['replicas']} replicas: {a['series']} series, "
                     f"{len(a['series_differing'])} differing {a['series_differing'][:4]}; alerts {a['alerts']}")
    return lines


async def main_async(args: argparse.Namespace, work: Path) -> dict:
    cpu0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    recs = recordings(args.data, DEFAULT_RECORDINGS)
    refs = {r.pair: recording(r.path) for r in recs}
    args.speeds = {r.name: (int(refs[r.pair]["ts"].max()) - int(refs[r.pair]["ts"].min())) / 1000 / args.wall
                   for r in recs}
    result: dict = {"bench": "compose_scale", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "load_before": os.getloadavg(), "wall_s": args.wall, "speeds": args.speeds,
                    "pairs": [str(r.pair) for r in recs], "runs": []}
    rules = work / "rules.yaml"
    rules.write_text(RULES)
    t0 = time.monotonic()
    bt = await backtest(recs, rules, backtest_settings(work / "backtest.yaml", rules), work / "backtest")
    result["backtest_s"] = round(time.monotonic() - t0, 1)
    expected = read_jsonl(bt / "alerts.jsonl")
    result["backtest_alerts"] = len(expected)
    for n in ([1, args.replicas] if args.replicas != 1 else [1]):
        try:
            run = await run_stack(n, args, work, recs, refs, expected)
        except Exception as exc:  # the report says what failed; the other run still goes
            run = {"replicas": n, "seconds": {}, "error": repr(exc)}
        run["problems"] = [run["error"]] if "error" in run else verdict(run, n)
        result["runs"].append(run)
    if len(result["runs"]) == 2 and all("series" in r for r in result["runs"]):
        result["across"] = across(*result["runs"])
    a = result.get("across")
    result["ok"] = (all(not r["problems"] for r in result["runs"])
                    and (a is None or (not a["series_differing"] and not any(
                        a["alerts"][k] for k in ("missing", "extra", "duplicated", "differing")))))
    for run in result["runs"]:
        run.pop("delivered", None)
    result["load_after"] = os.getloadavg()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["bench_cpu_s"] = {"self": round(cpu1[0].ru_utime + cpu1[0].ru_stime - cpu0[0].ru_utime - cpu0[0].ru_stime,
                                           1),
                             "children (backtest, docker-compose)": round(
                                 cpu1[1].ru_utime + cpu1[1].ru_stime - cpu0[1].ru_utime - cpu0[1].ru_stime, 1)}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=2, help="replicas of every service in the scaled run")
    p.add_argument("--wall", type=float, default=40.0, help="seconds each recording's replay is paced to take")
    p.add_argument("--settle-timeout", type=float, default=240.0)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--keep", type=Path, default=None, help="keep settings, outputs and container logs here")
    p.add_argument("--keep-running", action="store_true", help="leave each stack up (docker-compose -p "
                   "sentinelscale<N> ... down -v to remove it)")
    p.add_argument("--out", default="compose_scale.json", help="file name under bench/results")
    args = p.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(main_async(args, args.keep.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="compose-scale-") as tmp:
            result = asyncio.run(main_async(args, Path(tmp)))
    path = write_result(args.out, json.loads(json.dumps(result, default=str)))  # numpy ints of pandas indexes
    print("\n".join(summary(result)))
    print(f"full result: {path}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
