"""The alerts of every partition, read as one log.

alert_engine writes each alert to ``streams.part_alerts(p)`` of its pair's partition (``partition_of(alert.exchange,
alert.symbol)``), so a commit touches one Redis Cluster slot. Readers that want every alert (the API's history, a
backtest's export, tools and tests) merge the partitions' streams by entry id, i.e. by the time Redis took them;
entries of two partitions with the same id are ordered by partition number. A position in the merged log is
``(entry id, partition)``.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from typing import Any

from shared import streams
from shared.partitions import DEFAULT_PARTITIONS

#: Entries read per XRANGE / XREVRANGE of one partition.
CHUNK = 200

StreamId = tuple[int, int]


def parse_id(value: bytes | str) -> StreamId:
    """``"<ms>-<seq>"`` as a pair of integers (the order Redis gives stream ids)."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def partition_count(redis: Any, default: int = DEFAULT_PARTITIONS) -> int:
    """The partition count the services recorded (``streams.META``), ``default`` before any service started."""
    recorded = await redis.hget(streams.META, "partitions")
    return int(recorded) if recorded is not None else default


def alert_streams(partitions: int) -> list[str]:
    """Every partition's alerts stream."""
    return [streams.part_alerts(p) for p in range(partitions)]


async def _one_partition(redis: Any, partition: int, *, newest_first: bool, after: tuple[StreamId, int] | None,
                         chunk: int) -> AsyncIterator[tuple[StreamId, int, bytes, Any]]:
    """One partition's entries in merged-log order, strictly past the position ``after``."""
    stream = streams.part_alerts(partition)
    if after is None:
        bound = "+" if newest_first else "-"
    else:
        (ms, seq), at = after
        # same id, other partition: past ``after`` only on the far side of its partition number
        inclusive = partition < at if newest_first else partition > at
        bound = f"{'' if inclusive else '('}{ms}-{seq}"
    while True:
        if newest_first:
            rows = await redis.xrevrange(stream, max=bound, min="-", count=chunk)
        else:
            rows = await redis.xrange(stream, min=bound, max="+", count=chunk)
        for entry_id, fields in rows:
            yield parse_id(entry_id), partition, entry_id, fields
        if len(rows) < chunk:
            return
        bound = f"({rows[-1][0].decode() if isinstance(rows[-1][0], bytes) else rows[-1][0]}"


async def merged(redis: Any, partitions: int, *, newest_first: bool = False,
                 after: tuple[StreamId, int] | None = None,
                 chunk: int = CHUNK) -> AsyncIterator[tuple[StreamId, int, bytes, Any]]:
    """Every partition's alert entries as one log: ``(id, partition, raw id, fields)`` ordered by ``(id,
    partition)`` (descending with ``newest_first``), starting strictly past ``after``. Reads lazily, ``chunk``
    entries of a partition at a time."""
    sources = [_one_partition(redis, p, newest_first=newest_first, after=after, chunk=chunk)
               for p in range(partitions)]
    sign = -1 if newest_first else 1
    heap: list[tuple[int, int, int, int, bytes, Any]] = []
    for i, source in enumerate(sources):
        head = await anext(source, None)
        if head is not None:
            (ms, seq), p, raw, fields = head
            heap.append((sign * ms, sign * seq, sign * p, i, raw, fields))
    heapq.heapify(heap)
    while heap:
        ms, seq, p, i, raw, fields = heapq.heappop(heap)
        yield (sign * ms, sign * seq), sign * p, raw, fields
        head = await anext(sources[i], None)
        if head is not None:
            (nms, nseq), np_, nraw, nfields = head
            heapq.heappush(heap, (sign * nms, sign * nseq, sign * np_, i, nraw, nfields))


async def read_all(redis: Any, partitions: int | None = None) -> list[tuple[bytes, int, bytes]]:
    """Every alert entry, oldest first: ``(entry id, partition, data)`` (data: the bus's ``d`` field, b"" if
    missing). ``partitions`` defaults to the recorded count."""
    count = partitions if partitions is not None else await partition_count(redis)
    out: list[tuple[bytes, int, bytes]] = []
    async for _, p, raw, fields in merged(redis, count, chunk=1000):
        out.append((raw, p, fields.get(streams.FIELD, b"")))
    return out
