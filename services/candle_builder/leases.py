"""Splitting (exchange, symbol) pairs between candle_builder instances with leases in Redis.

Each instance refreshes its entry in ``streams.BUILDER_INSTANCES`` (name → last seen ms) and holds at most its fair
share (``ceil(pairs / live instances)``) of ``streams.builder_lease`` keys: SET NX PX to take a pair, a check-and-PEXPIRE
script to renew it, a check-and-DEL script to hand it back. A dead instance's leases expire after ``ttl_ms``; the
survivors' next balance round takes the pairs over, resuming from the state and stream id saved in Redis.

Fencing: the app WATCHes the leases of the streams it writes for and checks they are still its own before MULTI, so an
instance that lost a lease (paused past its TTL) cannot write stale candles or state: its EXEC fails.
"""

from __future__ import annotations

import math
import random

from redis.asyncio import Redis

from shared import streams

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

Pair = tuple[str, str]


class Leases:
    """The pairs this instance (``name``) owns."""

    def __init__(self, redis: Redis, name: str, ttl_ms: int) -> None:
        self.redis = redis
        self.name = name
        self.ttl_ms = ttl_ms
        self.owned: set[Pair] = set()
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def key(pair: Pair) -> str:
        return streams.builder_lease(*pair)

    async def share(self, n_pairs: int, now_ms: int) -> int:
        """Announce this instance and return its fair share of ``n_pairs``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(streams.BUILDER_INSTANCES, {self.name: now_ms})
            pipe.zremrangebyscore(streams.BUILDER_INSTANCES, "-inf", now_ms - self.ttl_ms)
            pipe.zcard(streams.BUILDER_INSTANCES)
            _, _, live = await pipe.execute()
        return math.ceil(n_pairs / max(int(live), 1))

    async def renew(self) -> set[Pair]:
        """Extend every owned lease; return (and forget) the ones another instance holds now."""
        lost = set()
        for pair in list(self.owned):
            if not await self._renew(keys=[self.key(pair)], args=[self.name, self.ttl_ms]):
                lost.add(pair)
        self.owned -= lost
        return lost

    async def acquire(self, pair: Pair) -> bool:
        if await self.redis.set(self.key(pair), self.name, nx=True, px=self.ttl_ms):
            self.owned.add(pair)
            return True
        return False

    async def release(self, pair: Pair) -> None:
        self.owned.discard(pair)
        await self._release(keys=[self.key(pair)], args=[self.name])

    async def leave(self) -> None:
        """Hand every pair back at once (clean shutdown): the others take over without waiting for the TTL."""
        for pair in list(self.owned):
            await self.release(pair)
        await self.redis.zrem(streams.BUILDER_INSTANCES, self.name)

    def plan(self, pairs: set[Pair], share: int) -> tuple[list[Pair], list[Pair]]:
        """Which owned pairs to hand back (over the share) and which free ones to try, in that order."""
        owned = sorted(self.owned & pairs) + sorted(self.owned - pairs)
        excess = owned[share:] if len(owned) > share else []
        candidates = list(pairs - self.owned)
        random.shuffle(candidates)
        return excess, candidates
