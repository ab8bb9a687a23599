"""The series this engine asks candle_builder for, as this instance's set in ``shared.subscriptions`` (series ->
closed candles of history wanted). The set lives as long as the instance: its heartbeat refreshes it
(``refresh``), so a SIGKILLed engine's series vanish within the TTL and nothing is left counted. The only module of
the engine that writes them."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.subscriptions import Subscriptions as SharedSubscriptions

SeriesKey = tuple[str, str, str]


class Subscriptions:
    """This engine instance's subscriptions: the series it asked for and the look-back it asked for each."""

    def __init__(self, redis: Redis, instance: str) -> None:
        self._shared = SharedSubscriptions(redis)
        self.instance = instance
        self.subscribed: set[SeriesKey] = set()
        self.lookback: dict[SeriesKey, int] = {}

    async def follow(self, wanted: dict[SeriesKey, int]) -> set[SeriesKey]:
        """Subscribe to exactly the series in ``wanted`` (series -> look-back); returns the series already
        subscribed whose look-back grew (their stream may hold older candles than were read)."""
        grew = {key for key, n in wanted.items() if key in self.subscribed and n > self.lookback.get(key, 0)}
        if set(wanted) != self.subscribed or any(self.lookback.get(k) != n for k, n in wanted.items()):
            await self._shared.publish(self.instance, wanted)
            self.subscribed = set(wanted)
            self.lookback = dict(wanted)
        return grew

    async def refresh(self) -> None:
        """Keep this instance's set alive (the heartbeat calls it)."""
        await self._shared.refresh(self.instance)

    async def drop_all(self) -> None:
        """Subscribe to nothing (a clean stop)."""
        await self._shared.withdraw(self.instance)
        self.subscribed.clear()
        self.lookback.clear()
