"""market_feed's order books and futures data: the ``books`` and ``derivatives`` sections run beside the trades.

``BookTasks.run(stop)`` runs, per configured exchange, one ``adapters.ccxt_book.BookFeed`` (books, wall events) or
``adapters.ccxt_derivs.DerivsFeed`` (funding, open interest, liquidations) over the symbols this replica serves.
They publish to the pair's partition streams (``streams.part_books`` / ``part_derivs``) and channels, and the pairs
are listed in ``streams.BOOK_REGISTRY``.

One owner per pair (docs/scale-out.md): a pair's books and futures data are published only by the replica that holds
the pair's partition, and every write is fenced (``Ownership.fenced``: a replica that lost the lease cannot write).

- An exchange whose trades this replica feeds (its name is among the trades' exchanges): the trades' own leases,
  ``feed_group(exchange)`` (``trade_leases(name)``), so a pair's book comes from the replica publishing its trades.
  Every book / futures symbol must then be one of that exchange's trade symbols (``check_book_symbols``).
- Any other name (a derivatives venue such as ``binanceusdm``, a books-only replica): leases of their own,
  ``book_group(exchange)``, shared fairly between the replicas configured with it, balanced here. Do not mix, for
  one exchange name, replicas that feed its trades with replicas that only publish its books: the two groups do not
  see each other, and both would publish the books (a warning is logged when both groups have live members).

The served set is looked at again every ``recheck_s``: when it changes (a partition moved) the running feed drops the
pairs lost and starts the pairs gained (``retarget``: the other pairs' books go on untouched); a feed that fails
(markets not loading, say) is restarted after a capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from services.market_feed.adapters.ccxt_book import BookFeed, sleep_or_stop
from services.market_feed.adapters.ccxt_derivs import DerivsFeed
from services.market_feed.book_settings import BookFeedSettings, DerivsFeedSettings
from services.market_feed.settings import Settings
from shared import streams
from shared.bus import Bus, backoff_delay
from shared.errors import ConfigError
from shared.outage import suppress_unavailable
from shared.ownership import Ownership
from shared.partitions import partition_of
from shared.runtime import consumer_name

logger = logging.getLogger(__name__)

Serves = Callable[[str, str], bool]


class _Feed(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...

    async def retarget(self, symbols: list[str]) -> None: ...

    def health_fields(self) -> dict[str, Any]: ...


class BookTasks:
    """The book and futures feeds of one market_feed replica.

    ``trade_leases(name)``: the trades' ``Ownership`` of exchange ``name`` when this replica feeds its trades (None
    while it is not made yet), or None. ``serves`` (tests): which pairs to publish, unfenced, instead of leases."""

    def __init__(self, settings: Settings, redis: Redis, *, bus: Bus | None = None, serves: Serves | None = None,
                 trade_leases: Callable[[str], Ownership | None] | None = None, fed: set[str] | None = None,
                 recheck_s: float = 0.25) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = bus or Bus(redis)
        self.recheck_s = recheck_s
        self.feeds: dict[str, _Feed] = {}  # "books:<exchange>" / "derivs:<exchange>" -> the feed running
        self.trade_leases = trade_leases or (lambda name: None)
        self.fed = set(fed or ())  # exchange names whose trades this replica feeds
        self.leased = serves is None
        #: the leases of names whose trades this replica does not feed (``book_group``), balanced by ``run``
        self.own: dict[str, Ownership] = {}
        if serves is None:
            wanted: dict[str, set[int]] = {}
            for cfg in [*settings.books, *settings.derivatives]:
                if cfg.name not in self.fed:
                    wanted.setdefault(cfg.name, set()).update(
                        partition_of(cfg.name, sym, settings.partitions) for sym in cfg.symbols)
            for name, parts in wanted.items():
                self.own[name] = Ownership(redis, streams.book_group(name),
                                           consumer_name("market_feed", settings.consumer_name), settings.partitions,
                                           ttl_ms=settings.lease_ttl_ms, wanted=parts)
        self.serves: Serves = serves or self._holds

    def ownership(self, name: str) -> Ownership | None:
        """The leases the books / futures data of exchange ``name`` are published under (None: none yet)."""
        if not self.leased:
            return None
        return self.own.get(name) if name not in self.fed else self.trade_leases(name)

    def _holds(self, exchange: str, symbol: str) -> bool:
        ownership = self.ownership(exchange)
        return ownership is not None and ownership.holds(partition_of(exchange, symbol, self.settings.partitions))

    @property
    def configured(self) -> bool:
        return bool(self.settings.books or self.settings.derivatives)

    def health_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for feed in list(self.feeds.values()):
            out.update(feed.health_fields())
        return out

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        jobs = [self._follow(stop, f"books:{b.name}", b) for b in s.books]
        jobs += [self._follow(stop, f"derivs:{d.name}", d) for d in s.derivatives]
        jobs += [self._balance(stop, name, ownership) for name, ownership in self.own.items()]
        await asyncio.gather(*jobs)

    async def _balance(self, stop: asyncio.Event, name: str, ownership: Ownership) -> None:
        """Keep this replica's ``book_group(name)`` leases (every third of their TTL) until ``stop``, then hand them
        back (the others take over at once)."""
        warned = False
        try:
            while not stop.is_set():
                with suppress_unavailable():  # Redis away, or a read-only node during a failover: next round
                    now = int(time.time() * 1000)
                    gained, lost = await ownership.balance(now)
                    if gained or lost:
                        logger.info("%s books/futures: partitions %s (gained %s, lost %s)", name,
                                    sorted(ownership.owned) or "none", gained or "-", lost or "-")
                    traders = await self.redis.zcount(streams.members(streams.feed_group(name)),
                                                      now - ownership.ttl_ms, "+inf")
                    if traders and not warned:
                        logger.warning("%s: replicas feeding its trades are running, and this one publishes its "
                                       "books / futures data under leases of its own: both publish them. Give every "
                                       "replica of %s the same exchanges (docs/scale-out.md)", name, name)
                    warned = warned or bool(traders)
                await sleep_or_stop(stop, ownership.ttl_ms / 3000)
        finally:
            with contextlib.suppress(Exception):
                await ownership.leave()

    def _make(self, cfg: BookFeedSettings | DerivsFeedSettings, symbols: list[str]) -> _Feed:
        mine = cfg.model_copy(update={"symbols": symbols})
        ownership = self.ownership(cfg.name)
        if isinstance(mine, BookFeedSettings):
            return BookFeed(mine, self.redis, bus=self.bus, partitions=self.settings.partitions, ownership=ownership)
        return DerivsFeed(mine, self.redis, bus=self.bus, partitions=self.settings.partitions, ownership=ownership)

    async def _follow(self, stop: asyncio.Event, name: str, cfg: BookFeedSettings | DerivsFeedSettings) -> None:
        """Keep one feed running over the served symbols of ``cfg``."""
        current: list[str] = []
        task: asyncio.Task[None] | None = None
        feed_stop = asyncio.Event()
        failures = 0
        try:
            while not stop.is_set():
                want = [sym for sym in cfg.symbols if self.serves(cfg.name, sym)]
                failed = task is not None and task.done()
                if failed and task is not None and not task.cancelled() and task.exception() is not None:
                    failures += 1
                    logger.warning("%s feed failed (%s): restarting", name, task.exception())
                    await sleep_or_stop(stop, backoff_delay(failures, base=cfg.backoff_base_s, cap=cfg.backoff_cap_s))
                kind = "book" if isinstance(cfg, BookFeedSettings) else "derivs"
                if want != current and want and not failed and task is not None and not stop.is_set():
                    # partitions moved: the running feed drops and adds pairs, the others' books go on untouched
                    logger.info("%s: %d symbol(s) now: %s", name, len(want), ", ".join(want))
                    await self.redis.sadd(streams.BOOK_REGISTRY,
                                          *(streams.registry_member(cfg.name, s, kind) for s in want))
                    await self.feeds[name].retarget(want)
                    current = want
                elif want != current or failed:
                    if task is not None:
                        await _stop(task, feed_stop)
                        self.feeds.pop(name, None)
                    current, task = want, None
                    if want and not stop.is_set():
                        logger.info("%s: %d symbol(s): %s", name, len(want), ", ".join(want))
                        await self.redis.sadd(streams.BOOK_REGISTRY,
                                              *(streams.registry_member(cfg.name, s, kind) for s in want))
                        feed_stop = asyncio.Event()
                        feed = self.feeds[name] = self._make(cfg, want)
                        task = asyncio.create_task(feed.run(feed_stop), name=f"market_feed-{name}")
                elif task is not None and not task.done():
                    failures = 0
                await sleep_or_stop(stop, self.recheck_s)
        finally:
            if task is not None:
                await _stop(task, feed_stop)


def check_book_symbols(settings: Settings, fed: dict[str, list[str]]) -> None:
    """ConfigError for a books / derivatives symbol of an exchange whose trades this replica feeds (``fed``: name ->
    trade symbols) that is not one of those trade symbols: its book is published under the trades' leases, which
    cover only the partitions of the trade symbols."""
    for section, entries in (("books", settings.books), ("derivatives", settings.derivatives)):
        for i, cfg in enumerate(entries):
            if cfg.name in fed:
                missing = [sym for sym in cfg.symbols if sym not in fed[cfg.name]]
                if missing:
                    raise ConfigError(
                        f"market_feed.{section}[{i}].symbols — {', '.join(missing)} not among the trade symbols of "
                        f"exchange {cfg.name!r}: a pair's {section} are published by the replica holding its trades' "
                        f"partition; add the symbols to that exchange's trades, or publish them under another name")


async def _stop(task: asyncio.Task[None], stop: asyncio.Event, grace_s: float = 5.0) -> None:
    """Ask a feed to stop, then cancel it if it has not within ``grace_s``."""
    stop.set()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    if not task.done():
        task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
