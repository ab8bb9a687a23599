"""One chaos run of the whole pipeline: redis-server with AOF, the four services as separate processes on real
recordings (one of them through ``sentinel exchange-sim`` and market_feed's live mode), a webhook receiver that honours
Idempotency-Key and a JSONL file; the chaos schedule (``scenario``); then every comparison (``verify``).

``run_chaos(plan, workdir, data_dir)`` returns the report (a dict, JSON-able). Used by bench/chaos_pipeline.py and
tests/integration/test_pipeline_chaos.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.bus import FIELD
from shared.embedded_redis import EmbeddedRedis, find_redis_server, free_port
from shared.feed_codec import encode_watermark
from shared.runtime import connect
from shared.schemas import Watermark
from tests.integration.notifier.receivers import webhook_receiver
from tests.support.chaos import checks
from tests.support.chaos.inject import KINDS, Injector
from tests.support.chaos.layout import Layout, layout
from tests.support.chaos.processes import Service, clean_env, process_counts, sentinel_argv, stop_all, supervise
from tests.support.chaos.progress import Probe, wait_for
from tests.support.chaos.scenario import Chaos, schedule
from tests.support.chaos.sources import (BUILDER_TIMEFRAMES, EXPLICIT_SERIES, RULES, TIMEFRAMES, Source,
                                         backtest_settings, settings_file, sources)
from tests.support.chaos.verify import recording
from tests.support.redis_sentinel import FailoverOnKill

CONSUMERS = ("candle_builder", "alert_engine", "notifier")


@dataclass
class ChaosPlan:
    """What one run does. ``wall_s``: each recording is paced to take about this long; faults fall in its first
    85 %. ``replicas``: processes of each service (and of each pair's feed)."""

    recordings: list[str] = field(default_factory=lambda: ["btcusdt", "xrpeth", "kraken"])
    live: str | None = "xrpeth"  # the recording served by the exchange simulator and read in live mode
    wall_s: float = 60.0
    replicas: int = 1
    service_kills: int = 8
    redis_kills: int = 1
    outage_s: float = 0.0
    injections: int = 1
    drops: int = 2
    oversized_bytes: int = 1_200_000
    inject_kinds: tuple[str, ...] = KINDS
    appendfsync: str = "everysec"  # redis-server's AOF policy (everysec: what sentinel's embedded Redis runs)
    restart_grace_s: float = 0.0  # a Redis fault waits until restarted processes have run this long (0: no wait)
    down_s: tuple[float, float] = (0.1, 1.5)
    seed: int = 1
    sabotage: bool = False
    settle_timeout_s: float = 120.0
    sentinel: bool = False  # a master, a replica and a Sentinel: each Redis kill is a SIGKILL of the master + failover
    wait_replicas: int = 0  # redis_wait_replicas of every service
    replica_lag_s: float = 0.0  # with sentinel: replication cut this long before each master kill (FailoverOnKill)
    recovery_timeout_s: float = 60.0


def _redis_binary(workdir: Path, appendfsync: str) -> str | None:
    """redis-server with another ``appendfsync`` (a wrapper script: EmbeddedRedis' own arguments come first, the
    last one given wins)."""
    if appendfsync == "everysec":
        return None
    wrapper = workdir / "redis-server"
    wrapper.write_text(f'#!/bin/sh\nexec {find_redis_server()} "$@" --appendfsync {appendfsync}\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _feed_env(src: Source, speed: float, sim_urls: tuple[str, str] | None, n: int) -> dict[str, str]:
    env = {"SENTINEL_CONSUMER_NAME": f"chaos-market_feed-{src.pair.exchange}-{src.pair.symbol}-{n}"}
    if src.live:
        assert sim_urls is not None
        env.update(SENTINEL_MODE="live", SENTINEL_EXCHANGES=json.dumps([{
            "id": src.pair.exchange, "symbols": [src.pair.symbol], "ws_url": sim_urls[0], "rest_url": sim_urls[1]}]))
    else:
        env.update(SENTINEL_MODE="replay", SENTINEL_REPLAY_FILE=str(src.path), SENTINEL_EXCHANGE=src.pair.exchange,
                   SENTINEL_SYMBOL=src.pair.symbol, SENTINEL_SPEED=f"{speed:.3f}")
    return clean_env(env)


def build_services(srcs: list[Source], speeds: dict, config: Path, logs: Path, replicas: int,
                   sim_urls: tuple[str, str] | None) -> list[Service]:
    out = []
    for kind in CONSUMERS:
        for n in range(replicas):
            out.append(Service(kind, f"{kind}#{n}", sentinel_argv(kind.replace("_", "-"), "--config", str(config)),
                               clean_env({"SENTINEL_CONSUMER_NAME": f"chaos-{kind}-{n}"}), logs / f"{kind}-{n}.log"))
    for src in srcs:
        for n in range(replicas):
            tag = f"{src.pair.exchange}-{src.pair.symbol.replace('/', '')}{'-live' if src.live else ''}"
            out.append(Service("market_feed", f"market_feed[{src.pair}{' live' if src.live else ''}]#{n}",
                               sentinel_argv("market-feed", "--config", str(config)),
                               _feed_env(src, speeds[src.pair], sim_urls, n), logs / f"market_feed-{tag}-{n}.log",
                               finite=not src.live, pair=src.pair, live=src.live))
    return out


async def _start_sim(src: Source, speed: float, config: Path, logs: Path) -> tuple[asyncio.subprocess.Process, str]:
    """``sentinel exchange-sim`` replaying ``src``; its base URL once it answers."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *sentinel_argv("exchange-sim", "--config", str(config), "--trades", str(src.path), "--symbol",
                       src.pair.symbol, "--port", str(port), "--speed", f"{speed:.3f}"),
        env=clean_env({}), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=open(logs / "exchange_sim.log", "ab"))
    base = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        if proc.returncode is not None:
            raise RuntimeError(f"exchange-sim exited {proc.returncode}; see {logs / 'exchange_sim.log'}")
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"{base}/api/v3/ping", timeout=1)
            return True
        except OSError:
            return False
    if await wait_for(answers, 60, every=0.1) is None:
        raise RuntimeError("exchange-sim did not answer within 60 s")
    return proc, base


async def _backtests(srcs: list[Source], rules: Path, config: Path, out: Path) -> dict:
    """A clean ``sentinel backtest`` of each recording with the same rules and pipeline settings, one at a time,
    keeping the alerts of partial bars (the live run fires at every close it sees).

    The timeframes only rules ask for are named on its command line: a backtest left to learn them from the alert
    engine's subscription builds none of them when its candle builder reads the recording first (seen here under
    load: no 1s candle and no 1s alert of BTC/USDT)."""
    dirs = {}
    for src in srcs:
        target = out / f"{src.pair.exchange}-{src.pair.symbol.replace('/', '-')}"
        tfs = BUILDER_TIMEFRAMES + [tf for p, tf in EXPLICIT_SERIES if p == src.pair]
        proc = await asyncio.create_subprocess_exec(
            *sentinel_argv("backtest", str(src.path), "--rules", str(rules), "--out", str(target), "--exchange",
                           src.pair.exchange, "--symbol", src.pair.symbol, "--config", str(config),
                           "--timeframes", ",".join(tfs), "--keep-partial-alerts"),
            env=clean_env({}), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"reference backtest of {src.path} failed ({proc.returncode}): {err.decode()[-2000:]}")
        dirs[src.pair] = target
    return dirs


async def _sources_done(probe: Probe, services: list[Service], srcs: list[Source], last_ids: dict) -> bool:
    for src in srcs:
        if src.live:
            if await probe.last_id(src.pair) != last_ids[src.pair]:
                return False
        elif not all(s.finished for s in services if s.pair == src.pair):
            return False
    return True


async def _settled(probe: Probe) -> bool:
    """Every group caught up, and still so a second later (nothing was on its way)."""
    if not await probe.all_caught_up():
        return False
    await asyncio.sleep(1.0)
    return await probe.all_caught_up()


def _summary_of(chaos_log: list[dict], services: list[Service]) -> dict:
    recoveries: dict[str, list] = {}
    for e in chaos_log:
        if "recovered_s" in e:
            recoveries.setdefault(e.get("kind") or e["what"], []).append(e["recovered_s"])
    out = {}
    for kind, times in sorted(recoveries.items()):
        done = [t for t in times if t is not None]
        out[kind] = {"restarts": len(times), "not_recovered": len(times) - len(done),
                     "median_s": round(statistics.median(done), 3) if done else None,
                     "min_s": min(done, default=None), "max_s": max(done, default=None)}
    kills: dict[str, int] = {}
    for s in services:
        kills[s.kind] = kills.get(s.kind, 0) + s.kills
    return {"kills": kills, "redis_kills": sum(e["what"] == "redis_kill" for e in chaos_log),
            "outages": [e["down_s"] for e in chaos_log if e["what"] == "outage"],
            "drops": sum(e["what"] == "drop" for e in chaos_log), "recoveries": out,
            "crashes": {s.name: s.crashes for s in services if s.crashes}}


async def run_chaos(plan: ChaosPlan, workdir: Path, data_dir: Path) -> dict:
    """Run ``plan`` in ``workdir`` on the recordings under ``data_dir``; the report."""
    started = time.monotonic()
    rng = random.Random(plan.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    srcs = sources(data_dir, plan.recordings, plan.live)
    refs = {s.pair: recording(s.path) for s in srcs}
    speeds = {p: (int(df["ts"].max()) - int(df["ts"].min())) / 1000 / plan.wall_s for p, df in refs.items()}
    names: Layout = layout([s.pair for s in srcs], TIMEFRAMES)
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    jsonl = workdir / "alerts.jsonl"
    server: EmbeddedRedis | FailoverOnKill = (
        FailoverOnKill(workdir / "redis", lag_s=plan.replica_lag_s) if plan.sentinel else
        EmbeddedRedis(workdir / "redis", persist=True, binary=_redis_binary(workdir, plan.appendfsync)))
    await asyncio.to_thread(server.start)
    redis = connect(server.url)
    probe = Probe(redis, names)
    services: list[Service] = []
    sim = None
    backtests = asyncio.create_task(_backtests(srcs, rules, backtest_settings(workdir / "backtest.yaml", rules, 1),
                                               workdir / "backtest"))
    stop_supervisor = asyncio.Event()
    try:
        async with webhook_receiver() as hook:
            config = settings_file(workdir / "sentinel.yaml", redis_url=server.url, rules=rules, jsonl=jsonl,
                                   hook_url=hook.url, replicas=plan.replicas, wait_replicas=plan.wait_replicas)
            live_src = next((s for s in srcs if s.live), None)
            sim_urls, base = None, None
            if live_src is not None:
                sim, base = await _start_sim(live_src, speeds[live_src.pair], config, logs)
                sim_urls = (f"ws://{base.split('://')[1]}/stream", f"{base}/api/v3")
            services = build_services(srcs, speeds, config, logs, plan.replicas, sim_urls)
            for svc in services:
                if svc.kind != "market_feed":
                    await svc.start()
            if await wait_for(probe.engine_started, 120, every=0.2) is None:
                raise RuntimeError(f"alert_engine did not take its partitions within 120 s; see {logs}")
            for svc in services:
                if svc.kind == "market_feed":
                    await svc.start()
            paused: set[str] = set()
            supervisor = asyncio.create_task(supervise(services, stop_supervisor, paused))
            injector = Injector(redis, names, plan.oversized_bytes, tuple(plan.inject_kinds))
            pair_tfs = {s.pair: TIMEFRAMES for s in srcs}

            async def inject() -> int:
                now = {p: int((await probe.exchange_time(p)) or refs[p]["ts"].iloc[0]) for p in refs}
                return await injector.round(now, pair_tfs)

            chaos = Chaos(services, server, probe, paused, rng, inject, sim_url=base,
                          recovery_timeout_s=plan.recovery_timeout_s, restart_grace_s=plan.restart_grace_s)
            events = schedule(rng, window=(3.0, 3.0 + 0.85 * plan.wall_s), kinds=["market_feed", *CONSUMERS],
                              kills=plan.service_kills, redis_kills=plan.redis_kills, outage_s=plan.outage_s,
                              injections=plan.injections, drops=plan.drops if live_src else 0, down=plan.down_s)
            ended = asyncio.Event()
            chaos_task = asyncio.create_task(chaos.run(events, ended))
            last_ids = {p: int(df["id"].iloc[-1]) for p, df in refs.items()}
            budget = plan.wall_s * 3 + plan.outage_s + 120
            fed_s = await wait_for(lambda: _sources_done(probe, services, srcs, last_ids), budget, every=0.2)
            ended.set()
            await chaos_task
            await wait_for(lambda: _sources_done(probe, services, srcs, last_ids), budget, every=0.2)  # a late kill
            for svc in services:
                if svc.live:
                    paused.add(svc.name)
                    await svc.stop()
            for src in srcs:
                if src.live:  # the end of the recording, as `sentinel demo --live` marks it after its live feed
                    end = Watermark(src.pair.exchange, src.pair.symbol, int(refs[src.pair]["ts"].max()), final=True)
                    await redis.xadd(names.trades[src.pair], {FIELD: encode_watermark(end)})
            await chaos.finish()
            settle_s = await wait_for(lambda: _settled(probe), plan.settle_timeout_s, every=0.2)
            report = {"bench": "chaos_pipeline", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "plan": asdict(plan), "speeds": {str(p): round(v, 3) for p, v in speeds.items()},
                      "seconds": {"sources": fed_s and round(fed_s, 1), "settle": settle_s and round(settle_s, 1)},
                      "sources_ended": fed_s is not None, "settled": settle_s is not None,
                      **_summary_of(chaos.log, services), "events": chaos.log,
                      "failovers": getattr(server, "failovers", 0),
                      "processes": process_counts(services)}
            bt_dirs = await backtests
            report.update(await checks.everything(redis, names, srcs, refs, bt_dirs, jsonl, hook, injector))
            if plan.sabotage:
                report["sabotage"] = await checks.sabotage(redis, names, srcs, refs, bt_dirs, jsonl, hook, probe)
            stop_supervisor.set()
            await supervisor
    finally:
        await stop_all(services, stop_supervisor)
        if sim is not None and sim.returncode is None:
            sim.terminate()
            await sim.wait()
        if not backtests.done():
            backtests.cancel()
            with contextlib.suppress(BaseException):
                await backtests
        await redis.aclose()
        await asyncio.to_thread(server.stop)
    report["seconds"]["total"] = round(time.monotonic() - started, 1)
    report["ok"] = checks.ok(report)
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report
