"""Writing candles the way candle_builder does, for the engine's tests: each closed candle to its partition's stream
(``part_candles``) and its series' stream (``series_candles``) with the same entry id, the series in its partition's
registry; in-progress candles to ``part_live``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared import streams
from shared.partitions import DEFAULT_PARTITIONS, partition_of
from shared.schemas import Candle
from shared.timeframes import timeframe_ms


async def publish_candles(redis: Any, candles: Iterable[Candle], partitions: int = DEFAULT_PARTITIONS,
                          chunk: int = 2_000) -> None:
    """Closed candles (in order) to ``part_candles(p)`` + ``series_candles(p, ...)``; in-progress ones to
    ``part_live(p)``. Pipelined per chunk: the XADD to the partition's stream gives the id its series' XADD reuses.

    In the order candle_builder writes them: by close time (a bar closes when its last trade is in), the order given
    kept between candles closing together (revisions after what they revise)."""
    todo = sorted(candles, key=lambda c: c.ts + timeframe_ms(c.timeframe))
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for c in part:
                p = partition_of(c.exchange, c.symbol, partitions)
                pipe.xadd(streams.part_candles(p) if c.closed else streams.part_live(p), {streams.FIELD: c.encode()})
            ids = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for c, entry_id in zip(part, ids, strict=True):
                if not c.closed:
                    continue
                p = partition_of(c.exchange, c.symbol, partitions)
                pipe.xadd(streams.series_candles(p, c.exchange, c.symbol, c.timeframe), {streams.FIELD: c.encode()},
                          id=entry_id)
                pipe.sadd(streams.part_candle_registry(p), streams.registry_member(c.exchange, c.symbol, c.timeframe))
            await pipe.execute()


async def publish_live(redis: Any, candle: Candle, partitions: int = DEFAULT_PARTITIONS) -> None:
    """One in-progress candle to ``part_live(p)``."""
    p = partition_of(candle.exchange, candle.symbol, partitions)
    await redis.xadd(streams.part_live(p), {streams.FIELD: candle.encode()})
