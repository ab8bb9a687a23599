"""Order-book benchmarks (shared/orderbook), on Binance's real BTCUSDT depth diffs (no Redis, one process).

(a) maintenance: the 2024-08-08 and 2024-08-09 captures' ``depth@100ms`` diffs (raw payloads, JSON already decoded as
    a websocket client would have it) through ``DiffDepthSync.diff``: sequencing, Decimal parsing of every price and
    size, dict + sorted-price updates. Reported as diff levels per CPU second (one core), over ``--runs`` runs:
    median, min, max. Reference, same runs: the floor of any exact book in Python — each level parsed to Decimal and
    stored in a plain dict (no ordering, no sequencing).
(b) the figures a snapshot publishes, per call on the real book at the end of the capture (~2,100 levels within
    50 bps of BTCUSDT's mid: the costly case, a 0.01 tick on a ~62k price): ``book_metrics`` (3 bands),
    ``WallTracker.update``, ``BookSnapshot.encode``, and the whole of one published snapshot in market_feed from
    ccxt's float levels (``book_core``: conversion with a warm cache, metrics, walls, the message, its encoding).
(c) memory of one book holding the top 1,000 levels a side (the capture's REST snapshot: 1,000 + 1,000 levels),
    measured with tracemalloc around building it from the exchange's strings; the same levels as two plain
    dicts of Decimals (reference) and as float tuples (what ccxt keeps); and market_feed's float -> Decimal cache of
    one pair when full (``book_core.ExactDecimals``, cleared at ``max_size`` entries; its floats included).

Writes bench/results/bench_book.json. Usage: ``python bench/bench_book.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result  # noqa: E402
from services.market_feed.book_core import BookView, ExactDecimals, PairBook, exact_levels  # noqa: E402
from shared.book_messages import BookSnapshot  # noqa: E402
from shared.orderbook.binance import DiffDepthSync  # noqa: E402
from shared.orderbook.book import L2Book, parse_levels  # noqa: E402
from shared.orderbook.metrics import book_metrics  # noqa: E402
from shared.orderbook.walls import WallTracker  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "binance_spot_btcusdt"


def load() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    snapshot: dict[str, Any] | None = None
    diffs: list[dict[str, Any]] = []
    for day in ("20240808", "20240809"):
        with gzip.open(DATA / f"raw_ws_btcusdt_{day}.gz", "rt") as f:
            for line in f:
                msg = json.loads(line.split(" ", 1)[1])
                if "lastUpdateId" in msg:
                    snapshot = snapshot or msg
                elif msg["stream"].endswith("@depth@100ms"):
                    diffs.append(msg["data"])
    if snapshot is None:
        raise SystemExit("no snapshot in the capture")
    return snapshot, diffs


def run_book(snapshot: dict[str, Any], diffs: list[dict[str, Any]]) -> tuple[float, int, DiffDepthSync]:
    sync = DiffDepthSync()
    for d in diffs[:3]:  # what arrived before the snapshot, as in the capture
        sync.diff(d)
    sync.snapshot(snapshot["lastUpdateId"], parse_levels(snapshot["bids"]), parse_levels(snapshot["asks"]))
    diff = sync.diff
    t0 = time.process_time()
    for d in diffs[3:]:
        diff(d)
    return time.process_time() - t0, sync.levels_applied, sync


def run_reference(snapshot: dict[str, Any], diffs: list[dict[str, Any]]) -> tuple[float, int]:
    bids = {Decimal(p): Decimal(q) for p, q in snapshot["bids"]}
    asks = {Decimal(p): Decimal(q) for p, q in snapshot["asks"]}
    n = 0
    t0 = time.process_time()
    for d in diffs:
        for side, rows in ((bids, d["b"]), (asks, d["a"])):
            for p, q in rows:
                size = Decimal(q)
                if size:
                    side[Decimal(p)] = size
                else:
                    side.pop(Decimal(p), None)
                n += 1
    return time.process_time() - t0, n


def per_call_us(fn: Any, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1e6


def memory(snapshot: dict[str, Any]) -> dict[str, Any]:
    def measure(build: Any) -> int:
        """Bytes still allocated by ``build()``'s result; the least of 3 (the first build also pays one-off
        allocations: interned strings, caches)."""
        sizes = []
        for _ in range(3):
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            kept = build()
            sizes.append(tracemalloc.get_traced_memory()[0] - base)
            tracemalloc.stop()
            del kept
        return min(sizes)

    def l2() -> L2Book:
        book = L2Book()
        book.load(parse_levels(snapshot["bids"]), parse_levels(snapshot["asks"]), snapshot["lastUpdateId"])
        return book

    book_bytes = measure(l2)
    dict_bytes = measure(lambda: ({Decimal(p): Decimal(q) for p, q in snapshot["bids"]},
                                  {Decimal(p): Decimal(q) for p, q in snapshot["asks"]}))
    float_bytes = measure(lambda: ([[float(p), float(q)] for p, q in snapshot["bids"]],
                                   [[float(p), float(q)] for p, q in snapshot["asks"]]))
    def full_cache() -> ExactDecimals:  # market_feed's float -> Decimal cache of one pair, full (then cleared)
        cache = ExactDecimals()
        step = 0.00001
        for i in range(cache.max_size - 1):
            cache[1.0 + i * step]
        return cache

    cache_bytes = measure(full_cache)
    levels = len(snapshot["bids"]) + len(snapshot["asks"])
    return {"levels": levels, "l2book_bytes": book_bytes, "l2book_bytes_per_level": round(book_bytes / levels),
            "market_feed_exact_decimals_cache_full_bytes": cache_bytes,
            "reference_two_decimal_dicts_bytes": dict_bytes, "reference_ccxt_float_lists_bytes": float_bytes,
            "l2book_mb_for_200_pairs": round(book_bytes * 200 / 1e6, 1)}


def main(runs: int) -> dict[str, Any]:
    snapshot, diffs = load()
    book_rates, ref_rates = [], []
    sync: DiffDepthSync | None = None
    levels = 0
    for _ in range(runs):  # alternate, so both see the same machine load
        seconds, levels, sync = run_book(snapshot, diffs)
        book_rates.append(levels / seconds)
        ref_seconds, ref_levels = run_reference(snapshot, diffs)
        ref_rates.append(ref_levels / ref_seconds)
    assert sync is not None
    book = sync.book
    tracker = WallTracker(25, 10)
    tracker.update(book)
    metrics = book_metrics(book, (10, 25, 50))
    bids, asks = book.top(20)
    snap = BookSnapshot(exchange="binance", symbol="BTC/USDT", ts=book.ts or 0, update_id=book.update_id,
                        bids=[tuple(lv) for lv in bids], asks=[tuple(lv) for lv in asks], mid=metrics.mid)

    pair = PairBook("binance", "BTC/USDT", 20, (Decimal(10), Decimal(25), Decimal(50)), WallTracker(25, 10))
    float_bids = [[float(p), float(q)] for p, q in book.bids.levels()]
    float_asks = [[float(p), float(q)] for p, q in book.asks.levels()]

    def publish_one() -> bytes:
        lo = pair.read_limit(float_bids[0][0], float_asks[0][0], True)
        hi = pair.read_limit(float_bids[0][0], float_asks[0][0], False)
        view = BookView(exact_levels(float_bids, lo, True, 20, pair.decimals),
                        exact_levels(float_asks, hi, False, 20, pair.decimals), book.update_id, book.ts or 0)
        return pair.snapshot(view).encode()

    publish_one()  # warms the float → Decimal cache, as the previous snapshot would have

    def summary(rates: list[float]) -> dict[str, int]:
        return {"median": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates))}

    return {
        "bench": "book", "python": platform.python_version(), "machine": platform.machine(), "runs": runs,
        "workload": {"diffs": len(diffs) - 3, "diff_levels": levels, "book_levels_at_end": len(book.bids)
                     + len(book.asks), "source": "Binance BTCUSDT depth@100ms, 2024-08-08 23:54 - 08-09 00:05"},
        "maintenance_levels_per_cpu_s": summary(book_rates),
        "reference_dict_of_decimals_levels_per_cpu_s": summary(ref_rates),
        "per_call_us": {
            "book_metrics_3_bands": round(per_call_us(lambda: book_metrics(book, (10, 25, 50)), 200), 1),
            "wall_tracker_update_25bps": round(per_call_us(lambda: tracker.update(book), 200), 1),
            "book_snapshot_encode_top20": round(per_call_us(snap.encode, 2000), 1),
            "top_20": round(per_call_us(lambda: book.top(20), 2000), 1),
            "market_feed_snapshot_from_ccxt_floats": round(per_call_us(publish_one, 100), 1),
        },
        "memory_top_1000_levels": memory(snapshot),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    result = main(args.runs)
    write_result("bench_book.json", result)
    print(json.dumps(result, indent=2))
