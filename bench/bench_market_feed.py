"""market_feed benchmarks, on one private redis-server.

(a) replay: parse a real recording (Binance spot BTCUSDT, 19,904 trades) and publish it to the trades stream.
(b) live: the local exchange (``services.exchange_sim``, in its own process) sends a simulated BTC/USDT market over
    the Binance protocol at real time × speed (bursty: peaks ~6× the mean rate); market_feed's live path (real
    ccxt.pro parsing, dedup, batching, XADD) publishes it. Reported per speed: the offered mean rate, wall time of the
    feed vs the time the exchange took to send (keeping up = close), the feed process's CPU seconds per trade
    (capacity = trades / CPU s: what one core parses and publishes), and trades that came by REST backfill (when
    the feed falls behind, ccxt's 1000-trade cache drops the oldest; the id jump triggers a backfill).

Writes bench/results/bench_market_feed.json. Usage: ``python bench/bench_market_feed.py [--trades 30000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result  # noqa: E402
from services.market_feed.app import MarketFeedApp  # noqa: E402
from services.market_feed.settings import Settings  # noqa: E402
from shared import streams  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.partitions import partition_of  # noqa: E402
from shared.runtime import connect  # noqa: E402

RECORDING = (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "binance_spot_btcusdt"
             / "BTCUSDT-trades-20240808T2354-20240809T0005.csv")


def _exchange_process(n: int, speed: float, port_queue: mp.Queue, stop_event) -> None:
    from services.exchange_sim.server import ExchangeSim
    from shared.simulated import SimulatedMarket, spec_for

    async def main() -> None:
        market = SimulatedMarket(["BTC/USDT"], seed=1, start_ms=1_700_000_000_000)
        spec = spec_for("BTC/USDT")
        sim = ExchangeSim(itertools.islice(market.trades(), n), {"BTC/USDT": (spec.tick, spec.lot)}, speed=speed,
                          start_on_subscribe=True)
        await sim.start()
        port_queue.put(sim.port)
        while not stop_event.is_set():
            await asyncio.sleep(0.1)
        await sim.stop()

    asyncio.run(main())


async def bench_replay(url: str) -> dict:
    redis = connect(url)
    await redis.flushall()
    app = MarketFeedApp(Settings(mode="replay", replay_file=RECORDING, redis_url=url), redis)
    start = time.perf_counter()
    await app.run(asyncio.Event())
    seconds = time.perf_counter() - start
    await redis.aclose()
    return {"trades": app.trades_published, "entries": app.entries_published, "seconds": round(seconds, 3),
            "trades_per_s": round(app.trades_published / seconds)}


async def bench_live(url: str, n: int, speed: float) -> dict:
    from shared.simulated import SimulatedMarket

    span_ms = [t.ts for _, t in itertools.islice(SimulatedMarket(["BTC/USDT"], seed=1, start_ms=0).trades(), n)]
    send_s = (span_ms[-1] - span_ms[0]) / 1000 / speed
    redis = connect(url)
    await redis.flushall()
    ports: mp.Queue = mp.Queue()
    stop_event = mp.Event()
    proc = mp.Process(target=_exchange_process, args=(n, speed, ports, stop_event), daemon=True)
    proc.start()
    port = ports.get(timeout=30)
    settings = Settings(mode="live", redis_url=url, silence_timeout_s=2.0, exchanges=[
        {"id": "binance", "symbols": ["BTC/USDT"], "tickers": False,
         "ws_url": f"ws://127.0.0.1:{port}/stream", "rest_url": f"http://127.0.0.1:{port}/api/v3"}])
    app = MarketFeedApp(settings, redis)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    key = streams.part_state(partition_of("binance", "BTC/USDT", settings.partitions), streams.feed_group("binance"))
    first = None
    cpu0 = time.process_time()
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        raw = await redis.hget(key, "last_id:BTC/USDT")
        if raw is not None and first is None:
            first = time.perf_counter()
        if raw is not None and int(raw) >= n:
            break
        await asyncio.sleep(0.005)
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    health = app.live.health["binance|BTC/USDT|trades"]
    stop.set()
    await task
    stop_event.set()
    proc.join(10)
    await redis.aclose()
    seconds = end - (first or end)
    return {"speed": speed, "trades": n, "offered_mean_trades_per_s": round(n / send_s),
            "exchange_send_s": round(send_s, 2), "feed_wall_s": round(seconds, 2),
            "wall_trades_per_s": round(n / seconds) if seconds else None, "feed_cpu_s": round(cpu, 2),
            "capacity_trades_per_cpu_s": round(n / cpu) if cpu else None,
            "backfilled": health.backfilled, "reconnects": health.reconnects, "timeouts": health.timeouts}


async def main(n: int, speeds: list[float]) -> dict:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp), persist=False) as server:
        replay = await bench_replay(server.url)
        live = [await bench_live(server.url, n, speed) for speed in speeds]
    return {"bench": "market_feed", "python": platform.python_version(), "machine": platform.machine(),
            "replay_recording": replay, "live_local_exchange": live}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--trades", type=int, default=20_000)
    parser.add_argument("--speeds", default="100,400,1600", help="exchange speeds (× real time), comma-separated")
    args = parser.parse_args()
    result = asyncio.run(main(args.trades, [float(x) for x in args.speeds.split(",")]))
    write_result("bench_market_feed.json", result)
    print(json.dumps(result, indent=2))
