"""Which pairs and timeframes this replica builds, and the look-back subscribers ask for.

Every (exchange, symbol) in ``streams.FEED_REGISTRY`` gets ``settings.timeframes``; the series live subscribers ask
for (``shared.subscriptions``) add timeframes; every pair whose entries arrive is built (a pair not registered yet with
``settings.timeframes``). A pair removed from FEED_REGISTRY is unfollowed (its series dropped from memory, its state
left in Redis so entries that come later resume exactly; its members dropped from its partition's
``part_candle_registry``); a subscribed timeframe no subscriber asks for any more and that settings do not list stops.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis

from services.candle_builder.held import HeldPartitions
from services.candle_builder.series import Pair, Series, retune, say_start, text
from services.candle_builder.settings import MAX_HISTORY_BARS, Settings
from shared import streams
from shared.errors import ConfigError
from shared.outage import Outage
from shared.subscriptions import Subscriptions
from shared.timeframes import timeframe_ms

__all__ = ["Following"]

logger = logging.getLogger(__name__)


class Following:
    """The pairs followed with their timeframes (``wanted``) and look-backs (``lookback``), kept in step with the
    feeds' registry and the subscriptions (``refresh``, run by discovery)."""

    def __init__(self, settings: Settings, redis: Redis, held: HeldPartitions, outage: Outage) -> None:
        self.settings = settings
        self.redis = redis
        self.held = held  # (a series follows its pair's timeframe changes; an unfollowed pair's series goes)
        self.outage = outage
        self.subscriptions = Subscriptions(redis)
        self.wanted: dict[Pair, set[str]] = {}  # (exchange, symbol) -> timeframes
        self.lookback: dict[Pair, dict[str, int]] = {}  # (exchange, symbol) -> timeframe -> candles
        self._read: tuple[set[Any], dict[tuple[str, str, str], int]] | None = None  # what ``refresh`` last applied

    async def refresh(self) -> None:
        """Read FEED_REGISTRY and the live subscribers' series; follow new pairs, unfollow removed ones, follow
        timeframe changes."""
        feeds = await self.redis.smembers(streams.FEED_REGISTRY)
        self.outage.ok()  # (only commands that reached Redis say it is back: a timer tick may send none)
        subscribed = await self.subscriptions.read_all()
        if self._read is not None and self._read == (feeds, subscribed):
            return  # (the same registry and subscriptions: the same pairs and timeframes, already followed)
        wanted, self.lookback = self._wanted(feeds, subscribed)
        gone, dropped = self.apply_wanted(wanted)
        if gone or dropped:
            await self._unfollow(gone, dropped)
        self._read = (feeds, subscribed)  # (not before: an unfollow cut short by Redis is done again)

    def _wanted(self, feeds: Any, subscribed: dict[tuple[str, str, str], int]
                ) -> tuple[dict[Pair, set[str]], dict[Pair, dict[str, int]]]:
        """The timeframes (settings + subscriptions) and look-backs of the pairs the feeds registered (``feeds``)."""
        wanted: dict[Pair, set[str]] = {}
        for member in feeds:
            parts = streams.split_registry_member(member)
            if len(parts) == 2:
                wanted.setdefault((parts[0], parts[1]), set()).update(self.settings.timeframes)
        lookback: dict[Pair, dict[str, int]] = {}
        for (ex, sym, tf), bars in subscribed.items():
            try:
                timeframe_ms(tf)
            except ConfigError:
                logger.warning("candle_builder: ignoring a subscription to %s %s with timeframe %r", ex, sym, tf)
                continue
            if (ex, sym) in wanted:  # a subscription adds a timeframe to a pair the feed publishes, not a pair
                wanted[(ex, sym)].add(tf)
            if bars > 0:
                lookback.setdefault((ex, sym), {})[tf] = min(bars, MAX_HISTORY_BARS)
        return wanted, lookback

    async def learn(self, pair: Pair) -> None:
        """A pair whose first entries arrived before discovery saw it (a feed registers it just before it
        publishes): its timeframes and look-back now, so a timeframe a subscriber asked for is built from its first
        trade (not added later without the earlier buckets)."""
        if not await self.redis.sismember(streams.FEED_REGISTRY, streams.registry_member(*pair)):
            return  # not registered (removed): built with the settings' timeframes, as before
        wanted, lookback = self._wanted([streams.registry_member(*pair)], await self.subscriptions.read_all())
        self.wanted[pair] = wanted[pair]
        if pair in lookback:
            self.lookback[pair] = lookback[pair]

    def apply_wanted(self, wanted: dict[Pair, set[str]]) -> tuple[list[Pair], dict[Pair, set[str]]]:
        """Follow new pairs and timeframe changes; return the pairs no longer wanted and, per pair still followed,
        the timeframes it no longer builds (both for ``_unfollow``)."""
        dropped: dict[Pair, set[str]] = {}
        for pair, tfs in wanted.items():
            before = self.wanted.get(pair)
            if before != tfs:
                self.wanted[pair] = set(tfs)
                if before:
                    dropped[pair] = before - tfs
                series = self.held.series.get(pair)
                if series is not None:
                    retune(series.builder, tfs)
                    say_start(series, tfs - (before or set()), series.history_bars if series.history_bars is not None
                              else self.settings.history_bars)
        gone = [pair for pair in self.wanted if pair not in wanted]
        return gone, {pair: tfs for pair, tfs in dropped.items() if tfs}

    async def _unfollow(self, gone: list[Pair], dropped: dict[Pair, set[str]]) -> None:
        """Stop building pairs no longer wanted and drop what is no longer built from their partition's
        ``part_candle_registry`` and ``part_live_latest`` (each series' state stays in Redis: a re-added pair resumes
        from it)."""
        members: dict[int, list[str]] = {}
        for pair in gone:
            partition = self.held.partition(*pair)
            async with self.held.lock(partition):  # no read or timer tick in flight for it
                self.wanted.pop(pair, None)
                self.held.series.pop(pair, None)
                # its state as of the offset read so far (a re-added pair resumes it)
                if partition in self.held.unsaved:
                    await self.held.save(partition, [])
            registry = await self.redis.smembers(streams.part_candle_registry(partition))
            members.setdefault(partition, []).extend(
                m for m in map(text, registry) if streams.split_registry_member(m)[:2] == list(pair))
            logger.info("candle_builder: no longer following %s %s (state kept in Redis)", *pair)
        for pair, tfs in dropped.items():
            series = self.held.series.get(pair)
            for tf in tfs:
                if series is not None:
                    series.registered.discard(tf)
                members.setdefault(self.held.partition(*pair), []).append(streams.registry_member(*pair, tf))
            logger.info("candle_builder: %s %s no longer builds %s", *pair, ", ".join(sorted(tfs)))
        for partition, names in members.items():
            if names:
                await self.redis.srem(streams.part_candle_registry(partition), *names)
                await self.redis.hdel(streams.part_live_latest(partition), *names)

    def asked(self, series: Series) -> dict[str, int]:
        """The look-back subscribers ask for, per timeframe of ``series``."""
        return self.lookback.get((series.exchange, series.symbol), {})
