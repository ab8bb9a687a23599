"""One scale-out run: ``replicas`` processes of every service on the Redis at ``url`` (a Cluster when ``cluster``),
SIGKILLs of replicas at planned or random times (each restarted after a while), optionally a Redis failover; then
``compare.everything``. ``run_scale_out(plan, workdir, data_dir, url, cluster, failover)`` returns the report (a
JSON-able dict). Used by tests/integration/test_scale_out_cluster.py and bench/chaos_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from shared import streams
from shared.embedded_redis import free_port
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.redisconn import connect
from tests.integration.notifier.receivers import webhook_receiver
from tests.support.chaos.layout import Pair
from tests.support.chaos.processes import Service, clean_env, process_counts, sentinel_argv, stop_all, supervise
from tests.support.chaos.progress import REDIS_DOWN, wait_for
from tests.support.chaos.verify import read_jsonl, recording
from tests.support.scale_out import compare
from tests.support.scale_out.progress import holder, lagging, lease_values, work_streams
from tests.support.scale_out.sources import (BUILDER_TIMEFRAMES, DEFAULT_RECORDINGS, EXPLICIT_SERIES, RULES,
                                             Recording, backtest_settings, live_timeframes, recordings,
                                             settings_file)

KINDS = ("market_feed", "candle_builder", "alert_engine", "notifier", "api")
CONSUMERS = ("candle_builder", "alert_engine", "notifier", "api")


@dataclass
class ScalePlan:
    """``wall_s``: each recording is paced to take about this long. ``kills``: SIGKILLs of service replicas, dealt
    over ``KINDS`` in turn (``random_times``: at random times in the first 85 % of the replay; else evenly spread
    over 20-75 %). Each victim is restarted after ``down_s`` (a random value in the range). ``failover_at``: a
    fraction of ``wall_s`` when the ``failover`` callable runs (a Redis failover)."""

    recordings: tuple[str, ...] = DEFAULT_RECORDINGS
    wall_s: float = 40.0
    replicas: int = 2
    kills: int = len(KINDS)
    random_times: bool = False
    down_s: tuple[float, float] = (1.0, 3.0)
    failover_at: float | None = None
    seed: int = 21
    partitions: int = DEFAULT_PARTITIONS
    settle_timeout_s: float = 120.0
    takeover_timeout_s: float = 60.0
    settings: dict = field(default_factory=dict)  # extra settings-file sections (merged)


def _consumer(kind: str, n: int, rec: Recording | None = None) -> str:
    return f"so-{kind}-{rec.name}-{n}" if rec else f"so-{kind}-{n}"


def build_services(recs: list[Recording], speeds: dict[Pair, float], config: Path, logs: Path,
                   replicas: int) -> tuple[list[Service], list[str]]:
    """Every process of the run (not started) and the API replicas' base URLs."""
    out, api_bases = [], []
    for kind in CONSUMERS:
        for n in range(replicas):
            env = {"SENTINEL_CONSUMER_NAME": _consumer(kind, n)}
            if kind == "api":
                port = free_port()
                env["SENTINEL_API_PORT"] = str(port)
                api_bases.append(f"http://127.0.0.1:{port}")
            out.append(Service(kind, f"{kind}#{n}", sentinel_argv(kind.replace("_", "-"), "--config", str(config)),
                               clean_env(env), logs / f"{kind}-{n}.log"))
    for rec in recs:
        for n in range(replicas):
            env = {"SENTINEL_CONSUMER_NAME": _consumer("market_feed", n, rec), "SENTINEL_MODE": "replay",
                   "SENTINEL_REPLAY_FILE": str(rec.path), "SENTINEL_EXCHANGE": rec.pair.exchange,
                   "SENTINEL_SYMBOL": rec.pair.symbol, "SENTINEL_SPEED": f"{speeds[rec.pair]:.3f}"}
            out.append(Service("market_feed", f"market_feed[{rec.name}]#{n}",
                               sentinel_argv("market-feed", "--config", str(config)), clean_env(env),
                               logs / f"market_feed-{rec.name}-{n}.log", finite=True, pair=rec.pair))
    return out, api_bases


async def backtest(recs: list[Recording], rules: Path, config: Path, out: Path) -> Path:
    """One clean one-process ``sentinel backtest`` of every file together (the multi-symbol rule reads two of them),
    the timeframes the live run builds, keeping the alerts of partial bars (the live run fires at every close)."""
    inputs = [r.backtest_input(out.parent / "inputs") for r in recs]
    tfs = BUILDER_TIMEFRAMES + sorted({tf for _, _, tf in EXPLICIT_SERIES})
    proc = await asyncio.create_subprocess_exec(
        *sentinel_argv("backtest", *map(str, inputs), "--rules", str(rules), "--out", str(out), "--config",
                       str(config), "--timeframes", ",".join(tfs), "--keep-partial-alerts"),
        env=clean_env({}), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"reference backtest failed ({proc.returncode}): {err.decode()[-2000:]}")
    return out


def _groups_of(svc: Service, partitions: int) -> list[tuple[str, int]]:
    """The (lease group, partition) pairs a replica of ``svc``'s kind may hold, for the run's pairs."""
    if svc.kind == "market_feed":
        assert svc.pair is not None
        p = partition_of(svc.pair.exchange, svc.pair.symbol, partitions)
        return [(f"{streams.feed_group(svc.pair.exchange)}|{svc.pair.symbol}", p),
                (streams.feed_group(svc.pair.exchange), p)]
    if svc.kind in ("candle_builder", "alert_engine"):
        return [(svc.kind, p) for p in range(partitions)]
    return []


@dataclass
class Chaos:
    """Kills replicas, restarts them, and measures how long their partitions (or pending alerts) took to move."""

    redis: object
    services: list[Service]
    paused: set[str]
    rng: random.Random
    plan: ScalePlan
    api_bases: list[str]
    started: float = field(default_factory=time.monotonic)
    log: list[dict] = field(default_factory=list)
    _measures: list[asyncio.Task] = field(default_factory=list)

    async def kill(self, kind: str) -> None:
        candidates = [s for s in self.services if s.kind == kind and s.running and s.name not in self.paused]
        if not candidates:
            self.log.append({"t": self._t(), "kind": kind, "skipped": "no replica running"})
            return
        held: dict[str, dict] = {}
        for svc in candidates:  # prefer a replica doing work (a lease holder) over a standby
            name = svc.env["SENTINEL_CONSUMER_NAME"]
            for group, p in _groups_of(svc, self.plan.partitions):
                value = (await lease_values(self.redis, group, [p]))[p]
                if holder(value) == name:
                    held.setdefault(svc.name, {})[f"{group}#{p}"] = value
        busy = [s for s in candidates if s.name in held]
        seen = {f"{g}#{p}": (await lease_values(self.redis, g, [p]))[p] for g, p in _groups_of(candidates[0],
                                                                                      self.plan.partitions)}
        victim = self.rng.choice(busy or candidates)
        down = self.rng.uniform(*self.plan.down_s)
        entry = {"t": self._t(), "kind": kind, "victim": victim.name, "held": held.get(victim.name, {}),
                 "down_s": round(down, 2)}
        if not busy and seen:
            entry["no_holder_among"] = {k: v for k, v in seen.items() if v is not None} or "no lease held"
        pending = await self._pending(victim) if kind == "notifier" else None
        self.paused.add(victim.name)
        try:
            await victim.kill()
            killed = time.monotonic()
            self.log.append(entry)
            self._measures.append(asyncio.create_task(self._measure(entry, victim, killed, pending)))
            await asyncio.sleep(down)
            await victim.start()
        finally:
            self.paused.discard(victim.name)

    def _t(self) -> float:
        return round(time.monotonic() - self.started, 2)

    async def _pending(self, svc: Service) -> list[tuple[str, bytes]]:
        """The alerts entries pending at ``svc``'s consumer: (stream, entry id)."""
        name = svc.env["SENTINEL_CONSUMER_NAME"]
        out = []
        for p in range(self.plan.partitions):
            stream = streams.part_alerts(p)
            with contextlib.suppress(Exception):
                for e in await self.redis.xpending_range(stream, streams.GROUP_NOTIFIER, min="-", max="+",
                                                         count=10_000, consumername=name):
                    out.append((stream, e["message_id"]))
        return out

    async def _measure(self, entry: dict, victim: Service, killed: float,
                       pending: list[tuple[str, bytes]] | None) -> None:
        """takeover_s: every lease the victim held is held again (by another replica or its restart, with a new
        token); for a notifier, its pending alerts delivered; for an API, the other replica answered meanwhile."""
        timeout = self.plan.takeover_timeout_s
        if entry["held"]:
            moved: dict[str, dict] = {}

            async def all_moved() -> bool:
                for key, old in entry["held"].items():
                    if key in moved:
                        continue
                    group, p = key.rsplit("#", 1)
                    now = (await lease_values(self.redis, group, [int(p)]))[int(p)]
                    if now is not None and now != old:
                        moved[key] = {"by": now, "after_s": round(time.monotonic() - killed, 2)}
                return len(moved) == len(entry["held"])
            took = await wait_for(all_moved, timeout, every=0.1)
            entry["takeover_s"] = None if took is None else round(took, 2)
            entry["moved"] = moved
            entry["taken_by_other"] = sum(1 for m in moved.values() if holder(m["by"]) != holder(
                next(iter(entry["held"].values()))))
        elif victim.kind == "notifier" and pending:
            entry["pending_at_kill"] = len(pending)
            took = await wait_for(lambda: self._acked(pending), timeout, every=0.1)
            entry["takeover_s"] = None if took is None else round(took, 2)
        elif victim.kind == "notifier":
            entry["pending_at_kill"] = 0
        elif victim.kind == "api":
            others = [b for s, b in zip([s for s in self.services if s.kind == "api"], self.api_bases)
                      if s is not victim]
            async with httpx.AsyncClient(timeout=5) as client:
                codes = []
                for base in others:
                    with contextlib.suppress(httpx.HTTPError):
                        codes.append((await client.get(f"{base}/series")).status_code)
            entry["other_replica_answered"] = codes

    async def _acked(self, pending: list[tuple[str, bytes]]) -> bool:
        """None of ``pending`` is pending at any consumer any more (delivered and acked by a replica)."""
        for stream, eid in pending:
            if await self.redis.xpending_range(stream, streams.GROUP_NOTIFIER, min=eid, max=eid, count=1):
                return False
        return True

    async def failover(self, run: Callable[[], Awaitable[dict]]) -> None:
        t0 = time.monotonic()
        entry = {"t": self._t(), "kind": "redis_failover"}
        self.log.append(entry)
        entry.update(await run())
        entry["took_s"] = round(time.monotonic() - t0, 2)

    async def finish(self) -> None:
        await asyncio.gather(*self._measures, return_exceptions=True)


def _times(plan: ScalePlan, rng: random.Random) -> list[tuple[float, str]]:
    kinds: list[str] = []
    while len(kinds) < plan.kills:
        kinds += rng.sample(KINDS, len(KINDS)) if plan.random_times else list(KINDS)
    kinds = kinds[:plan.kills]
    if plan.random_times:
        at = sorted(rng.uniform(0.05, 0.85) * plan.wall_s for _ in kinds)
    else:
        at = [plan.wall_s * (0.2 + 0.55 * i / max(1, len(kinds) - 1)) for i in range(len(kinds))]
    return list(zip(at, kinds))


async def _schedule(chaos: Chaos, plan: ScalePlan, failover: Callable[[], Awaitable[dict]] | None,
                    until: asyncio.Event) -> None:
    events: list[tuple[float, str]] = _times(plan, chaos.rng)
    if failover is not None and plan.failover_at is not None:
        events.append((plan.failover_at * plan.wall_s, "failover"))
    for at, what in sorted(events):
        delay = chaos.started + at - time.monotonic()
        if delay > 0 and not until.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), delay)
        if what == "failover":
            assert failover is not None
            await chaos.failover(failover)
        else:
            await chaos.kill(what)


async def ready(redis, api_bases: list[str]) -> bool:
    """The engines subscribed to the series the rules name, and every API replica answers."""
    wanted = set(EXPLICIT_SERIES)
    if not wanted <= await subscribed(redis):
        return False
    async with httpx.AsyncClient(timeout=2) as client:
        for base in api_bases:
            try:
                await client.get(f"{base}/health")
            except httpx.HTTPError:
                return False
    return True


async def subscribed(redis) -> set[tuple[str, ...]]:
    """Every series some subscriber instance asked for, read key by key (``Subscriptions.read_all`` pipelines a
    TIME, which redis-py's cluster pipeline refuses)."""
    out: set[tuple[str, ...]] = set()
    for instance in await redis.smembers(streams.SUBSCRIBERS):
        name = instance.decode() if isinstance(instance, bytes) else instance
        for member in await redis.hkeys(streams.subscriber(name)):
            parts = streams.split_registry_member(member)
            if len(parts) == 3:
                out.add(tuple(parts))
    return out


def _summary(log: list[dict], services: list[Service]) -> dict:
    kills: dict[str, int] = {}
    for s in services:
        kills[s.kind] = kills.get(s.kind, 0) + s.kills
    takeovers: dict[str, dict] = {}
    for kind in KINDS:
        times = [e["takeover_s"] for e in log if e.get("kind") == kind and "takeover_s" in e]
        done = [t for t in times if t is not None]
        by_other = sum(1 for e in log if e.get("kind") == kind and e.get("held")
                       and e.get("taken_by_other") == len(e["held"]))
        if times:
            takeovers[kind] = {"measured": len(times), "not_taken_over": len(times) - len(done),
                               "all_by_another_replica": by_other,
                               "median_s": round(statistics.median(done), 2) if done else None,
                               "min_s": min(done, default=None), "max_s": max(done, default=None)}
    return {"kills": kills, "takeovers": takeovers, "crashes": {s.name: s.crashes for s in services if s.crashes}}


async def run_scale_out(plan: ScalePlan, workdir: Path, data_dir: Path, url: str, cluster: bool,
                        failover: Callable[[], Awaitable[dict]] | None = None, flush: bool = True) -> dict:
    """Run ``plan`` in ``workdir`` against the Redis at ``url``; the report."""
    started = time.monotonic()
    rng = random.Random(plan.seed)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    recs = recordings(data_dir, plan.recordings)
    pairs = [r.pair for r in recs]
    refs = {r.pair: recording(r.path) for r in recs}
    speeds = {p: (int(df["ts"].max()) - int(df["ts"].min())) / 1000 / plan.wall_s for p, df in refs.items()}
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    jsonl = workdir / "alerts.jsonl"
    redis = connect(url, cluster=cluster)
    if flush:
        await redis.flushall()
    names = work_streams(pairs, {p: live_timeframes(p) for p in pairs}, plan.partitions)
    # The reference first, alone: run beside the pipeline's processes on a loaded 2-core box, the backtest's own
    # candle_builder lost its leases (a loop paused past lease_ttl_ms) and stopped with KeyError (seen 2026-12-06).
    t0 = time.monotonic()
    bt = await backtest(recs, rules, backtest_settings(workdir / "backtest.yaml", rules), workdir / "backtest")
    backtest_s = round(time.monotonic() - t0, 1)
    services: list[Service] = []
    stop_supervisor = asyncio.Event()
    report: dict = {"bench": "scale_out", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "plan": asdict(plan), "cluster": cluster, "seconds": {"backtest": backtest_s}}
    try:
        async with webhook_receiver() as hook:
            config = settings_file(workdir / "sentinel.yaml", redis_url=url, cluster=cluster, rules=rules,
                                   jsonl=jsonl, hook_url=hook.url,
                                   extra={"partitions": plan.partitions, **plan.settings})
            services, api_bases = build_services(recs, speeds, config, logs, plan.replicas)
            for svc in services:
                if svc.kind != "market_feed":
                    await svc.start()
            if await wait_for(lambda: ready(redis, api_bases), 120, every=0.2) is None:
                raise RuntimeError(f"the engines did not subscribe to {EXPLICIT_SERIES} (or an API did not answer) "
                                   f"within 120 s; see {logs}")
            report["seconds"]["start"] = round(time.monotonic() - started, 1)
            for svc in services:
                if svc.kind == "market_feed":
                    await svc.start()
            async def feeding() -> bool:  # the schedule's clock starts when every recording is being replayed
                for rec in recs:
                    part = partition_of(rec.pair.exchange, rec.pair.symbol, plan.partitions)
                    group = f"{streams.feed_group(rec.pair.exchange)}|{rec.pair.symbol}"
                    if (await lease_values(redis, group, [part]))[part] is None:
                        return False
                return True
            if await wait_for(feeding, 120, every=0.1) is None:
                raise RuntimeError(f"the feeds did not take their leases within 120 s; see {logs}")
            report["seconds"]["feeds_start"] = round(time.monotonic() - started, 1)
            paused: set[str] = set()
            supervisor = asyncio.create_task(supervise(services, stop_supervisor, paused))
            chaos = Chaos(redis, services, paused, rng, plan, api_bases)
            ended = asyncio.Event()
            schedule = asyncio.create_task(_schedule(chaos, plan, failover, ended))
            feeds = [s for s in services if s.kind == "market_feed"]
            budget = plan.wall_s * 3 + 120

            async def fed() -> bool:
                return all(s.finished for s in feeds)
            fed_s = await wait_for(fed, budget, every=0.2)
            ended.set()
            await schedule
            if fed_s is not None and await wait_for(fed, budget, every=0.2) is None:  # a late kill restarted one
                fed_s = None
            await chaos.finish()
            behind: list[str] = []

            async def settled() -> bool:
                nonlocal behind
                behind = await lagging(redis, names, pairs, plan.partitions)
                if behind:
                    return False
                before = len(read_jsonl(jsonl))
                await asyncio.sleep(1.5)  # and still so a moment later, with nothing more delivered
                behind = await lagging(redis, names, pairs, plan.partitions)
                return not behind and len(read_jsonl(jsonl)) == before
            settle_s = await wait_for(settled, plan.settle_timeout_s, every=0.5)
            report["leases"] = {k.decode(): (await redis.get(k) or b"").decode()
                                async for k in redis.scan_iter(match="*:lease:*", count=1000)}
            report.update({"sources_ended": fed_s is not None, "settled": settle_s is not None,
                           "not_settled": behind[:20], "events": chaos.log, **_summary(chaos.log, services),
                           "processes": process_counts(services)})
            report["seconds"].update({"sources": fed_s and round(fed_s, 1), "settle": settle_s and round(settle_s, 1)})
            expected = read_jsonl(bt / "alerts.jsonl")
            report.update(await compare.everything(redis, pairs, refs, plan.partitions, expected, jsonl, hook,
                                                   api_bases))
            stop_supervisor.set()
            await supervisor
    finally:
        await stop_all(services, stop_supervisor)
        with contextlib.suppress(*REDIS_DOWN):
            await redis.aclose()
    report["seconds"]["total"] = round(time.monotonic() - started, 1)
    report["ok"] = compare.ok(report)
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report
