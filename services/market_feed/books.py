"""market_feed's order books and futures data: the ``books`` and ``derivatives`` sections run beside the trades.

``BookTasks.run(stop)`` runs, per configured exchange, one ``adapters.ccxt_book.BookFeed`` (books, wall events) or
``adapters.ccxt_derivs.DerivsFeed`` (funding, open interest, liquidations) over the symbols this replica serves
(``serves(exchange, symbol)``: the pairs of the partitions it owns; every pair when it runs alone). They publish to
the pair's partition streams (``streams.part_books`` / ``part_derivs``) and channels, and the pairs are listed in
``streams.BOOK_REGISTRY``. The served set is looked at
again every ``recheck_s``: when it changes (a partition moved) the feed is restarted on the new symbols; a feed that
fails (markets not loading, say) is restarted after a capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from services.market_feed.adapters.ccxt_book import BookFeed, sleep_or_stop
from services.market_feed.adapters.ccxt_derivs import DerivsFeed
from services.market_feed.book_settings import BookFeedSettings, DerivsFeedSettings
from services.market_feed.settings import Settings
from shared import streams
from shared.bus import Bus, backoff_delay

logger = logging.getLogger(__name__)

Serves = Callable[[str, str], bool]


class _Feed(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...

    def health_fields(self) -> dict[str, Any]: ...


class BookTasks:
    """The book and futures feeds of one market_feed replica."""

    def __init__(self, settings: Settings, redis: Redis, *, bus: Bus | None = None, serves: Serves | None = None,
                 recheck_s: float = 1.0) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = bus or Bus(redis)
        self.serves: Serves = serves or (lambda exchange, symbol: True)
        self.recheck_s = recheck_s
        self.feeds: dict[str, _Feed] = {}  # "books:<exchange>" / "derivs:<exchange>" -> the feed running

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
        await asyncio.gather(*jobs)

    def _make(self, cfg: BookFeedSettings | DerivsFeedSettings, symbols: list[str]) -> _Feed:
        mine = cfg.model_copy(update={"symbols": symbols})
        if isinstance(mine, BookFeedSettings):
            return BookFeed(mine, self.redis, bus=self.bus, partitions=self.settings.partitions)
        return DerivsFeed(mine, self.redis, bus=self.bus, partitions=self.settings.partitions)

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
                if want != current or failed:
                    if task is not None:
                        await _stop(task, feed_stop)
                        self.feeds.pop(name, None)
                    current, task = want, None
                    if want and not stop.is_set():
                        logger.info("%s: %d symbol(s): %s", name, len(want), ", ".join(want))
                        kind = "book" if isinstance(cfg, BookFeedSettings) else "derivs"
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


async def _stop(task: asyncio.Task[None], stop: asyncio.Event, grace_s: float = 5.0) -> None:
    """Ask a feed to stop, then cancel it if it has not within ``grace_s``."""
    stop.set()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    if not task.done():
        task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
