"""Issue 25: every service's Prometheus endpoint scraped after an end-to-end run on a real recording.

market_feed (live mode: ``sentinel exchange-sim`` serves the recording, read through ccxt.pro), candle_builder,
alert_engine, notifier and the API run as separate processes (the chaos harness' ``Service``), each with its own
``SENTINEL_METRICS_PORT``. Once the recording is through, each endpoint is scraped and parsed with
prometheus_client's parser, and the counters are checked against what the run did, counted independently: trades in
= rows of the file, candles closed (revised) = closed (revised) candles in the candle streams, alerts fired = alerts
in the alerts stream = lines the notifier delivered to its JSONL file. ``GET /status`` must sum the same figures.
"""

from __future__ import annotations

import asyncio
import csv
import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sentinel.pipeline import engine_caught_up
from shared.alert_streams import alert_streams
from shared.bus import FIELD, Bus
from shared.embedded_redis import free_port
from shared.partitions import DEFAULT_PARTITIONS
from shared.schemas import Candle, unpack
from tests.conftest import shared_data
from tests.support.alerts import count_alerts
from tests.support.candles import builder_caught_up
from tests.support.chaos.processes import Service, clean_env, sentinel_argv
from tests.support.chaos.progress import wait_for
from tests.support.chaos.run import _start_sim
from tests.support.candles import candles_stream, registered

RECORDING = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
EXCHANGE, SYMBOL = "binance", "BTC/USDT"
SPEED = 40.0  # the 11 minutes of the recording in ~17 s
RULES = """\
rules:
  - {name: close_ema, symbols: "*", timeframe: 1m, frequency: once_per_bar_close, severity: info,
     condition: {left: close, op: crossing, right: {ema: 3}}}
  - {name: move_up, symbols: "*", timeframe: 1m, frequency: once_per_bar_close, severity: warning,
     condition: {op: moving_up_pct, percent: 0.01, bars: 1}}
"""
SERVICES = ("market_feed", "candle_builder", "alert_engine", "notifier", "api")
#: what every service's endpoint has, and what each one counts (a metric of the family present means it is exposed)
COMMON = ("process_cpu_seconds_total", "process_resident_memory_bytes", "sentinel_redis_roundtrip_seconds",
          "sentinel_service_up")
GROUPS = {"candle_builder": "candle_builder", "alert_engine": "alert_engine", "notifier": "notifier"}


def scrape(port: int, path: str = "/metrics", token: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)] of a Prometheus text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(scraped: dict, name: str, **labels: str) -> float:
    return sum(v for lbl, v in scraped.get(name, []) if all(lbl.get(k) == want for k, want in labels.items()))


def file_rows(path: Path) -> int:
    with path.open(newline="") as f:
        return sum(1 for row in csv.reader(f) if row and row[0] != "timestamp")


async def written_candles(redis) -> tuple[dict[str, int], dict[str, int]]:
    """(closed, revised) candles per timeframe in the candle streams, read back from Redis."""
    closed: dict[str, int] = {}
    revised: dict[str, int] = {}
    for ex, sym, tf in await registered(redis):
        for _, fields in await redis.xrange(candles_stream(ex, sym, tf)):
            candle = Candle.from_msg(unpack(fields[FIELD]))
            assert candle.closed and not candle.history
            into = revised if candle.revision else closed
            into[tf] = into.get(tf, 0) + 1
    return closed, revised


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_every_endpoint_counts_what_the_replay_did(redis, redis_url, tmp_path):
    recording = shared_data(RECORDING)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    jsonl = tmp_path / "alerts.jsonl"
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({
        "redis_url": redis_url,
        "market_feed": {"mode": "live", "backoff_base_s": 0.1, "backoff_cap_s": 1.0},
        "candle_builder": {"history_bars": 0},
        "alert_engine": {"rules_file": str(rules), "clock": "exchange"},
        "notifier": {"console": False, "jsonl_path": str(jsonl), "default_channels": ["jsonl"]},
        "exchange_sim": {"wait_for_client": True, "depth": "off", "futures": False},
    }))
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = {name: free_port() for name in SERVICES}
    api_port, token = free_port(), "metrics-test"
    sim, base = await _start_sim_for(recording, config, logs)
    services = []
    try:
        for name in SERVICES:
            env = {"SENTINEL_METRICS_PORT": str(ports[name]), "SENTINEL_CONSUMER_NAME": f"metrics-{name}"}
            if name == "market_feed":
                env["SENTINEL_EXCHANGES"] = json.dumps([{
                    "id": EXCHANGE, "symbols": [SYMBOL], "tickers": False,
                    "ws_url": f"ws://{base.split('://')[1]}/stream", "rest_url": f"{base}/api/v3"}])
            if name == "api":
                env.update(SENTINEL_API_PORT=str(api_port), SENTINEL_API_TOKEN=token)
            svc = Service(name, name, sentinel_argv(name.replace("_", "-"), "--config", str(config)),
                          clean_env(env), logs / f"{name}.log")
            services.append(svc)
            await svc.start()

        rows = file_rows(recording)

        async def feed_done() -> bool:
            for svc in services:
                if not svc.running:
                    raise AssertionError(f"{svc.name} exited; see {svc.log}: {svc.log.read_text()[-1500:]}")
            try:
                got = total(samples(await asyncio.to_thread(scrape, ports["market_feed"])),
                            "sentinel_feed_trades_total")
            except OSError:
                return False
            return got >= rows
        assert await wait_for(feed_done, 120, every=0.5) is not None, "the feed did not publish the recording"

        bus = Bus(redis)

        async def caught_up() -> bool:
            checks = [(s, "notifier") for s in alert_streams(DEFAULT_PARTITIONS) if await redis.exists(s)]
            return (await builder_caught_up(redis) and await engine_caught_up(redis)
                    and all([await bus.caught_up(s, g) for s, g in checks]))
        assert await wait_for(caught_up, 60, every=0.3) is not None, "the pipeline did not catch up"
        await asyncio.sleep(6)  # one more heartbeat (2 s) and consumer sample (claim_every_s, 5 s) everywhere

        scraped = {name: samples(await asyncio.to_thread(scrape, ports[name])) for name in SERVICES}
        status = json.loads(await asyncio.to_thread(scrape, api_port, "/status", token))
        api_metrics = samples(await asyncio.to_thread(scrape, api_port, "/metrics", token))

        # every endpoint: process CPU and memory, Redis round trips, which service it is
        for name in SERVICES:
            for metric in COMMON:
                assert any(k.startswith(metric) for k in scraped[name]), (name, metric)
            assert total(scraped[name], "sentinel_service_up", service=name) == 1
            assert total(scraped[name], "sentinel_redis_roundtrip_seconds_count", service=name) >= 1
        assert total(api_metrics, "sentinel_service_up", service="api") == 1

        # trades in = the file's rows (exactly once through the live feed), per exchange and symbol label
        assert total(scraped["market_feed"], "sentinel_feed_trades_total", exchange=EXCHANGE) == rows
        assert total(scraped["market_feed"], "sentinel_feed_trades_total", exchange=EXCHANGE, symbol="all") == rows

        # candles closed / revised per timeframe = what the candle streams hold
        closed, revised = await written_candles(redis)
        assert closed and set(closed) >= {"1m", "5m"}, closed
        for tf, n in closed.items():
            assert total(scraped["candle_builder"], "sentinel_candles_closed_total", timeframe=tf) == n, tf
        assert total(scraped["candle_builder"], "sentinel_candles_closed_total") == sum(closed.values())
        assert total(scraped["candle_builder"], "sentinel_candles_revised_total") == sum(revised.values())

        # alerts fired = alerts published = alerts the notifier delivered
        published = await count_alerts(redis)
        delivered = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
        assert published > 0
        fired = total(scraped["alert_engine"], "sentinel_alerts_fired_total")
        assert fired == published == len(delivered)
        by_rule = {}
        for a in delivered:
            by_rule[(a["rule"], a["severity"])] = by_rule.get((a["rule"], a["severity"]), 0) + 1
        for (rule, severity), n in by_rule.items():
            assert total(scraped["alert_engine"], "sentinel_alerts_fired_total", rule=rule, severity=severity) == n
        assert total(scraped["alert_engine"], "sentinel_rules_evaluated_total") >= sum(closed.get("1m", 0) for _ in
                                                                                       range(2))
        assert total(scraped["alert_engine"], "sentinel_rule_evaluation_seconds_count") >= 1
        assert total(scraped["notifier"], "sentinel_notifications_sent_total", channel="jsonl") == len(delivered)
        assert total(scraped["notifier"], "sentinel_notifications_dead_lettered_total") == 0
        assert total(scraped["notifier"], "sentinel_notification_delivery_latency_seconds_count",
                     channel="jsonl") == len(delivered)

        # consumer lag and pending, sampled per group
        for service, group in GROUPS.items():
            assert "sentinel_consumer_lag_entries" in scraped[service] and any(
                lbl["group"] == group for lbl, _ in scraped[service]["sentinel_consumer_lag_entries"]), service
            assert total(scraped[service], "sentinel_consumer_pending_entries", group=group) == 0, service

        # /status sums the same counters over the live replicas
        figures = status["figures"]
        assert figures["trades_in"] == rows
        assert figures["candles_closed"] == sum(closed.values())
        assert figures["alerts_fired"] == published and figures["notifications_sent"] == len(delivered)
        assert {s: status["services"].get(s) for s in SERVICES} == {s: 1 for s in SERVICES}
    finally:
        for svc in services:
            await svc.stop()
        sim.terminate()
        await sim.wait()


async def _start_sim_for(recording: Path, config: Path, logs: Path):
    """``sentinel exchange-sim`` serving the recording (the chaos harness' starter)."""
    from tests.support.chaos.layout import Pair
    from tests.support.chaos.sources import Source

    return await _start_sim(Source(Pair(EXCHANGE, SYMBOL), recording, live=True), SPEED, config, logs)
