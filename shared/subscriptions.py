"""Series that subscribers (the alert engine, the API's live views) ask candle_builder for, owned by live instances.

Each subscriber instance keeps its whole set in one hash, ``streams.subscriber(instance)``: "exchange|symbol|tf" ->
look-back (closed candles of history it needs before its first live one; 0 = none). The hash has a TTL that the
instance's heartbeat refreshes (``refresh``), so the series of a SIGKILLed subscriber vanish within ``ttl_ms``; there
is no reference count to leak. ``streams.SUBSCRIBERS`` indexes the instances; ``read_all`` (candle_builder's
discovery) merges every live instance's set, taking the largest look-back asked for a series.

A process whose views come and go (the API's ``/ws`` sockets, ``sentinel.client``'s adapter in a GUI) counts its
references in memory with ``HeldSeries`` and publishes the series it holds as its own instance: a killed process
leaves nothing behind.

A set that expired is still given by ``read_all`` for ``grace_ms`` (default: the TTL) counted from the first read
that missed it: Redis away for longer than the TTL (an outage, a restart from its AOF) expires every set while no
heartbeat could refresh it, and the reader must not drop what only a subscriber asked for before the subscriber's
next heartbeat publishes it again. A killed subscriber's series go within TTL + grace; a withdrawn set (a clean stop)
or a smaller one published goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import streams

logger = logging.getLogger(__name__)

Series = tuple[str, str, str]  # (exchange, symbol, timeframe)

# Drop an instance from the index only if its hash is gone (expired or withdrawn), atomically: a subscriber that
# publishes again meanwhile is never dropped. KEYS: SUBSCRIBERS, then one hash per ARGV instance.
_PRUNE = """
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[1], ARGV[i]) end
end
return 1
"""


class Subscriptions:
    """One subscriber instance's series (``publish``/``refresh``/``withdraw``) and everyone's (``read_all``)."""

    def __init__(self, redis: Redis, *, ttl_ms: int = 10_000, grace_ms: int | None = None) -> None:
        self.redis = redis
        self.ttl_ms = ttl_ms
        self.grace_s = (ttl_ms if grace_ms is None else grace_ms) / 1000
        self._mine: dict[str, dict[Series, int]] = {}  # instance -> what it published last (re-published if expired)
        self._seen: dict[str, dict[Series, int]] = {}  # (read_all) instance -> its set as last read
        self._missed: dict[str, float] = {}  # (read_all) instance -> when a read first found its set expired

    async def publish(self, instance: str, series: Mapping[Series, int]) -> None:
        """Make ``series`` (series -> look-back) the whole set ``instance`` subscribes to, with a fresh TTL."""
        key = streams.subscriber(instance)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(key)
            if series:
                tx.hset(key, mapping={streams.registry_member(*s): max(0, int(n)) for s, n in series.items()})
                tx.pexpire(key, self.ttl_ms)
                tx.sadd(streams.SUBSCRIBERS, instance)
            await tx.execute()
        self._mine[instance] = dict(series)

    async def refresh(self, instance: str) -> None:
        """Keep ``instance``'s set alive for another ``ttl_ms`` (its heartbeat calls this); if it expired meanwhile (a
        long pause), publish it again."""
        mine = self._mine.get(instance)
        if not mine:
            return
        if not await self.redis.pexpire(streams.subscriber(instance), self.ttl_ms):
            logger.warning("subscriptions of %s had expired; publishing them again", instance)
            await self.publish(instance, mine)

    async def withdraw(self, instance: str) -> None:
        """``instance`` subscribes to nothing any more (a clean stop)."""
        async with self.redis.pipeline(transaction=True) as tx:
            tx.delete(streams.subscriber(instance))
            tx.srem(streams.SUBSCRIBERS, instance)
            await tx.execute()
        self._mine.pop(instance, None)

    async def read_all(self) -> dict[Series, int]:
        """Every series some live subscriber wants, with the largest look-back asked for it."""
        instances = [m.decode() if isinstance(m, bytes) else m for m in await self.redis.smembers(streams.SUBSCRIBERS)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.hgetall(streams.subscriber(instance))
            replies = await pipe.execute()
        out: dict[Series, int] = {}
        gone = []
        seen: dict[str, dict[Series, int]] = {}
        for instance, rows in zip(instances, replies):
            if not rows:
                gone.append(instance)
                continue
            mine = seen[instance] = {}
            for member, bars in rows.items():
                _merge(mine, member, bars)
        now = time.monotonic()
        for instance in gone:
            self._missed.setdefault(instance, now)
        for instance, since in list(self._missed.items()):  # expired: kept for the grace period
            if instance in seen or now - since >= self.grace_s or instance not in self._seen:
                del self._missed[instance]
            else:
                seen.setdefault(instance, self._seen[instance])
        self._seen = seen
        for series in seen.values():
            for key, n in series.items():
                out[key] = max(out.get(key, 0), n)
        if gone:
            # (registered here, not in __init__: an app built without Redis, e.g. for its OpenAPI document, has none)
            prune = self.redis.register_script(_PRUNE)
            await prune(keys=[streams.SUBSCRIBERS, *map(streams.subscriber, gone)], args=gone)
        return out


def _int(value: bytes | str | int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _merge(out: dict[Series, int], member: bytes | str, bars: bytes | str | int) -> None:
    parts = streams.split_registry_member(member)
    n = _int(bars)
    if len(parts) != 3 or n < 0:
        logger.warning("ignoring subscription %r with look-back %r", member, bars)
        return
    key = (parts[0], parts[1], parts[2])
    out[key] = max(out.get(key, 0), n)


class HeldSeries:
    """The series one process's views watch, reference-counted in memory (two views of one series hold it once):
    published as this process's own subscriber instance (look-back 0) and kept alive while anything is held."""

    def __init__(self, redis: Redis, *, kind: str = "view", ttl_ms: int = 10_000) -> None:
        self.instance = f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.subscriptions = Subscriptions(redis, ttl_ms=ttl_ms)
        self.counts: Counter[Series] = Counter()
        self._lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None

    async def hold(self, series: Iterable[Series]) -> None:
        """Take a reference on each of ``series``."""
        self.counts.update(series)
        await self._publish()

    async def release(self, series: Iterable[Series]) -> None:
        """Give back a reference on each of ``series``; a series nobody here holds any more is withdrawn."""
        self.counts.subtract(series)
        self.counts = Counter({s: n for s, n in self.counts.items() if n > 0})
        await self._publish()

    async def close(self) -> None:
        """Withdraw everything (a clean stop)."""
        self.counts.clear()
        await self._publish()

    async def _publish(self) -> None:
        async with self._lock:
            if self.counts:
                await self.subscriptions.publish(self.instance, dict.fromkeys(self.counts, 0))
                if self._refresher is None or self._refresher.done():
                    self._refresher = asyncio.create_task(self._refresh(), name=f"subscriptions {self.instance}")
                return
            if self._refresher is not None:
                self._refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._refresher
                self._refresher = None
            await self.subscriptions.withdraw(self.instance)

    async def _refresh(self) -> None:
        """Refresh the TTL every third of it; a Redis outage is waited out (the set is published again after it)."""
        while True:
            await asyncio.sleep(self.subscriptions.ttl_ms / 3000)
            try:
                await self.subscriptions.refresh(self.instance)
            except RedisError as exc:
                logger.debug("cannot refresh the subscriptions of %s: %s", self.instance, exc)
