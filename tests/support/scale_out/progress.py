"""What a scale-out run reads of the pipeline's progress, through Redis only (a Cluster client or a plain one; every
command is single-key): stream tips, consumer groups and partition offsets caught up, lease holders.

It knows both ways a stage reads: a consumer group (``XINFO GROUPS``) and a partitioned worker's saved offsets
(``part_state(p, group)`` fields ``offset_field(stream)``), so it follows a service from one to the other."""

from __future__ import annotations

from redis import exceptions as redis_errors

from shared import streams
from shared.partitions import partition_of
from tests.support.chaos.layout import Pair
from tests.support.chaos.progress import sid

PARTITIONED = (streams.GROUP_CANDLE_BUILDER, streams.GROUP_ALERT_ENGINE)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _get(info: dict, key: str):
    return info[key] if key in info else info.get(key.encode())


def series_stream(pair: Pair, timeframe: str, partitions: int) -> str:
    """The per-series candles stream: ``series_candles`` (in the partition's hash tag) once candle_builder writes it,
    else the older ``candles`` (outside any tag). The caller asks Redis which one holds entries (``series_streams``)."""
    return streams.series_candles(partition_of(pair.exchange, pair.symbol, partitions), pair.exchange, pair.symbol,
                                  timeframe)


async def series_streams(redis, pair: Pair, timeframe: str, partitions: int) -> list[str]:
    """The candles streams of one series that exist (normally one of the two layouts)."""
    names = [series_stream(pair, timeframe, partitions)]
    legacy = getattr(streams, "candles", None)
    if legacy is not None:
        names.append(legacy(pair.exchange, pair.symbol, timeframe))
    return [n for n in names if await redis.exists(n)]


def work_streams(pairs: list[Pair], timeframes: dict[Pair, list[str]], partitions: int) -> list[str]:
    """Every stream a stage of the run consumes: the partitions' trades, tickers, candles and alerts, and the
    per-series candles streams of both layouts."""
    parts = sorted({partition_of(p.exchange, p.symbol, partitions) for p in pairs})
    out = [f(p) for p in parts for f in (streams.part_trades, streams.part_tickers, streams.part_candles)]
    out += [streams.part_alerts(p) for p in range(partitions)]
    for pair in pairs:
        for tf in timeframes[pair]:
            out.append(series_stream(pair, tf, partitions))
            legacy = getattr(streams, "candles", None)
            if legacy is not None:
                out.append(legacy(pair.exchange, pair.symbol, tf))
    return out


async def tips(redis, names: list[str]) -> dict[str, tuple[int, int]]:
    """Last entry id written to each stream of ``names`` that exists."""
    out = {}
    for name in names:
        try:
            info = await redis.xinfo_stream(name)
        except redis_errors.ResponseError:  # no such stream
            continue
        out[name] = sid(_get(info, "last-generated-id"))
    return out


async def lagging(redis, names: list[str], pairs: list[Pair], partitions: int) -> list[str]:
    """What has not caught up with the streams' tips (empty: everything has): every consumer group on every stream
    (delivered up to the tip, nothing pending), every saved offset of the partitioned groups, and candle_builder's
    offset of each pair's trades partition (it must exist)."""
    now = await tips(redis, names)
    behind = []
    for name, tip in now.items():
        try:
            groups = await redis.xinfo_groups(name)
        except redis_errors.ResponseError:
            continue
        for g in groups:
            delivered, pending = sid(_get(g, "last-delivered-id")), _get(g, "pending")
            if delivered < tip or pending:
                behind.append(f"group {_s(_get(g, 'name'))} on {name}: delivered {delivered} of {tip}, "
                              f"pending {pending}")
    for p in range(partitions):
        for group in PARTITIONED:
            state = await redis.hgetall(streams.part_state(p, group))
            for field, value in state.items():
                field = _s(field)
                if not field.startswith("offset:"):
                    continue
                stream = field.removeprefix("offset:")
                if stream in now and sid(value) < now[stream]:
                    behind.append(f"{group} offset of {stream}: {sid(value)} of {now[stream]}")
    for pair in pairs:
        p = partition_of(pair.exchange, pair.symbol, partitions)
        stream = streams.part_trades(p)
        if stream in now:
            got = await redis.hget(streams.part_state(p, streams.GROUP_CANDLE_BUILDER), streams.offset_field(stream))
            if got is None:
                behind.append(f"candle_builder has no offset of {stream}")
    return behind


async def lease_values(redis, group: str, partitions: list[int]) -> dict[int, str | None]:
    """``partition -> "<instance>|<token>"`` (None: nobody holds it)."""
    out = {}
    for p in partitions:
        value = await redis.get(streams.lease(group, p))
        out[p] = None if value is None else _s(value)
    return out


def holder(value: str | None) -> str | None:
    return None if value is None else value.rsplit("|", 1)[0]
