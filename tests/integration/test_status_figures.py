"""``GET /status`` and ``GET /metrics`` of a real API on a real Redis, and ``sentinel watch``'s pipeline strip: the
figures of every live replica's heartbeat summed (stale ones left out), equal to the counters this process exposes."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from sentinel.client import SentinelClient
from sentinel.watch import PipelineFigures, WatchView
from services.api.app import ApiApp
from services.api.settings import Settings
from shared import metrics, streams
from shared.runtime import connect

TOKEN = "status-test"


def registry_total(name: str) -> int:
    """A counter's total over its labels, read from the registry's own samples (not shared.metrics' sums)."""
    return int(sum(s.value for f in REGISTRY.collect() for s in f.samples if s.name == name))


async def test_status_sums_live_replicas_and_watch_shows_the_same(redis_url, redis):
    metrics.TRADES_IN.labels("binance", metrics.ALL).inc(1234)
    metrics.CANDLES_CLOSED.labels("1m").inc(7)
    await metrics.beat(redis, "market_feed")
    await metrics.beat(redis, "candle_builder")
    now = int(time.time() * 1000)
    other = {"trades_in": 1000, "gaps": 2, "reconnects": 1}  # a second market_feed replica, in another process
    await redis.hset(streams.METRICS_FIGURES, mapping={
        "market_feed|host-b-1": json.dumps({"ts": now, "figures": other}),
        "market_feed|gone-1": json.dumps({"ts": now - 60_000, "figures": {"trades_in": 10**9}}),  # stopped
        "notifier|broken-1": b"not json"})
    server_redis = connect(redis_url)
    api = ApiApp(Settings(port=0, shutdown_grace_s=1, api_token=TOKEN), server_redis)
    stop = asyncio.Event()
    task = asyncio.create_task(api.run(stop))
    try:
        await asyncio.wait_for(api.started.wait(), 10)
        async with httpx.AsyncClient(base_url=api.url) as http:
            assert (await http.get("/status")).status_code == 401
            assert (await http.get("/metrics")).status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            status = (await http.get("/status", headers=auth)).json()
            exposition = (await http.get("/metrics", headers=auth)).text
        trades_here = registry_total("sentinel_feed_trades_total")
        assert status["figures"]["trades_in"] == trades_here + 1000
        assert status["figures"]["reconnects"] == registry_total("sentinel_feed_reconnects_total") + 1
        assert status["figures"]["candles_closed"] == registry_total("sentinel_candles_closed_total")
        assert status["services"]["market_feed"] == 2 and status["services"]["candle_builder"] == 1
        assert b"notifier|broken-1" not in await redis.hkeys(streams.METRICS_FIGURES)  # unreadable: deleted
        assert sum(s.value for f in text_string_to_metric_families(exposition) for s in f.samples
                   if s.name == "sentinel_feed_trades_total") == trades_here

        # sentinel watch reads the same endpoint: its strip shows these totals, and rates between two readings
        client = SentinelClient(redis_url, api_url=api.url, token=TOKEN)
        view = WatchView([("binance", "BTC/USDT", "1m")])
        view.pipeline.update(await client.pipeline_status())
        metrics.TRADES_IN.labels("binance", metrics.ALL).inc(500)
        await asyncio.sleep(0.05)
        await metrics.beat(redis, "market_feed")
        second = await client.pipeline_status()
        view.pipeline.update(second)
        await client.aclose()
        console = Console(record=True, width=300, force_terminal=False)
        console.print(view.render())
        text = console.export_text()
        first_ts = status["ts"]
        assert second["figures"]["trades_in"] == status["figures"]["trades_in"] + 500
        assert f"trades {second['figures']['trades_in']:,}" in text
        assert "candle_builder 1 market_feed 2" in text.split("replicas", 1)[1]
        assert view.pipeline.rates["trades_in"] > 0 and second["ts"] > first_ts
    finally:
        stop.set()
        await task
        await server_redis.aclose()


def test_rates_treat_a_restart_as_a_reset():
    p = PipelineFigures()
    p.update({"ts": 1_000, "figures": {"trades_in": 500, "alerts_fired": 3}, "services": {}})
    p.update({"ts": 3_000, "figures": {"trades_in": 900, "alerts_fired": 1}, "services": {}})
    assert p.rates["trades_in"] == 200.0 and p.rates["alerts_fired"] == 0
    assert p.line().startswith("trades 900 (200.0/s) · candles 0 (0.0/s) · alerts 1 (0.0/s)")


def test_per_symbol_labels_are_a_setting():
    try:
        metrics.configure(per_symbol=False)
        assert metrics.symbol_label("BTC/USDT") == "all"
        metrics.configure(per_symbol=True)
        assert metrics.symbol_label("BTC/USDT") == "BTC/USDT"
    finally:
        metrics.configure(per_symbol=False)


def test_a_metrics_port_in_use_is_one_clear_line():
    import socket

    from shared.config import ServiceSettings
    from shared.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            metrics.serve(ServiceSettings(metrics_port=port))
        except ConfigError as exc:
            assert f"metrics_port {port}: cannot listen on 127.0.0.1:{port}" in str(exc)
            assert "SENTINEL_METRICS_PORT" in str(exc)
        else:
            raise AssertionError("serve() bound a port that is in use")
    assert metrics.serve(ServiceSettings()) is None  # unset: off


def test_the_endpoint_serves_the_registry():
    import urllib.request

    from shared.config import ServiceSettings
    from shared.embedded_redis import free_port

    port = free_port()
    try:
        assert metrics.serve(ServiceSettings(metrics_port=port)) == port
        metrics.GAPS.labels("binance", metrics.ALL).inc(0)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "# TYPE sentinel_feed_gaps_total counter" in body and "process_resident_memory_bytes" in body
    finally:
        metrics.stop_serving()
