"""Which streams the engine reads, and warming new series up.

``SeriesSync.sync`` (on start, after every rule change, every ``registry_poll_s``): the rules' symbol patterns are
resolved against the pairs the feed and the builder publish (``FEED_REGISTRY``, ``shared.candle_series``) into series
(exchange, symbol, timeframe), tickers and trades to read; the series are subscribed (``subscriptions.py``) with the
rules' look-back; a new candle stream is warmed up (the closed candles this consumer group already processed, fed
without firing) before it is read; a series whose look-back grew, or whose history candle_builder backfilled, is
re-read from its stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from services.alert_engine.core import AlertEngine
from services.alert_engine.settings import Settings
from services.alert_engine.subscriptions import SeriesKey, Subscriptions
from shared import streams
from shared.bus import Consumer
from shared.bus import as_str as _s
from shared.candle_series import all_series, history_from, series_stream
from shared.errors import DecodeError
from shared.history import MAX_HISTORY_BARS
from shared.partitions import partition_of
from shared.schemas import Candle, unpack

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


class SeriesSync:
    """Keeps the consumer's streams, the subscriptions and the engine's windows in step with the rules."""

    def __init__(self, settings: Settings, redis: Redis, engine: AlertEngine, consumer: Consumer[Any]) -> None:
        self.settings = settings
        self.redis = redis
        self.engine = engine
        self.consumer = consumer
        self.subscriptions = Subscriptions(redis, consumer.name)
        self.consumed: set[str] = set()  # the streams the consumer reads
        self.ticker_pairs: set[Pair] = set()  # pairs whose tickers rules read
        self.tick_pairs: set[Pair] = set()  # pairs whose trades tick-level rules read
        self.feed_pairs: set[Pair] = set()  # pairs whose book / futures updates rules read
        self.live_series: set[SeriesKey] = set()  # series whose in-progress candles (part_live) rules read
        self.history_from: dict[SeriesKey, int] = {}  # part_candle_history_from of a series, as last seen
        self.refilled = 0  # series whose window was re-read from their stream (grown look-back, backfill)
        self._capped: set[tuple[str, SeriesKey, int]] = set()  # (rule, series, need) already logged
        self._bad_history_from: set[tuple[SeriesKey, Any]] = set()  # bad part_candle_history_from values logged
        self._lock = asyncio.Lock()

    async def wanted(self) -> tuple[set[SeriesKey], set[Pair], set[Pair], dict[Pair, set[str]]]:
        """Series (candles), pairs whose tickers and trades (for tick-level rules) the rules read, and the book /
        futures updates they read per pair."""
        routes = self.engine.routes
        series: set[SeriesKey] = set()
        tickers: set[Pair] = set()
        trades: set[Pair] = set()
        feeds: dict[Pair, set[str]] = {}
        for ex, sym in await self._known_pairs():
            series.update((ex, sym, tf) for tf in routes.needs(ex, sym))
            if routes.needs_tickers(ex, sym):
                tickers.add((ex, sym))
            if self.settings.intrabar and routes.needs_trades(ex, sym):
                trades.add((ex, sym))
            if kinds := routes.needs_feeds(ex, sym):
                feeds[(ex, sym)] = kinds
        return series, tickers, trades, feeds

    def lookback(self, key: SeriesKey) -> int:
        """Closed candles series ``key`` is read back with (warm-up) and asked of candle_builder: the rules' longest
        look-back, at least ``warmup_bars``, at most ``MAX_HISTORY_BARS`` (a cut need is logged once)."""
        needs = self.engine.routes.lookbacks(*key)
        for rule, need in needs.items():
            if need > MAX_HISTORY_BARS and (rule, key, need) not in self._capped:
                self._capped.add((rule, key, need))
                logger.warning("alert_engine: rule %r needs %d closed %s candles of %s %s; look-back cut to %d "
                               "(candle_builder's most): its values are approximate until the series has run that long",
                               rule, need, key[2], key[0], key[1], MAX_HISTORY_BARS)
        return min(MAX_HISTORY_BARS, max(self.settings.warmup_bars, *needs.values(), 0))

    async def sync(self) -> None:
        async with self._lock:  # (the housekeeping's and a rewarm's: one at a time)
            await self._sync()

    async def _sync(self) -> None:
        series, tickers, trades, feeds = await self.wanted()
        lookback = {key: self.lookback(key) for key in series}
        grew = await self.subscriptions.follow(lookback)
        for key in series:
            self.engine.reserve(key, lookback[key])
        names: dict[str, tuple[str, ...]] = {}
        live: set[SeriesKey] = set()
        for ex, sym, tf in series:
            names[self.stream(ex, sym, tf)] = ("candle", ex, sym, tf)
            if self.settings.intrabar and self.engine.routes.needs_live((ex, sym, tf)):
                # one stream per partition, shared by its series; the handler keeps the series named here
                names[streams.part_live(partition_of(ex, sym, self.settings.partitions))] = ("live",)
                live.add((ex, sym, tf))
        self.live_series = live
        # tickers and trades: one stream per partition, shared by its pairs; the handler keeps the pairs named here
        for ex, sym in tickers:
            names[streams.part_tickers(partition_of(ex, sym, self.settings.partitions))] = ("tickers",)
        for ex, sym in trades:
            names[streams.part_trades(partition_of(ex, sym, self.settings.partitions))] = ("trades",)
        self.ticker_pairs = tickers
        self.tick_pairs = trades
        for (ex, sym), kinds in feeds.items():  # one stream per partition, shared by its pairs (docs/scale-out.md)
            p = partition_of(ex, sym, self.settings.partitions)
            if "book" in kinds:
                names[streams.part_books(p)] = ("books",)
            if kinds - {"book"}:
                names[streams.part_derivs(p)] = ("derivs",)
        self.feed_pairs = set(feeds)
        new = [n for n in names if n not in self.consumed]
        if self.settings.clock == "wall":
            # live, a book or futures stream is read from the first time the engine reads it, not from its history:
            # alerts on old book states would be news of the past (a backtest, clock exchange, reads it all)
            for name in new:
                if names[name][0] in ("books", "derivs"):
                    await self.consumer.bus.ensure_group(name, self.consumer.group, start_id="$")
        new_series = {(names[n][1], names[n][2], names[n][3]) for n in new if names[n][0] == "candle"}
        await self._warm_up(sorted(new_series))
        await self._refill(grew - new_series)
        if set(names) != self.consumed:
            self.consumed = set(names)
            self.consumer.set_streams(sorted(names))
            if new:
                logger.info("alert_engine: reading %d streams (%d new)", len(names), len(new))

    async def rewarm(self) -> None:
        """Reset the engine and warm every series up again, as at start: from the closed candles this group already
        processed (entries still pending are left to the consumer)."""
        async with self._lock:
            self.engine.reset()
            self.consumed = set()
            await self._sync()

    def stream(self, exchange: str, symbol: str, timeframe: str) -> str:
        """The closed-candle stream of one series (``streams.series_candles`` of its partition)."""
        return series_stream(exchange, symbol, timeframe, self.settings.partitions)

    async def _known_pairs(self) -> set[Pair]:
        out: set[Pair] = set()
        for member in await self.redis.smembers(streams.FEED_REGISTRY):
            parts = streams.split_registry_member(member)
            if len(parts) >= 2:
                out.add((parts[0], parts[1]))
        for member in await self.redis.smembers(streams.BOOK_REGISTRY):  # pairs with order books / futures data
            parts = streams.split_registry_member(member)
            if len(parts) >= 2:
                out.add((parts[0], parts[1]))
        out.update((ex, sym) for ex, sym, _ in await all_series(self.redis, self.settings.partitions))
        for rule in self.engine.rules:  # explicit symbols on a named exchange are needed even before they appear
            if rule.exchange is not None:
                out.update((rule.exchange, s) for s in rule.symbols if not any(c in s for c in "*?["))
        return out

    # ---- warming up -------------------------------------------------------------------------------------------------

    async def _warm_up(self, new: list[SeriesKey]) -> None:
        """Feed the closed candles this group already processed on the new series (their look-back), all streams
        merged in exchange-time order, without firing.

        Merged, a rule reading another series sees that series as of each bar (``AlertEngine.on_batch``), and a bar
        whose other series had not been processed yet (its evaluation was waiting when the engine stopped) stays
        waiting: it fires when that series arrives. Entries delivered but not acked (a crash mid-batch) are left to
        the consumer, which re-reads them.
        """
        candles: list[Candle] = []
        for key in new:
            n = self.subscriptions.lookback.get(key, self.settings.warmup_bars)
            candles += await self._processed_candles(self.stream(*key), n)
        if candles:
            self.engine.on_batch(candles, fire=False)

    async def _refill(self, grew: set[SeriesKey]) -> None:
        """Re-warm read series from their stream when it holds older history than their window: those whose
        look-back grew (``grew``), and those whose ``part_candle_history_from`` moved back (candle_builder
        backfilled).

        The processed candles (the look-back's worth) are merged into the window (``AlertEngine.merge``: ts order,
        indicators rebuilt, nothing evaluated). Backfilled candles the group has not processed yet need nothing here:
        the consumer delivers them, older than the window's last bar, and the engine merges them the same way. Reading
        them back here also covers replicas (another consumer of the group may have been delivered the backfill) and
        a look-back grown over candles the stream already had.
        """
        keys = sorted(self.subscriptions.subscribed)
        if not keys:
            return
        raw = await history_from(self.redis, keys, self.settings.partitions)
        moved: set[SeriesKey] = set()
        for key in keys:
            value = raw[key]
            try:
                since = int(value)
            except (TypeError, ValueError):  # absent (no history yet), or not ours to fix: never stops the sync
                if value is not None and (key, value) not in self._bad_history_from:
                    self._bad_history_from.add((key, value))
                    logger.warning("alert_engine: ignoring %s[%s] = %r (not a timestamp)",
                                   streams.part_candle_history_from(partition_of(*key[:2], self.settings.partitions)),
                                   streams.registry_member(*key), value)
                continue
            if since < self.history_from.get(key, since + 1):  # first seen, or further back than last time
                moved.add(key)
            self.history_from[key] = since
        for key in sorted(grew | moved):
            window = self.engine.windows.get(key)
            stream = self.stream(*key)
            if window is None or stream not in self.consumed:
                continue  # not read yet: its warm-up reads the look-back
            need = min(self.subscriptions.lookback.get(key, 0), window.keep)
            have = len(window.candles)
            if have >= need or (key not in grew and have and window.candles[0].ts <= self.history_from[key]):
                continue  # already holds what the rules need, or the history the stream has
            if self.engine.merge(key, await self._processed_candles(stream, need)):
                self.refilled += 1
                logger.info("alert_engine: %s %s %s re-warmed from its stream: %d closed candles kept (%d before; "
                            "the rules need %d)", *key, len(window.candles), have, need)

    async def _processed_candles(self, stream: str, n: int) -> list[Candle]:
        """The newest ``n`` closed candles (by bucket, last revision) of ``stream`` this group already processed.

        candle_builder appends backfilled history after newer candles (``streams.part_candle_history_from``), so the
        last ``n`` entries need not be the newest ``n`` buckets: twice as many entries are read and sorted.
        """
        if n <= 0:
            return []
        try:
            groups = await self.redis.xinfo_groups(stream)
        except Exception:
            return []
        group = next((g for g in groups if _s(g.get("name")) == streams.GROUP_ALERT_ENGINE), None)
        if group is None:
            return []  # a new group reads the stream from its start: nothing was processed before
        last = _s(group["last-delivered-id"])
        if last in ("0-0", "0"):
            return []
        pending = await self.redis.xpending(stream, streams.GROUP_ALERT_ENGINE)
        boundary = last  # inclusive: the last delivered entry was processed (unless it is still pending)
        if pending and pending.get("pending"):
            boundary = f"({_s(pending['min'])}"
        entries = await self.redis.xrevrange(stream, max=boundary, min="-", count=2 * n)
        latest: dict[int, Candle] = {}
        for _, fields in reversed(entries):
            try:
                msg = unpack(fields[b"d"])
                if not isinstance(msg, dict) or msg.get("k") != "candle":
                    continue
                candle = Candle.from_msg(msg)
            except (DecodeError, KeyError, ValueError):
                continue
            if candle.closed:
                have = latest.get(candle.ts)
                if have is None or candle.revision >= have.revision:
                    latest[candle.ts] = candle
        out = [latest[ts] for ts in sorted(latest)[-n:]]
        logger.debug("alert_engine: warming up %s with %d candles", stream, len(out))
        return out
