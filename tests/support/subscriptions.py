"""What candle_builder is asked to build, read the way it reads it (``shared.subscriptions``), for tests."""

from __future__ import annotations

from collections import Counter

from shared import streams
from shared.subscriptions import UNTIL, Subscriptions


async def subscribed(redis) -> dict[str, int]:
    """Every live subscription: ``"ex|sym|tf"`` -> the largest look-back asked for it."""
    return {streams.registry_member(*key): n for key, n in (await Subscriptions(redis).read_all()).items()}


async def subscribers(redis) -> dict[str, int]:
    """``"ex|sym|tf"`` -> how many live subscriber instances ask for it."""
    counts: Counter[str] = Counter()
    for instance in await redis.smembers(streams.SUBSCRIBERS):
        for member in await redis.hkeys(streams.subscriber(instance.decode())):
            if member.decode() != UNTIL:
                counts[member.decode()] += 1
    return dict(counts)
