"""API speed: REST latency/throughput on stored data, and publish → WebSocket latency. Writes bench/results/api.json.

    python bench/bench_api.py [--seconds 3]

Runs its own redis-server (embedded) and the API (uvicorn, one process) on loopback; the client runs in the same
process, so the figures include the client's own cost and are a floor of what one API process serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result  # noqa: E402
from services.api.app import ApiApp
from services.api.settings import Settings
from shared import streams
from shared.bus import Bus, BusSettings
from shared.candle_series import series_stream
from shared.embedded_redis import EmbeddedRedis
from shared.runtime import connect
from shared.schemas import Alert, Candle
from shared.partitions import DEFAULT_PARTITIONS, partition_of



def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def seed(redis, candles: int, alerts: int) -> None:
    bus = Bus(redis, BusSettings(maxlen=1_000_000))
    items = []
    for i in range(candles):
        p = Decimal("60000.5") + i
        c = Candle(exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=i * 60_000, open=p, high=p + 3,
                   low=p - 2, close=p + 1, volume=Decimal("12.5"), buy_volume=Decimal("7"), sell_volume=Decimal("5.5"))
        items.append((series_stream("binance", "BTC/USDT", "1m", DEFAULT_PARTITIONS), c.encode()))
    for i in range(alerts):
        a = Alert(id=f"a{i}", rule=f"rule{i % 50}", exchange="binance", symbol="BTC/USDT", timeframe="1m",
                  ts=i * 60_000, fired_at=(i + 1) * 60_000, price=Decimal("60000.5"))
        items.append((streams.part_alerts(partition_of("binance", "BTC/USDT", DEFAULT_PARTITIONS)), a.encode()))
    for start in range(0, len(items), 5000):
        await bus.publish_many(items[start:start + 5000])


async def timed_gets(client: httpx.AsyncClient, path: str, seconds: float) -> dict:
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        r = await client.get(path)
        r.raise_for_status()
        latencies.append(time.perf_counter() - t)
    return {"path": path, "requests": len(latencies), "rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(pct(latencies, 0.5) * 1000, 2), "p99_ms": round(pct(latencies, 0.99) * 1000, 2)}


async def ws_latency(api: ApiApp, redis, n: int) -> dict:
    bus = Bus(redis)
    latencies = []
    async with websockets.connect(f"ws://127.0.0.1:{api.port}/ws?alerts=true") as ws:
        await ws.recv()  # subscribed
        for i in range(n):
            a = Alert(id=f"w{i}", rule="r", exchange="binance", symbol="BTC/USDT", ts=i, fired_at=i)
            t = time.perf_counter()
            await bus.publish(streams.part_alerts(partition_of("binance", "BTC/USDT", DEFAULT_PARTITIONS)), a.encode(),
                              channel=streams.CHANNEL_ALERTS)
            await ws.recv()
            latencies.append(time.perf_counter() - t)
    return {"messages": n, "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(pct(latencies, 0.99) * 1000, 3)}


async def main(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), persist=False) as server:
        redis = connect(server.url)
        await seed(redis, candles=20_000, alerts=50_000)
        api = ApiApp(Settings(port=0, shutdown_grace_s=1, services=[]), redis)
        stop = asyncio.Event()
        task = asyncio.create_task(api.run(stop))
        await api.started.wait()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            rest = [await timed_gets(client, p, seconds) for p in (
                "/health",
                "/candles/binance/BTC-USDT/1m?limit=500",
                "/candles/binance/BTC-USDT/1m?limit=5000",
                "/cvd/binance/BTC-USDT/1m?limit=500",
                "/alerts/history?limit=100",
                "/alerts/history?limit=100&rule=rule7",
            )]
        ws = await ws_latency(api, redis, 500)
        stop.set()
        await task
        await redis.aclose()
    return {"stored": {"candles": 20_000, "alerts": 50_000}, "rest": rest, "ws_publish_to_receive": ws}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per endpoint")
    args = parser.parse_args()
    result = asyncio.run(main(args.seconds))
    write_result("api.json", result)
    print(json.dumps(result, indent=2))
