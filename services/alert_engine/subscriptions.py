"""The series this engine asks candle_builder for: ``streams.SUBSCRIPTIONS`` (member -> reference count) and
``streams.SUBSCRIPTION_LOOKBACK`` (member -> closed candles of history wanted), shared with the engine's replicas and
the API. The only module of the engine that writes them."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared import streams

SeriesKey = tuple[str, str, str]

# Subscribing, atomically with other subscribers of the same series (the engine's replicas, the API):
# the look-back becomes the max of what is there and ours (never lowered by a smaller need), then the count goes up.
# KEYS: SUBSCRIPTIONS, SUBSCRIPTION_LOOKBACK; ARGV: member, look-back, 1 (increment) | 0 (look-back only), ...
_SUBSCRIBE = """
for i = 1, #ARGV, 3 do
  local want = tonumber(ARGV[i + 1])
  local have = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if want > have then redis.call('HSET', KEYS[2], ARGV[i], want) end
  if ARGV[i + 2] == '1' then redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
end
return 1
"""
# Unsubscribing: the count goes down; at 0 the series and its look-back are removed together.
# KEYS: SUBSCRIPTIONS, SUBSCRIPTION_LOOKBACK; ARGV: members
_UNSUBSCRIBE = """
for i = 1, #ARGV do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 1
"""
_KEYS = [streams.SUBSCRIPTIONS, streams.SUBSCRIPTION_LOOKBACK]


class Subscriptions:
    """This engine's subscriptions: the series it counted and the look-back it asked for each."""

    def __init__(self, redis: Redis) -> None:
        self._subscribe = redis.register_script(_SUBSCRIBE)
        self._unsubscribe = redis.register_script(_UNSUBSCRIBE)
        self.subscribed: set[SeriesKey] = set()
        self.lookback: dict[SeriesKey, int] = {}

    async def follow(self, wanted: dict[SeriesKey, int]) -> set[SeriesKey]:
        """Subscribe to the series in ``wanted`` (series -> look-back) and unsubscribe from the others; returns the
        series already subscribed whose look-back grew (their stream may hold older candles than were read)."""
        added = wanted.keys() - self.subscribed
        changed = {key: n for key, n in wanted.items() if self.lookback.get(key) != n}
        grew = {key for key, n in changed.items() if key in self.subscribed and n > self.lookback.get(key, 0)}
        if added or changed:
            # one script: max(look-back there, ours), then the count (a builder that sees the series sees its need)
            args: list[Any] = []
            for key in sorted(changed.keys() | added):
                args += [streams.registry_member(*key), wanted[key], int(key in added)]
            await self._subscribe(keys=_KEYS, args=args)
            self.subscribed |= added
            self.lookback.update(changed)
        await self.drop(self.subscribed - wanted.keys())
        return grew

    async def drop(self, keys: set[SeriesKey]) -> None:
        """Unsubscribe from ``keys`` (all of them: ``drop(set(subscribed))``, on stop)."""
        if not keys:
            return
        await self._unsubscribe(keys=_KEYS, args=[streams.registry_member(*key) for key in sorted(keys)])
        self.subscribed -= keys
        for key in keys:
            self.lookback.pop(key, None)
