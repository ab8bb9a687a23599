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

    chunk_s = 0.005  # a publishing round writes what it built every this much building (``publish_once``)

    def __init__(self, settings: BookFeedSettings, redis: Redis, *, bus: Bus | None = None,
                 exchange: Any = None, partitions: int = 16, ownership: Ownership | None = None) -> None:
        """``partitions``: the common setting (a pair's snapshots go to its partition's stream); ``ownership``: the
        leases under which they are written (None: unfenced, a feed on its own)."""
        self.settings = settings
        self.partitions = partitions
        self.ownership = ownership
        self.bus = bus or Bus(redis)
        self.exchange = exchange
        self.pairs = {sym: self._pair(sym) for sym in settings.symbols}
        self.health = {sym: BookHealth() for sym in settings.symbols}
        self._books: dict[str, Any] = {}  # the ccxt book of each pair; None while it is being rebuilt
        self._edges: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}  # each pair's watches, while ``run`` runs
        self._stop: asyncio.Event | None = None

    def _pair(self, symbol: str) -> PairBook:
        s = self.settings
        return PairBook(s.name, symbol, s.top_n, tuple(s.bands_bps),
                        WallTracker(s.wall_bps, s.wall_min_ratio, s.wall_min_size, s.wall_eaten_fraction)
                        if s.walls else None)

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
        self._stop = stop
        for symbol in self.pairs:
            self._watch(stop, symbol)
        try:
            async with tasks_until_done(self._publish_loop(stop)):
                await stop.wait()
        finally:
            await cancel_tasks([t for tasks in self._tasks.values() for t in tasks])
            self._tasks.clear()
            with contextlib.suppress(Exception):
                await self.exchange.close()

    def _watch(self, stop: asyncio.Event, symbol: str) -> None:
        jobs = [self._watch_book(stop, symbol)]
        if self.settings.walls:
            jobs.append(self._watch_trades(stop, symbol))
        self._tasks[symbol] = [asyncio.ensure_future(job) for job in jobs]

    async def retarget(self, symbols: list[str]) -> None:
        """Publish the books of ``symbols`` from now on (while ``run`` runs): the pairs dropped stop being watched
        (unsubscribed), the pairs added are watched from a fresh snapshot, the others go on untouched."""
        for symbol in [sym for sym in self.pairs if sym not in symbols]:
            await cancel_tasks(self._tasks.pop(symbol, []))
            for name in ("pairs", "health", "_books", "_edges"):
                getattr(self, name).pop(symbol, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.exchange.un_watch_order_book(symbol), 5)
            if self.settings.walls:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.exchange.un_watch_trades(symbol), 5)
        for symbol in symbols:
            if symbol not in self.pairs:
                self.pairs[symbol], self.health[symbol] = self._pair(symbol), BookHealth()
                if self._stop is not None:
                    self._watch(self._stop, symbol)

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
        """Publish a snapshot of every pair whose book changed since its last one; returns how many.

        What is built is written every ``chunk_s`` of building (and the event loop runs meanwhile): a snapshot
        leaves within about ``chunk_s`` of its book being read, however many pairs a round has (a dense book, e.g.
        BTCUSDT's ~2,000 levels within 50 bps, takes ~2.5 ms to snapshot: 200 of them ~0.5 s)."""
        clock = time.perf_counter
        total = 0
        ready: list[tuple[str, bytes]] = []
        started = clock()
        for symbol, pair in list(self.pairs.items()):
            book = self._books.get(symbol)
            if book is None or symbol not in self.pairs or not pair.changed(book.get("nonce")):
                continue
            view = self.view(symbol)
            if view is not None:
                ready.append((symbol, pair.snapshot(view).encode()))
            if ready and clock() - started >= self.chunk_s:
                total += await self._write(ready)
                ready, started = [], clock()
        if ready:
            total += await self._write(ready)
        return total

    async def _write(self, ready: list[tuple[str, bytes]]) -> int:
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
                    if (h := self.health.get(row[0])) is not None:
                        h.fenced += 1
        for symbol in written:
            if (h := self.health.get(symbol)) is not None:  # (a pair dropped meanwhile: no counter)
                h.published += 1
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


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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
