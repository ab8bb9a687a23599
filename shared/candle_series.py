"""The candle series candle_builder publishes, over every partition: their names, registry and history marks.

candle_builder writes each closed candle of a series twice in one fenced script of the series' partition ``p``
(docs/scale-out.md): to ``streams.part_candles(p)`` (every series of the partition, one stream to read) and to
``streams.series_candles(p, ex, sym, tf)`` (that series alone, trimmed per timeframe) with the same entry id. Which
series exist is a set per partition (``streams.part_candle_registry(p)``), and how far back a series' history goes a
hash per partition (``streams.part_candle_history_from(p)``): every key of a partition's commit shares its hash tag.

Readers that want a series or all of them (the API, the engine's warm-up, export, tools and tests) go through this
module: it maps a series to its partition (``shared.partitions.partition_of``) and reads each partition's key with
its own command, so it works on a Redis Cluster. The partition count is the services' ``settings.partitions``, or
for tools without settings the one recorded in ``streams.META`` (``partition_count``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared import streams
from shared.alert_streams import partition_count
from shared.partitions import partition_of

__all__ = ["SeriesKey", "all_series", "history_from", "partition_count", "series_stream", "series_streams"]

SeriesKey = tuple[str, str, str]  # (exchange, symbol, timeframe)


def series_stream(exchange: str, symbol: str, timeframe: str, partitions: int) -> str:
    """The stream holding the closed candles of one series (``streams.series_candles`` of its pair's partition)."""
    return streams.series_candles(partition_of(exchange, symbol, partitions), exchange, symbol, timeframe)


def series_streams(keys: Iterable[SeriesKey], partitions: int) -> dict[SeriesKey, str]:
    """``series_stream`` of each key."""
    return {key: series_stream(*key, partitions) for key in keys}


async def all_series(redis: Any, partitions: int) -> list[SeriesKey]:
    """Every (exchange, symbol, timeframe) candle_builder publishes candles for, sorted: one SMEMBERS per partition
    (each in its own hash slot)."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.smembers(streams.part_candle_registry(p))
        replies = await pipe.execute()
    out: set[SeriesKey] = set()
    for members in replies:
        for member in members:
            parts = streams.split_registry_member(member)
            if len(parts) == 3:
                out.add((parts[0], parts[1], parts[2]))
    return sorted(out)


async def history_from(redis: Any, keys: Iterable[SeriesKey], partitions: int) -> dict[SeriesKey, Any]:
    """The raw ``part_candle_history_from`` value of each series (bucket start in ms of its oldest history candle, as
    Redis holds it: bytes, or None when the series has no history): one HMGET per partition."""
    by_partition: dict[int, list[SeriesKey]] = {}
    for key in keys:
        by_partition.setdefault(partition_of(key[0], key[1], partitions), []).append(key)
    if not by_partition:
        return {}
    order = sorted(by_partition)
    async with redis.pipeline(transaction=False) as pipe:
        for p in order:
            pipe.hmget(streams.part_candle_history_from(p), [streams.registry_member(*k) for k in by_partition[p]])
        replies = await pipe.execute()
    out: dict[SeriesKey, Any] = {}
    for p, values in zip(order, replies, strict=True):
        out.update(zip(by_partition[p], values, strict=True))
    return out
