"""The engine's output as tests read it: every partition's alerts stream (``shared.alert_streams``) and rule state."""

from __future__ import annotations

from typing import Any

from shared import streams
from shared.alert_streams import partition_count, read_all
from shared.schemas import Alert, unpack


async def read_alerts(redis: Any, partitions: int | None = None) -> list[Alert]:
    """Every published alert, oldest first (the partitions' streams merged by entry id)."""
    return [Alert.decode(data) for _, _, data in await read_all(redis, partitions)]


async def count_alerts(redis: Any, partitions: int | None = None) -> int:
    """Entries in every partition's alerts stream."""
    n = partitions if partitions is not None else await partition_count(redis)
    return sum([await redis.xlen(streams.part_alerts(p)) for p in range(n)])


async def delete_alerts(redis: Any, partitions: int | None = None) -> None:
    n = partitions if partitions is not None else await partition_count(redis)
    for p in range(n):
        await redis.delete(streams.part_alerts(p))


async def rule_state_rows(redis: Any, partitions: int | None = None) -> dict[str, dict[str, Any]]:
    """fingerprint -> the engine's decoded rule state row, from every partition."""
    n = partitions if partitions is not None else await partition_count(redis)
    rows: dict[str, dict[str, Any]] = {}
    for p in range(n):
        for fp, raw in (await redis.hgetall(streams.part_rule_state(p))).items():
            rows[fp.decode()] = unpack(raw)
    return rows
