"""Read candles and alerts back out of Redis: for backtest output files and the demo's summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from redis.asyncio import Redis

from shared import alert_streams
from shared.bus import FIELD
from shared.candle_series import all_series, partition_count, series_stream, series_streams
from shared.schemas import Alert, Candle
from shared.timeframes import sort_timeframes

CANDLE_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "trades")


async def closed_candles(redis: Redis, exchange: str, symbol: str, timeframe: str,
                         partitions: int | None = None) -> list[Candle]:
    """Closed candles of a series, one per bucket (a revision replaces the earlier one), oldest first.
    ``partitions``: the services' partition count (default: the one recorded in Redis)."""
    by_ts: dict[int, Candle] = {}
    if partitions is None:
        partitions = await partition_count(redis)
    stream = series_stream(exchange, symbol, timeframe, partitions)
    last = "-"
    while True:
        entries = await redis.xrange(stream, min=last, count=10_000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            break
        for _, fields in entries:
            candle = Candle.decode(fields[FIELD])
            if candle.closed and (candle.ts not in by_ts or candle.revision >= by_ts[candle.ts].revision):
                by_ts[candle.ts] = candle
        last = entries[-1][0].decode()
    return [by_ts[ts] for ts in sorted(by_ts)]


async def closed_candles_of(redis: Redis, series: list[tuple[str, str, str]], page: int = 10_000,
                            partitions: int | None = None) -> dict[tuple[str, str, str], list[Candle]]:
    """``closed_candles`` of many series, the first page of each in one pipelined round trip (a market has
    thousands of series); a series longer than a page is read on by ``closed_candles``."""
    if partitions is None:
        partitions = await partition_count(redis)
    names = series_streams(series, partitions)
    async with redis.pipeline(transaction=False) as pipe:
        for key in series:
            pipe.xrange(names[key], count=page)
        firsts = await pipe.execute()
    out = {}
    for key, entries in zip(series, firsts):
        if len(entries) >= page:
            out[key] = await closed_candles(redis, *key, partitions)
            continue
        by_ts: dict[int, Candle] = {}
        for _, fields in entries:
            candle = Candle.decode(fields[FIELD])
            if candle.closed and (candle.ts not in by_ts or candle.revision >= by_ts[candle.ts].revision):
                by_ts[candle.ts] = candle
        out[key] = [by_ts[ts] for ts in sorted(by_ts)]
    return out


async def candle_series(redis: Redis, partitions: int | None = None) -> list[tuple[str, str, str]]:
    """Every (exchange, symbol, timeframe) candle_builder has published (every partition's registry), by exchange,
    symbol and timeframe (shortest first)."""
    if partitions is None:
        partitions = await partition_count(redis)
    series = await all_series(redis, partitions)
    order = {tf: i for i, tf in enumerate(sort_timeframes({s[2] for s in series}))}
    return sorted(series, key=lambda s: (s[0], s[1], order[s[2]]))


async def alerts(redis: Redis) -> list[Alert]:
    """Every alert of every partition's alerts stream, oldest first (``shared.alert_streams``)."""
    return [Alert.decode(data) for _, _, data in await alert_streams.read_all(redis)]


def write_candles_csv(path: Path, candles: list[Candle], partial: set[int] | None = None) -> None:
    """Candles as CSV (``CANDLE_COLUMNS``); with ``partial`` (bar starts the data does not cover from start to end) a
    last column ``partial`` says 1 for those bars, else 0."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CANDLE_COLUMNS + ("partial",) * (partial is not None))
        for c in candles:
            row = [c.ts, c.open, c.high, c.low, c.close, c.volume, c.buy_volume, c.sell_volume, c.trades]
            writer.writerow(row + [int(c.ts in partial)] if partial is not None else row)


def alert_record(alert: Alert) -> dict:
    """One line of alerts.jsonl: what fired, on which candle, at what price (decimals as strings)."""
    record = alert.model_dump(mode="json", exclude={"kind"})
    record["timestamp"] = alert.ts
    return record


def write_alerts_jsonl(path: Path, items: list[Alert]) -> None:
    with path.open("w") as fh:
        for alert in items:
            fh.write(json.dumps(alert_record(alert)) + "\n")
