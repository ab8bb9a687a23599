"""The notifier's history as the API and ``sentinel notify`` read it: recent deliveries and dead letters (secrets never
stored in them), and the retry of dead letters. Shared: the notifier writes these streams, the API reads them."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared import streams
from shared.errors import DecodeError
from shared.schemas import Alert


def _s(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


async def recent_deliveries(redis: Redis, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first: ``{"id", "ts", "target", "status" ("delivered"|"dead"), "count", "alert_ids", "attempts",
    "reason"}``."""
    rows: Any = await redis.xrevrange(streams.NOTIFY_DELIVERIES, count=limit)
    return [{"id": _s(eid), "ts": int(f.get(b"ts", 0)), "target": _s(f.get(b"target")),
             "status": _s(f.get(b"status")), "count": int(f.get(b"count", 0)),
             "alert_ids": [x for x in _s(f.get(b"alert_ids")).split(",") if x],
             "attempts": int(f.get(b"attempts", 0)), "reason": _s(f.get(b"reason"))} for eid, f in rows]


async def dead_letters(redis: Redis, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first: ``{"id", "ts", "alert_id", "target", "reason", "attempts", "alert"}`` (alert: every field, or
    None if the stored copy cannot be decoded)."""
    rows: Any = await redis.xrevrange(streams.NOTIFY_DEAD_LETTER, count=limit)
    out = []
    for eid, f in rows:
        try:
            alert = Alert.decode(f.get(b"d", b"")).model_dump(mode="json")
        except DecodeError:
            alert = None
        out.append({"id": _s(eid), "ts": int(f.get(b"ts", 0)), "alert_id": _s(f.get(b"alert_id")),
                    "target": _s(f.get(b"target")), "reason": _s(f.get(b"reason")),
                    "attempts": int(f.get(b"attempts", 0)), "alert": alert})
    return out


async def retry_dead_letters(app: Any, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Send dead-lettered (alert, target) pairs again through ``app`` (a ``NotifierApp``), with its retry policy.

    Each retried entry leaves the dead-letter stream; if it fails again, the app writes a new dead letter.
    ``ids=None`` retries all. Returns ``{"id", "alert_id", "target", "status"}`` per entry.
    """
    redis = app.redis
    rows: Any = await redis.xrange(streams.NOTIFY_DEAD_LETTER)
    wanted = set(ids) if ids is not None else None
    results = []
    for eid, f in rows:
        entry_id, target_name = _s(eid), _s(f.get(b"target"))
        if wanted is not None and entry_id not in wanted:
            continue
        row = {"id": entry_id, "alert_id": _s(f.get(b"alert_id")), "target": target_name}
        try:
            alert = Alert.decode(f.get(b"d", b""))
        except DecodeError as exc:
            results.append({**row, "status": f"skipped: stored alert undecodable ({exc})"})
            continue
        if target_name not in app.targets:
            results.append({**row, "status": "skipped: channel not configured"})
            continue
        status = await app.redeliver(target_name, alert)
        await redis.xdel(streams.NOTIFY_DEAD_LETTER, eid)
        results.append({**row, "status": status})
    return results
