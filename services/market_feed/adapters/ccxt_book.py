"""Order books from ccxt.pro ``watch_order_book``: one book per pair, resynced on a gap, published throttled.

ccxt keeps each book itself, by the exchange's rules (Binance: REST snapshot, then diffs by ``U``/``u``; a diff
that does not follow on raises ``ChecksumError``, an ``InvalidNonce``, and ccxt drops the book). Per pair:

- a watch task awaits ``watch_order_book``; on ``InvalidNonce`` it logs, counts a resync, and the next call
  resubscribes and refetches the snapshot (ccxt does that itself); other errors back off (capped, jittered) and
  resubscribe, a silent book (``watch_timeout_s``) is unwatched and watched again;
- with wall events on, a trades task feeds the pair's trades (``watch_trades``, exact strings from ``info``);
- one publisher task, every ``publish_every_ms``, reads each pair's book that changed (by its nonce), converts the
  levels it needs to exact decimals (``book_core.exact_levels``), and XADDs a ``BookSnapshot`` to its pair's
  partition stream ``streams.part_books(p)`` (PUBLISHed on ``streams.channel_books`` too): with an ``ownership``
  (market_feed's leases, ``books.py``), one fenced script per partition (``publish_fenced``: written only while
  this replica holds the partition's lease), the partitions written concurrently; without one, all pairs in one
  pipeline (a feed on its own: tests, benches).

ccxt's book objects are read only between awaits (asyncio runs one thing at a time), so a snapshot is always one
state of the book, the one at its ``nonce``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import ccxt
from redis.asyncio import Redis

from services.market_feed.adapters.ccxt_exchange import load_markets, make_exchange, to_trade
from services.market_feed.book_core import BookView, PairBook, exact_levels
from services.market_feed.book_settings import BookFeedSettings
from services.market_feed.settings import ExchangeFeed
from shared import metrics, streams
from shared.bus import FIELD, Bus, backoff_delay
from shared.orderbook.walls import WallTracker
from shared.ownership import FencedError, Ownership
from shared.partitions import partition_of
from shared.runtime import tasks_until_done

logger = logging.getLogger(__name__)


@dataclass
class BookHealth:
    """Counters of one pair's book."""

    updates: int = 0       # books handed out by ccxt
    resyncs: int = 0       # gaps ccxt detected (InvalidNonce): book rebuilt from a new snapshot
    errors: int = 0        # other errors (network, exchange), each followed by a resubscription
    timeouts: int = 0      # no update within watch_timeout_s
    published: int = 0
    inexact_levels: int = 0  # numbers with more digits than a float holds (converted, not exact)
    fenced: int = 0        # snapshots not written: the partition's lease was lost (another replica owns it now)


class BookFeed:
    """Books of ``settings.symbols`` on ``settings.exchange`` (published as ``settings.name``); ``await run(stop)``."""

    def __init__(self, settings: BookFeedSettings, redis: Redis, *, bus: Bus | None = None,
                 exchange: Any = None, partitions: int = 16, ownership: Ownership | None = None) -> None:
        """``partitions``: the common setting (a pair's snapshots go to its partition's stream); ``ownership``: the
        leases under which they are written (None: unfenced, a feed on its own)."""
        self.settings = settings
        self.partitions = partitions
        self.ownership = ownership
        self.bus = bus or Bus(redis)
        self.exchange = exchange
        s = settings
        self.pairs = {sym: PairBook(s.name, sym, s.top_n, tuple(s.bands_bps),
                                    WallTracker(s.wall_bps, s.wall_min_ratio, s.wall_min_size, s.wall_eaten_fraction)
                                    if s.walls else None)
                      for sym in s.symbols}
        self.health = {sym: BookHealth() for sym in s.symbols}
        self._books: dict[str, Any] = {}  # the ccxt book of each pair; None while it is being rebuilt
        self._edges: dict[str, tuple[Decimal | None, Decimal | None]] = {}

    def health_fields(self) -> dict[str, Any]:
        """``exchange|symbol|book.<counter>`` → value, for a heartbeat hash."""
        return {f"{self.settings.name}|{sym}|book.{k}": v
                for sym, h in self.health.items() for k, v in asdict(h).items()}

    async def start(self) -> None:
        """Create the exchange and load markets (errors stop start-up)."""
        if self.exchange is None:
            feed = ExchangeFeed(id=self.settings.exchange, name=self.settings.name, symbols=self.settings.symbols,
                                tickers=False, ws_url=self.settings.ws_url, rest_url=self.settings.rest_url)
            self.exchange = make_exchange(feed)
            try:
                await load_markets(self.exchange, feed)
            except BaseException:
                await self.exchange.close()
                raise
        self.exchange.options["watchOrderBookLimit"] = self.settings.snapshot_limit

    async def run(self, stop: asyncio.Event) -> None:
        if self.exchange is None:
            await self.start()
        coros = [self._watch_book(stop, sym) for sym in self.pairs]
        if self.settings.walls:
            coros += [self._watch_trades(stop, sym) for sym in self.pairs]
        try:
            async with tasks_until_done(*coros, self._publish_loop(stop)):
                await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self.exchange.close()

    # ---- watching ------------------------------------------------------------------------------------------------

    async def _watch_book(self, stop: asyncio.Event, symbol: str) -> None:
        health, pair = self.health[symbol], self.pairs[symbol]
        limit = self.settings.snapshot_limit
        attempt = 0
        fresh = True  # the next book is the first after a (re)subscription
        while not stop.is_set():
            try:
                book = await asyncio.wait_for(self.exchange.watch_order_book(symbol, limit),
                                              self.settings.watch_timeout_s)
            except asyncio.CancelledError:
                raise
            except ccxt.InvalidNonce as exc:  # ccxt saw a gap (or a bad checksum) and dropped its book
                self._books[symbol] = None
                fresh = True
                health.resyncs += 1
                pair.resynced()
                logger.warning("%s %s book: gap, resyncing from a new snapshot (%d so far): %s",
                               self.settings.name, symbol, health.resyncs, exc)
                continue
            except Exception as exc:
                self._books[symbol] = None
                fresh = True
                attempt += 1
                if isinstance(exc, TimeoutError):
                    health.timeouts += 1
                    metrics.FEEDS_SILENT.labels(self.settings.name, "book").inc()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.exchange.un_watch_order_book(symbol), 5)
                else:
                    health.errors += 1
                pair.resynced()
                logger.warning("%s %s book: %s: %s", self.settings.name, symbol, type(exc).__name__, exc)
                await sleep_or_stop(stop, backoff_delay(attempt, base=self.settings.backoff_base_s,
                                                 cap=self.settings.backoff_cap_s))
                continue
            attempt = 0
            health.updates += 1
            if fresh:
                self._edges[symbol] = _known_edges(book, limit)
                fresh = False
            self._books[symbol] = book

    async def _watch_trades(self, stop: asyncio.Event, symbol: str) -> None:
        """The pair's trades, for wall events (eaten vs pulled). Losing some only makes an eaten wall look pulled."""
        attempt = 0
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(self.exchange.watch_trades(symbol), self.settings.watch_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                logger.warning("%s %s book trades: %s: %s", self.settings.name, symbol, type(exc).__name__, exc)
                await sleep_or_stop(stop, backoff_delay(attempt, base=self.settings.backoff_base_s,
                                                 cap=self.settings.backoff_cap_s))
                continue
            attempt = 0
            self.pairs[symbol].add_trades(to_trade(t) for t in raw)

    # ---- publishing ----------------------------------------------------------------------------------------------

    def view(self, symbol: str) -> BookView | None:
        """The exact view of a pair's current ccxt book that a snapshot needs; None while it is being rebuilt."""
        book = self._books.get(symbol)
        if book is None:
            return None
        pair, health = self.pairs[symbol], self.health[symbol]
        bids, asks = book["bids"], book["asks"]
        floor, ceiling = self._edges.get(symbol, (None, None))
        ts = book.get("timestamp") or int(time.time() * 1000)
        lo = hi = None
        if bids and asks:
            lo, hi = pair.read_limit(bids[0][0], asks[0][0], True), pair.read_limit(bids[0][0], asks[0][0], False)
        inexact = pair.decimals.inexact
        view_bids = exact_levels(bids, lo, True, pair.top_n, pair.decimals)
        view_asks = exact_levels(asks, hi, False, pair.top_n, pair.decimals)
        health.inexact_levels += pair.decimals.inexact - inexact
        # the view holds every level from the best to its last one: nothing beyond that is known to it
        if view_bids:
            floor = _inner(floor, view_bids[-1][0], True)
        if view_asks:
            ceiling = _inner(ceiling, view_asks[-1][0], False)
        return BookView(view_bids, view_asks, book.get("nonce"), int(ts), floor, ceiling)

    async def publish_once(self) -> int:
        """Publish a snapshot of every pair whose book changed since its last one; returns how many."""
        ready = []
        for symbol, pair in self.pairs.items():
            book = self._books.get(symbol)
            if book is None or not pair.changed(book.get("nonce")):
                continue
            view = self.view(symbol)
            if view is not None:
                ready.append((symbol, pair.snapshot(view).encode()))
        if not ready:
            return 0
        ex, maxlen = self.settings.name, self.settings.stream_maxlen
        if self.ownership is None:
            async with self.bus.pipeline() as pipe:
                for symbol, data in ready:
                    self.bus.add_to(pipe, streams.part_books(partition_of(ex, symbol, self.partitions)), data,
                                    maxlen=maxlen, channel=streams.channel_books(ex, symbol))
                await pipe.execute()
            written = [symbol for symbol, _ in ready]
        else:
            entries: dict[int, list[Entry]] = {}
            for symbol, data in ready:
                if len(data) > self.bus.settings.max_entry_bytes:  # (the pipeline path dead-letters it)
                    logger.warning("%s %s book: snapshot of %d bytes over max_entry_bytes, not published", ex, symbol,
                                   len(data))
                    continue
                p = partition_of(ex, symbol, self.partitions)
                entries.setdefault(p, []).append((symbol, streams.part_books(p), data, maxlen,
                                                  streams.channel_books(ex, symbol)))
            lost = await publish_fenced(self.ownership, entries)
            written = [row[0] for p, rows in entries.items() if p not in lost for row in rows]
            for p in lost:
                for row in entries[p]:
                    self.health[row[0]].fenced += 1
        for symbol in written:
            self.health[symbol].published += 1
        return len(written)

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.publish_every_ms / 1000
        loop = asyncio.get_running_loop()
        attempt = 0
        while not stop.is_set():
            started = loop.time()
            try:
                await asyncio.shield(self.publish_once())
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: snapshots are state, not events; the next one supersedes
                attempt += 1
                logger.warning("books: publish failed: %s: %s", type(exc).__name__, exc)
                await sleep_or_stop(stop, backoff_delay(attempt, base=0.1, cap=5.0))
            await sleep_or_stop(stop, max(0.0, interval - (loop.time() - started)))


Entry = tuple[str, str, bytes, int, str]  # symbol, stream, data, maxlen, channel


async def publish_fenced(ownership: Ownership, entries: dict[int, list[Entry]]) -> set[int]:
    """XADD (and PUBLISH) ``entries`` of each partition in one fenced script per partition
    (``Ownership.fenced``: written only while this replica holds the partition's lease), the partitions
    concurrently. Returns the partitions whose lease was lost (nothing written there; ``ownership`` forgets them).
    Other errors (Redis down) propagate after every partition's write settled."""
    async def one(partition: int, rows: list[Entry]) -> None:
        commands: list[tuple[Any, ...]] = []
        for _, stream, data, maxlen, channel in rows:
            commands.append(("XADD", stream, "MAXLEN", "~", maxlen, "*", FIELD, data))
            commands.append(("PUBLISH", channel, data))
        await ownership.fenced(partition, commands)

    parts = list(entries)
    results = await asyncio.gather(*(one(p, entries[p]) for p in parts), return_exceptions=True)
    lost = {p for p, r in zip(parts, results) if isinstance(r, FencedError)}
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, FencedError):
            raise r
    return lost


def _known_edges(book: Any, limit: int) -> tuple[Decimal | None, Decimal | None]:
    """Where ccxt's book is known level by level, from its first state after a snapshot of ``limit`` levels a side:
    down to the ``limit``-th bid and up to the ``limit``-th ask (beyond, only levels that changed since are in it).
    Conservative: levels the first diffs added inside the range push these edges inwards, never outwards."""
    bids, asks = book["bids"], book["asks"]
    floor = Decimal(repr(bids[min(len(bids), limit) - 1][0])) if bids else None
    ceiling = Decimal(repr(asks[min(len(asks), limit) - 1][0])) if asks else None
    return floor, ceiling


def _inner(edge: Decimal | None, other: Decimal, is_bid: bool) -> Decimal:
    """The nearer-to-the-mid of two edges (None = unbounded)."""
    if edge is None:
        return other
    return max(edge, other) if is_bid else min(edge, other)


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
