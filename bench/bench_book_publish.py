"""market_feed's book publishing: one ``BookFeed.publish_once`` round for 200 pairs (every book changed), as the feed
runs it every ``publish_every_ms``: per pair the exact view of ccxt's float book (``exact_levels``), the metrics, wall
events and ``BookSnapshot`` (``book_core.PairBook.snapshot``), its encoding, then the writes to the partition streams
(16 partitions): fenced (``ccxt_book.publish_fenced``: one ``Ownership.fenced`` script per partition, the partitions
concurrently; what market_feed does under its leases), written every ``BookFeed.chunk_s`` (5 ms) of building or once
per round (as before), or one plain pipeline (a feed on its own), alternating. ``loop_blocked_ms``: the longest the
event loop was held during the round (the latency the round adds to the feed's other tasks, e.g. its trades).

Books: the real BTCUSDT book at the end of the 2024-08-08 capture (a 0.01 tick on a ~62k price: ~2,100 levels within
50 bps, the costly case) and a sparse one (every 10th level of it: ~210 levels within 50 bps, closer to most pairs).
Reported per round and per snapshot (CPU of this process: ``time.process_time``; wall time for the round), median
with min-max over ``--runs``. Writes bench/results/bench_book_publish.json.

Usage: ``python bench/bench_book_publish.py [--pairs 200] [--runs 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_book import load, run_book  # noqa: E402
from bench.common import write_result  # noqa: E402
from services.market_feed.adapters.ccxt_book import BookFeed  # noqa: E402
from services.market_feed.book_settings import BookFeedSettings  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.ownership import Ownership  # noqa: E402
from shared.runtime import connect  # noqa: E402

PARTITIONS = 16


def float_book(every: int) -> dict[str, Any]:
    snapshot, diffs = load()
    _, _, sync = run_book(snapshot, diffs)
    book = sync.book
    return {"bids": [[float(p), float(q)] for p, q in book.bids.levels()][::every],
            "asks": [[float(p), float(q)] for p, q in book.asks.levels()][::every], "timestamp": book.ts}


async def longest_block(halt: asyncio.Event) -> float:
    """The longest the event loop did not run this task (seconds) until ``halt``: what the round costs the other
    tasks of the feed (its trades) in latency."""
    longest, last = 0.0, time.perf_counter()
    while not halt.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest


async def measure(url: str, pairs: int, runs: int, every: int) -> dict[str, Any]:
    redis = connect(url)
    await redis.flushall()
    symbols = [f"B{i}/USDT" for i in range(pairs)]
    ownership = Ownership(redis, "bench-books", "bench", PARTITIONS, ttl_ms=600_000)
    for p in range(PARTITIONS):
        await ownership.acquire(p)
    settings = BookFeedSettings(exchange="binance", name="bench", symbols=symbols, walls=True, top_n=20,
                                publish_every_ms=100)
    base = float_book(every)
    feeds = {"fenced": BookFeed(settings, redis, exchange=object(), partitions=PARTITIONS, ownership=ownership),
             "fenced_one_write_per_round": BookFeed(settings, redis, exchange=object(), partitions=PARTITIONS,
                                                    ownership=ownership),
             "pipeline": BookFeed(settings, redis, exchange=object(), partitions=PARTITIONS)}
    feeds["fenced_one_write_per_round"].chunk_s = float("inf")  # (as before: build every snapshot, then write)
    nonce = 0
    out: dict[str, dict[str, list[float]]] = {k: {"cpu_ms": [], "wall_ms": [], "loop_blocked_ms": []}
                                              for k in feeds}
    for run in range(runs + 1):  # the first round of each warms the float -> Decimal caches: not counted
        for name, feed in feeds.items():
            nonce += 1
            for sym in symbols:
                feed._books[sym] = {**base, "nonce": nonce}
                feed._edges[sym] = (None, None)
            halt = asyncio.Event()
            watch = asyncio.create_task(longest_block(halt))
            await asyncio.sleep(0)  # (the watcher runs once before the round starts)
            cpu, wall = time.process_time(), time.perf_counter()
            published = await feed.publish_once()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            halt.set()
            blocked = await watch
            if published != pairs:
                raise SystemExit(f"{name}: published {published} of {pairs}")
            if run:
                out[name]["cpu_ms"].append(cpu * 1000)
                out[name]["wall_ms"].append(wall * 1000)
                out[name]["loop_blocked_ms"].append(blocked * 1000)
    await redis.aclose()
    levels = sum(1 for p, _ in base["bids"] if p >= base["bids"][0][0] * 0.995) + sum(
        1 for p, _ in base["asks"] if p <= base["asks"][0][0] * 1.005)
    result: dict[str, Any] = {"levels_within_50bps": levels}
    for name, figures in out.items():
        result[name] = {k: {"median": round(statistics.median(v), 2), "min": round(min(v), 2),
                            "max": round(max(v), 2)} for k, v in figures.items()}
        result[name]["cpu_us_per_snapshot"] = round(statistics.median(figures["cpu_ms"]) * 1000 / pairs, 1)
        # pairs one core keeps at 10 snapshots a second each
        result[name]["pairs_per_core_at_100ms"] = int(1e6 / (result[name]["cpu_us_per_snapshot"] * 10))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persist=False)
        server.start()
        try:
            books = {name: asyncio.run(measure(server.url, args.pairs, args.runs, every))
                     for name, every in (("dense_btcusdt", 1), ("sparse_every_10th_level", 10))}
        finally:
            server.stop()
    result = {"bench": "book_publish", "python": platform.python_version(), "machine": platform.machine(),
              "pairs": args.pairs, "partitions": PARTITIONS, "runs": args.runs, "books": books}
    write_result("bench_book_publish.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
