"""What the rules read, per partition: the plan each partition's worker follows.

``SeriesSync.sync`` (on start, after every rule change, every ``registry_poll_s``; only when the pairs known or the
rules changed since the last time): the rules' symbol patterns are resolved against the pairs the feed and the builder publish (``FEED_REGISTRY``, ``BOOK_REGISTRY``, the partitions'
candle registries) into series (exchange, symbol, timeframe), tickers, trades and book / futures updates to read; every
series is subscribed (``subscriptions.py``: every replica asks for every series the rules need, with the rules'
look-back, the simplest correct choice), and the result is split by partition into ``PartPlan``s. A partition's plan
also names the series and tickers of *other* partitions its multi-symbol rules read (``foreign``): its worker reads
them from those series' own streams.

The plan has a ``version``: a partition's worker that sees its plan change drops its engine and warms a new one up
from Redis (``partition.py``), as a takeover does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from services.alert_engine.core import AlertEngine
from services.alert_engine.core.routes import Binding
from services.alert_engine.settings import Settings
from services.alert_engine.subscriptions import SeriesKey, Subscriptions
from shared import streams
from shared.candle_series import all_series
from shared.history import MAX_HISTORY_BARS
from shared.partitions import partition_of

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


@dataclass
class PartPlan:
    """What the worker of one partition reads."""

    series: dict[SeriesKey, int] = field(default_factory=dict)  # series of the partition the rules read -> look-back
    live: set[SeriesKey] = field(default_factory=set)  # of those, read in progress (intrabar rules)
    tickers: set[Pair] = field(default_factory=set)  # pairs of the partition whose tickers rules read
    trades: set[Pair] = field(default_factory=set)  # pairs of the partition whose trades tick-level rules read
    feeds: dict[Pair, set[str]] = field(default_factory=dict)  # pairs -> book / futures kinds rules read
    foreign: dict[SeriesKey, int] = field(default_factory=dict)  # series of other partitions its rules read
    foreign_tickers: set[Pair] = field(default_factory=set)  # pairs of other partitions whose tickers they read

    @property
    def empty(self) -> bool:
        return not (self.series or self.tickers or self.trades or self.feeds)


class SeriesSync:
    """Keeps the plan and the subscriptions in step with the rules and the registries."""

    def __init__(self, settings: Settings, redis: Redis, routing: AlertEngine, instance: str) -> None:
        self.settings = settings
        self.redis = redis
        self.routing = routing  # an engine holding the rules, for their routes only (never fed)
        self.subscriptions = Subscriptions(redis, instance)
        self.plans: dict[int, PartPlan] = {}
        self.version = 0  # bumped whenever some partition's plan changed
        self.versions: dict[int, int] = {}  # partition -> the version its plan last changed in
        self._capped: set[tuple[str, SeriesKey, int]] = set()  # (rule, series, need) already logged
        self._lock = asyncio.Lock()
        # what the plans were last made of: the same pairs and routes make the same plans (a whole market's rules
        # resolved again every ``registry_poll_s`` for nothing were ~6% of the engine's CPU)
        self._made_of: tuple[set[Pair], object] | None = None

    def plan(self, partition: int) -> PartPlan:
        return self.plans.get(partition) or PartPlan()

    def partition(self, exchange: str, symbol: str) -> int:
        return partition_of(exchange, symbol, self.settings.partitions)

    def lookback(self, key: SeriesKey) -> int:
        """Closed candles series ``key`` is read back with (warm-up) and asked of candle_builder: the rules' longest
        look-back, at least ``warmup_bars``, at most ``MAX_HISTORY_BARS`` (a cut need is logged once)."""
        needs = self.routing.routes.lookbacks(*key)
        for rule, need in needs.items():
            if need > MAX_HISTORY_BARS and (rule, key, need) not in self._capped:
                self._capped.add((rule, key, need))
                logger.warning("alert_engine: rule %r needs %d closed %s candles of %s %s; look-back cut to %d "
                               "(candle_builder's most): its values are approximate until the series has run that long",
                               rule, need, key[2], key[0], key[1], MAX_HISTORY_BARS)
        return min(MAX_HISTORY_BARS, max(self.settings.warmup_bars, *needs.values(), 0))

    async def sync(self) -> bool:
        """Resolve the rules against the registries; True if some partition's plan changed."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> bool:
        routes = self.routing.routes
        known = await self._known_pairs()
        if self._made_of is not None and self._made_of[1] is routes and self._made_of[0] == known:
            return False
        intrabar = self.settings.intrabar
        plans: dict[int, PartPlan] = {}
        lookback: dict[SeriesKey, int] = {}
        for ex, sym in sorted(known):
            p = self.partition(ex, sym)
            plan = plans.setdefault(p, PartPlan())
            for tf in routes.needs(ex, sym):
                key = (ex, sym, tf)
                plan.series[key] = lookback[key] = self.lookback(key)
                if intrabar and routes.needs_live(key):
                    plan.live.add(key)
            if routes.needs_tickers(ex, sym):
                plan.tickers.add((ex, sym))
            if intrabar and routes.needs_trades(ex, sym):
                plan.trades.add((ex, sym))
            if kinds := routes.needs_feeds(ex, sym):
                plan.feeds[(ex, sym)] = kinds
        for p, plan in plans.items():  # what the partition's rules read of other partitions
            for binding in self._bindings(plan):
                for ref in binding.refs:
                    if self.partition(*ref[:2]) != p:
                        plan.foreign[ref] = lookback.get(ref) or self.lookback(ref)
                for pair in binding.pairs:
                    if self.partition(*pair) != p:
                        plan.foreign_tickers.add(pair)
        await self.subscriptions.follow(lookback | {k: n for plan in plans.values() for k, n in plan.foreign.items()})
        self._made_of = (known, routes)
        changed = {p for p in set(plans) | set(self.plans) if plans.get(p) != self.plans.get(p)}
        if changed:
            self.version += 1
            for p in changed:
                self.versions[p] = self.version
            self.plans = plans
            logger.info("alert_engine: %d series in %d partitions (%d partitions changed)",
                        sum(len(pl.series) for pl in plans.values()), len(plans), len(changed))
        return bool(changed)

    def _bindings(self, plan: PartPlan) -> Iterable[Binding]:
        routes = self.routing.routes
        for key in plan.series:
            yield from routes.closed(key)
        for ex, sym in plan.tickers:
            yield from routes.tick_rules(ex, sym, "ticker")
        for ex, sym in plan.trades:
            yield from routes.tick_rules(ex, sym, "trade")
        for (ex, sym), kinds in plan.feeds.items():
            for kind in kinds:
                yield from routes.feed(ex, sym, kind)

    async def _known_pairs(self) -> set[Pair]:
        out: set[Pair] = set()
        for registry in (streams.FEED_REGISTRY, streams.BOOK_REGISTRY):  # BOOK: pairs with books / futures data
            for member in await self.redis.smembers(registry):
                parts = streams.split_registry_member(member)
                if len(parts) >= 2:
                    out.add((parts[0], parts[1]))
        out.update(key[:2] for key in await all_series(self.redis, self.settings.partitions))
        for rule in self.routing.rules:  # explicit symbols on a named exchange are needed even before they appear
            if rule.exchange is not None:
                out.update((rule.exchange, s) for s in rule.symbols if not any(c in s for c in "*?["))
        return out
