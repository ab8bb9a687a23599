"""Series that subscribers (the alert engine, the API's live views) ask candle_builder for, owned by live instances.

Each subscriber instance keeps its whole set in one hash, ``streams.subscriber(instance)``: "exchange|symbol|tf" ->
look-back (closed candles of history it needs before its first live one; 0 = none), and ``UNTIL``: the Redis time
(ms) until which the set is live, which the instance's heartbeat moves on (``refresh``). There is no reference count
to leak. ``streams.SUBSCRIBERS`` indexes the instances; ``read_all`` (candle_builder's discovery) merges every live
instance's set, taking the largest look-back asked for a series.

A set past its ``UNTIL`` is still given by ``read_all`` for ``grace_ms`` (default: the TTL) counted from the first
read (of this reader) that found it stale, then deleted. So the series of a SIGKILLed subscriber go within TTL +
grace, and Redis away for longer than the TTL (an outage, a restart from its AOF) does not make a reader, even one
started meanwhile, drop what only a subscriber asked for before that subscriber's next heartbeat. The set is not a
key with a TTL for that reason: it would be gone, contents and all, the moment Redis is back. A withdrawn set (a
clean stop) or a smaller one published goes at once.

A process whose views come and go (the API's ``/ws`` sockets, ``sentinel.client``'s adapter in a GUI) counts its
references in memory with ``HeldSeries`` and publishes the series it holds as its own instance: a killed process
leaves nothing behind.
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

#: The field of a subscriber's hash holding the Redis time (ms) until which its set is live.
UNTIL = "_until"

# Redis' own clock (ms), so a subscriber's and a reader's clocks never need to agree.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: the instance's hash, SUBSCRIBERS. ARGV: instance, ttl ms, then field, value pairs (none: withdraw the set).
_PUBLISH = _NOW + """
redis.call('DEL', KEYS[1])
if #ARGV > 2 then
  for i = 3, #ARGV, 1000 do  -- (unpack's stack limit; pairs stay whole)
    redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('HSET', KEYS[1], '""" + UNTIL + """', string.format('%.0f', now + tonumber(ARGV[2])))
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
"""

# Same KEYS and ARGV (no pairs): move UNTIL on; 0 if the set is gone (deleted by a reader after its grace).
_REFRESH = _NOW + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], '""" + UNTIL + """', string.format('%.0f', now + tonumber(ARGV[2])))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# Delete the sets of instances that are gone or still stale (UNTIL before now), atomically with the check: a
# subscriber that refreshed meanwhile is never dropped. KEYS: SUBSCRIBERS, then one hash per ARGV instance.
_PRUNE = _NOW + """
for i = 1, #ARGV do
  local untl = redis.call('HGET', KEYS[i + 1], '""" + UNTIL + """')
  if redis.call('EXISTS', KEYS[i + 1]) == 0 or (untl and tonumber(untl) < now) then
    redis.call('DEL', KEYS[i + 1])
    redis.call('SREM', KEYS[1], ARGV[i])
  end
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
        self._stale: dict[str, float] = {}  # (read_all) instance -> when a read first found its set stale
        if redis is not None:  # (an app built without Redis, e.g. for its OpenAPI document, registers nothing)
            self._publish = redis.register_script(_PUBLISH)
            self._refresh = redis.register_script(_REFRESH)
            self._prune = redis.register_script(_PRUNE)

    async def publish(self, instance: str, series: Mapping[Series, int]) -> None:
        """Make ``series`` (series -> look-back) the whole set ``instance`` subscribes to, live for ``ttl_ms``."""
        pairs = [x for s, n in series.items() for x in (streams.registry_member(*s), max(0, int(n)))]
        await self._publish(keys=[streams.subscriber(instance), streams.SUBSCRIBERS],
                            args=[instance, self.ttl_ms, *pairs])
        self._mine[instance] = dict(series)

    async def refresh(self, instance: str) -> None:
        """Keep ``instance``'s set live for another ``ttl_ms`` (its heartbeat calls this); if a reader deleted it
        meanwhile (a pause longer than TTL + grace), publish it again."""
        mine = self._mine.get(instance)
        if not mine:
            return
        if not await self._refresh(keys=[streams.subscriber(instance), streams.SUBSCRIBERS],
                                   args=[instance, self.ttl_ms]):
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
        """Every series some live subscriber wants (or a stale one within the grace period), with the largest
        look-back asked for it."""
        instances = [m.decode() if isinstance(m, bytes) else m for m in await self.redis.smembers(streams.SUBSCRIBERS)]
        seconds, micros = await self.redis.time()  # (alone: a Redis Cluster pipeline refuses TIME)
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.hgetall(streams.subscriber(instance))
            replies = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        mono = time.monotonic()
        out: dict[Series, int] = {}
        gone = []
        stale: dict[str, float] = {}
        for instance, rows in zip(instances, replies):
            until = rows.pop(UNTIL.encode(), None)
            if not rows:
                gone.append(instance)
                continue
            if until is not None and _int(until) < now_ms:  # not refreshed within its TTL
                since = stale[instance] = self._stale.get(instance, mono)
                if mono - since >= self.grace_s:
                    gone.append(instance)
                    continue
            for member, bars in rows.items():
                _merge(out, member, bars)
        self._stale = stale
        if gone:
            await self._prune(keys=[streams.SUBSCRIBERS, *map(streams.subscriber, gone)], args=gone)
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
