"""What the harness reads of the pipeline's progress, through Redis only: consumer groups (and candle_builder's
offsets) caught up, feeds' last published trade ids, heartbeats. Every read tolerates a Redis that is down (the chaos
kills it)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import streams
from tests.support.chaos.layout import Layout, Pair

REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError, OSError)


def sid(value: bytes | str | None) -> tuple[int, int]:
    """A stream entry id as a comparable (ms, seq); (0, 0) for none."""
    if not value:
        return (0, 0)
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq or 0))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _get(info: dict, key: str):
    """A field of an XINFO / XPENDING reply, whichever type redis-py gave its keys."""
    return info[key] if key in info else info.get(key.encode())


@dataclass
class GroupState:
    stream: str
    group: str
    last_delivered: tuple[int, int]
    pending: int
    oldest_pending: tuple[int, int] | None


class Probe:
    """Reads of the pipeline's state for one layout."""

    def __init__(self, redis: Redis, layout: Layout) -> None:
        self.redis = redis
        self.layout = layout

    async def stream_tips(self) -> dict[str, tuple[int, int]]:
        """Last entry id written to each consumed stream that exists."""
        out = {}
        for stream in self.layout.consumed():
            try:
                info = await self.redis.xinfo_stream(stream)
            except redis_errors.ResponseError:  # no such stream (yet)
                continue
            out[stream] = sid(_get(info, "last-generated-id"))
        return out

    async def groups(self, group: str | None = None) -> list[GroupState]:
        """The consumer groups on every consumed stream (or only ``group``)."""
        out = []
        for stream in self.layout.consumed():
            try:
                infos = await self.redis.xinfo_groups(stream)
            except redis_errors.ResponseError:
                continue
            for g in infos:
                name = _s(_get(g, "name"))
                if group is not None and name != group:
                    continue
                oldest = None
                pending = _get(g, "pending")
                if pending:
                    oldest = sid(_get(await self.redis.xpending(stream, name), "min"))
                out.append(GroupState(stream, name, sid(_get(g, "last-delivered-id")), pending, oldest))
        return out

    async def caught_up_to(self, tips: dict[str, tuple[int, int]], group: str | None = None) -> bool:
        """True when every group (or ``group``) has read and acked every entry up to ``tips`` of its streams;
        candle_builder and alert_engine (no consumer group) when their saved offsets of each trades (candles) stream
        have reached the tip."""
        for owner, offsets in ((streams.GROUP_CANDLE_BUILDER, self.layout.builder_offsets),
                               (streams.GROUP_ALERT_ENGINE, self.layout.engine_offsets)):
            if group not in (None, owner):
                continue
            for stream, (state, field) in offsets.items():
                tip = tips.get(stream)
                if tip is not None and sid(await self.redis.hget(state, field)) < tip:
                    return False
        for g in await self.groups(group):
            tip = tips.get(g.stream)
            if tip is None:
                continue
            if g.last_delivered < tip or (g.oldest_pending is not None and g.oldest_pending <= tip):
                return False
        return True

    async def engine_started(self) -> bool:
        """alert_engine holds the partitions of the layout's pairs (leases) and has saved an offset in each."""
        for state, field in self.layout.engine_offsets.values():
            partition = state.split("{p", 1)[1].split("}", 1)[0]
            if not await self.redis.exists(streams.lease(streams.GROUP_ALERT_ENGINE, int(partition))):
                return False
        return True

    async def read_by(self, stream_names: list[str], group: str) -> bool:
        """Every stream in ``stream_names`` has the consumer group ``group`` (its reader has started on it)."""
        for stream in stream_names:
            try:
                infos = await self.redis.xinfo_groups(stream)
            except redis_errors.ResponseError:
                return False
            if group not in {_s(_get(g, "name")) for g in infos}:
                return False
        return True

    async def all_caught_up(self) -> bool:
        return await self.caught_up_to(await self.stream_tips())

    async def last_id(self, pair: Pair) -> int | None:
        """The feed's last published trade id of ``pair`` (its state hash)."""
        state, last_id, _ = self.layout.feed_state[pair]
        raw = await self.redis.hget(state, last_id)
        return int(raw) if raw is not None else None

    async def exchange_time(self, pair: Pair) -> int | None:
        """Exchange time (ms) of the feed's last published trade of ``pair``."""
        state, _, last_ts = self.layout.feed_state[pair]
        raw = await self.redis.hget(state, last_ts)
        return int(raw) if raw else None

    async def beats_since(self, services: list[str], since_ms: int) -> bool:
        """Every service in ``services`` wrote a heartbeat after ``since_ms``."""
        for service in services:
            ts = await self.redis.hget(self.layout.heartbeats[service], "ts")
            if ts is None or int(ts) < since_ms:
                return False
        return True


async def wait_for(check, timeout: float, every: float = 0.05) -> float | None:
    """Seconds until the coroutine function ``check()`` first answers True (Redis errors count as not yet), or None
    after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if await check():
                return time.monotonic() - started
        except REDIS_DOWN:
            pass
        await asyncio.sleep(every)
    return None
