"""Redis memory per candle series (issue 21): what ``candle_retention`` costs, measured with MEMORY USAGE.

Candles are the real ones of a recording (BTC/USDT trades of ../shared/data, OHLCV per second and per minute,
encoded as candle_builder encodes them), written the way candle_builder writes them: each to its series' stream
(``series_candles``, MAXLEN per timeframe) and to the partition's stream (``part_candles``, every series of the
partition interleaved) with the same entry id, one entry per bucket. The recording's candles are cycled (bucket
times moved on) to fill a stream. Measured on a private redis-server: ``MEMORY USAGE key SAMPLES 0`` (every node of
the stream counted) per stream at several lengths, the bytes per entry, and the payload size of an entry; a partition's stream at its default
MAXLEN; and what each series adds to its partition's registry set and latest-live / history hashes.

Writes bench/results/bench_candle_memory.json. Usage: ``python bench/bench_candle_memory.py [--lengths ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import statistics
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result  # noqa: E402
from services.candle_builder.settings import DEFAULT_RETENTION, MAX_HISTORY_BARS, Settings  # noqa: E402
from shared import streams  # noqa: E402
from shared.bus import FIELD  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.runtime import connect  # noqa: E402
from shared.schemas import Candle  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
RECORDING = DATA / "binance_spot_btcusdt" / "BTCUSDT-trades-20240808T2354-20240809T0005.csv"


def recorded_candles(path: Path, ms: int, timeframe: str) -> list[bytes]:
    """The closed candles of the recording at ``ms`` buckets, encoded (``Candle.encode``, what the streams hold)."""
    buckets: dict[int, list[tuple[int, Decimal, Decimal, bool]]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            ts = int(row["timestamp"])
            buckets.setdefault(ts - ts % ms, []).append((int(row["id"]), Decimal(row["price"]),
                                                         Decimal(row["amount"]), row["side"] == "buy"))
    out = []
    for ts, trades in sorted(buckets.items()):
        prices = [p for _, p, _, _ in trades]
        buy = sum((a for _, _, a, b in trades if b), Decimal(0))
        sell = sum((a for _, _, a, b in trades if not b), Decimal(0))
        out.append(Candle(exchange="binance", symbol="BTC/USDT", timeframe=timeframe, ts=ts, open=prices[0],
                          high=max(prices), low=min(prices), close=prices[-1], volume=buy + sell, buy_volume=buy,
                          sell_volume=sell, quote_volume=sum((p * a for _, p, a, _ in trades), Decimal(0)),
                          trades=len(trades), first_trade_id=trades[0][0], last_trade_id=trades[-1][0],
                          closed=True).encode())
    return out


async def fill(redis, stream: str, payloads: list[bytes], n: int, part: str | None = None) -> None:
    """XADD ``n`` entries (the payloads cycled) to ``stream`` (and, same ids, to ``part``), 1,000 per pipeline."""
    i = 0
    while i < n:
        async with redis.pipeline(transaction=False) as pipe:
            for k in range(i, min(n, i + 1000)):
                entry = f"{1_700_000_000_000 + k * 60_000}-0"  # one bucket a minute: ids as Redis time gives them
                pipe.xadd(stream, {FIELD: payloads[k % len(payloads)]}, id=entry)
                if part is not None:
                    pipe.xadd(part, {FIELD: payloads[k % len(payloads)]}, id=entry)
            await pipe.execute()
        i += 1000


async def main_async(args: argparse.Namespace) -> dict:
    defaults = Settings(redis_url="redis://unused")
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                     "recording": str(RECORDING.relative_to(DATA)), "defaults": {
                         "candle_retention": defaults.candle_retention, "candles_maxlen": defaults.candles_maxlen,
                         "part_candles_maxlen": defaults.part_candles_maxlen, "live_maxlen": defaults.live_maxlen},
                     "series": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis", persist=False) as server:
        redis = connect(server.url)
        results["machine"]["redis"] = (await redis.info("server"))["redis_version"]
        for tf, ms in (("1s", 1000), ("1m", 60_000)):
            payloads = recorded_candles(RECORDING, ms, tf)
            sizes = [len(p) for p in payloads]
            for n in args.lengths:
                await redis.flushall()
                stream = streams.series_candles(0, "binance", "BTC/USDT", tf)
                await fill(redis, stream, payloads, n)
                used = await redis.memory_usage(stream, samples=0)
                row = {"timeframe": tf, "entries": n, "bytes": used, "bytes_per_entry": round(used / n, 1),
                       "payload_bytes_median": statistics.median(sizes), "distinct_candles": len(payloads)}
                results["series"].append(row)
                print(f"{tf} series stream, {n:>7} entries: {used / 1e6:8.2f} MB, {row['bytes_per_entry']} B/entry "
                      f"(payload median {row['payload_bytes_median']} B)", flush=True)
        # a partition's streams: every series' candles interleaved (part_candles), and the per-series keys
        await redis.flushall()
        mixed = [c for pair in zip(recorded_candles(RECORDING, 1000, "1s"), recorded_candles(RECORDING, 60_000, "1m"))
                 for c in pair]
        n = defaults.part_candles_maxlen
        await fill(redis, streams.part_candles(0), mixed, n)
        used = await redis.memory_usage(streams.part_candles(0), samples=0)
        results["part_candles"] = {"entries": n, "bytes": used, "bytes_per_entry": round(used / n, 1)}
        print(f"part_candles at its default MAXLEN ({n} entries): {used / 1e6:.2f} MB", flush=True)
        members = [streams.registry_member("binance", f"S{k}/USDT", "1m") for k in range(1000)]
        async with redis.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.sadd(streams.part_candle_registry(0), m)
                pipe.hset(streams.part_live_latest(0), m, mixed[1])
                pipe.hset(streams.part_candle_history_from(0), m, 1_723_161_240_000)
            await pipe.execute()
        keys = {"part_candle_registry": streams.part_candle_registry(0), "part_live_latest": streams.part_live_latest(0),
                "part_candle_history_from": streams.part_candle_history_from(0)}
        results["per_series_keys_bytes"] = {name: round(await redis.memory_usage(key, samples=0) / len(members), 1)
                                            for name, key in keys.items()}
        print("per series in the partition's hashes and set (B):", results["per_series_keys_bytes"], flush=True)
        await redis.flushall()
        await redis.aclose()
    per_entry = {r["timeframe"]: r["bytes_per_entry"] for r in results["series"] if r["entries"] == max(args.lengths)}
    keep = {tf: DEFAULT_RETENTION.get(tf, defaults.candles_maxlen) for tf in ("1s", "1m", "5m", "15m", "1h")}
    results["per_series_at_defaults_mb"] = {tf: round(keep[tf] * per_entry.get(tf, per_entry["1m"]) / 1e6, 2)
                                            for tf in keep}
    results["max_history_bars"] = MAX_HISTORY_BARS
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000, 3_600, 10_000, 100_000])
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print("per series at the default retention (MB):", results["per_series_at_defaults_mb"])
    path = write_result("bench_candle_memory.json", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
