"""One partition's engine: its own ``AlertEngine`` over the series of the partition, warmed up from Redis, reading the
partition's streams from its saved offsets, committing each read (fenced) with its alerts and new offsets.

Streams a worker of partition ``p`` reads (``streams``; docs/scale-out.md):

- in one XREAD (one hash slot): ``part_candles(p)`` (always: its offset says how far the engine got, even when no
  rule reads a series of ``p``), and what the plan needs of ``part_live(p)``, ``part_tickers(p)``, ``part_trades(p)``,
  ``part_books(p)``, ``part_derivs(p)``;
- for a multi-symbol rule of ``p`` reading a series (or tickers) of another partition ``q``: that series' own stream
  ``series_candles(q, ...)`` (``part_tickers(q)``), one XREAD per other partition, from its own offset, saved in
  ``part_state(p, "alert_engine")`` like the others.

Warm-up (a takeover, a restart, a plan change, a failed commit): each series' closed candles with entry id <= the
saved offset of the stream it is read from (``XREVRANGE`` on its series stream: the look-back's worth), all series
merged in exchange-time order without firing, so a bar that was waiting for another series when the last owner
stopped is waiting again. Rule statuses are re-derived by that replay (``last_fired`` comes back from
``part_rule_state(p)``); cooldowns are Redis' (the commit's answers correct this engine's guesses).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from redis.asyncio import Redis

from services.alert_engine.commit import AlertCommit
from services.alert_engine.core import AlertEngine, Fire
from services.alert_engine.core.feeds import BookFigures
from services.alert_engine.inputs import decode_input
from services.alert_engine.series_sync import PartPlan
from services.alert_engine.settings import Settings
from services.alert_engine.subscriptions import SeriesKey
from shared import metrics, streams
from shared.bus import Bus
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.errors import DecodeError
from shared.ownership import Ownership
from shared.partitioned import entry_id, read_streams
from shared.partitions import partition_of
from shared.rules import RuleSet
from shared.schemas import Candle, Ticker, TradeBatch, unpack
from shared.stream_entries import entry_data
from shared.timeframes import timeframe_ms

logger = logging.getLogger(__name__)

GROUP = streams.GROUP_ALERT_ENGINE
FEEDS = (BookFigures, FundingRate, OpenInterest, Liquidation)
Clock = Any


class PlanStale(Exception):
    """A read holds data of pairs the rules need that the partition's plan does not list yet."""

    def __init__(self, pairs: set[tuple[str, str]]) -> None:
        super().__init__(f"pairs not planned yet: {sorted(pairs)}")
        self.pairs = pairs


class PartitionEngine:
    """The engine of partition ``partition``, following ``plan`` (built by ``open``)."""

    def __init__(self, settings: Settings, redis: Redis, raw: Any, bus: Bus, partition: int, plan: PartPlan,
                 version: int, ruleset: RuleSet, clock: Clock) -> None:
        self.settings = settings
        self.redis = redis
        self.raw = raw  # ``shared.partitioned.raw_reader``
        self.bus = bus
        self.partition = partition
        self.plan = plan
        self.version = version
        self.ruleset = ruleset
        parts = settings.partitions
        self.engine = AlertEngine(ruleset, keep=settings.keep_bars, clock=clock,
                                  owns=lambda ex, sym: partition_of(ex, sym, parts) == partition)
        for key, bars in (plan.series | plan.foreign).items():  # a rule's look-back beyond keep_bars
            self.engine.reserve(key, bars)
        self.commit = AlertCommit(settings, redis, self.engine)
        self.offsets: dict[str, bytes] = {}
        # offsets of reads that fired nothing, not saved yet (``offsets_every_ms``), and when offsets were last saved
        self.unsaved: dict[str, bytes] = {}
        self._saved_at = float("-inf")
        self._rows_at = float("-inf")  # when the changed rule state rows last went with a commit
        self._evaluated = False  # statuses may have changed since then
        self.ignored: set[tuple[str, str]] = set()  # pairs needed but left out by a plan made after seeing them
        self._known: set[tuple[tuple[str, str], str]] = set()  # (pair, timeframe or kind) checked against the plan
        self.own_close = -1  # the latest close of a closed candle of this partition's series read (exchange ms)
        self.main, self.foreign = self._streams()
        # stream -> what it carries for this plan: series key of a series stream, else None
        self.series_of: dict[str, SeriesKey] = {}
        for key in plan.foreign:
            self.series_of[streams.series_candles(self._part(key), *key)] = key

    def _part(self, key: tuple[str, ...]) -> int:
        return partition_of(key[0], key[1], self.settings.partitions)

    def _streams(self) -> tuple[list[str], dict[int, list[str]]]:
        p, plan = self.partition, self.plan
        main = [streams.part_candles(p)]
        if plan.live:
            main.append(streams.part_live(p))
        if plan.tickers:
            main.append(streams.part_tickers(p))
        if plan.trades:
            main.append(streams.part_trades(p))
        kinds = set().union(*plan.feeds.values()) if plan.feeds else set()
        if "book" in kinds:
            main.append(streams.part_books(p))
        if kinds - {"book"}:
            main.append(streams.part_derivs(p))
        foreign: dict[int, list[str]] = {}
        for key in sorted(plan.foreign):
            q = self._part(key)
            foreign.setdefault(q, []).append(streams.series_candles(q, *key))
        for pair in sorted(plan.foreign_tickers):
            q = self._part(pair)
            if streams.part_tickers(q) not in foreign.get(q, []):
                foreign.setdefault(q, []).append(streams.part_tickers(q))
        return main, foreign

    @property
    def all_streams(self) -> list[str]:
        return self.main + [s for names in self.foreign.values() for s in names]

    # ---- warm-up ----------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Restore the offsets and warm the engine up from what Redis holds as processed."""
        saved = await self.redis.hgetall(streams.part_state(self.partition, GROUP))
        prefix = streams.offset_field("")
        for name, value in saved.items():
            field = name.decode() if isinstance(name, bytes) else name
            if field.startswith(prefix):
                self.offsets[field[len(prefix):]] = value if isinstance(value, bytes) else str(value).encode()
        for name in self.all_streams:
            if name not in self.offsets:
                self.offsets[name] = await self._start_offset(name)
        candles: list[Candle] = []
        own_offset = self.offsets[streams.part_candles(self.partition)]
        for key, n in sorted(self.plan.series.items()):
            candles += await self._processed(streams.series_candles(self.partition, *key), own_offset, n)
        for stream, key in sorted(self.series_of.items()):
            candles += await self._processed(stream, self.offsets[stream], self.plan.foreign[key])
        if candles:
            self.engine.on_batch(candles, fire=False)
            self._note_own(candles)
            self._evaluated = True  # (the warmed-up statuses: written with the first commit)
        await self._restore_last_fired()
        # the warmed-up windows out of the cyclic collector's sight, as start-up's objects are (``quiet_gc``): the
        # engines open after it, and each young collection scanning their state paused the engine ~4.5 ms
        gc.freeze()

    def _note_own(self, candles: list[Candle]) -> None:
        for c in candles:
            if c.closed and (c.exchange, c.symbol, c.timeframe) in self.plan.series:
                close = c.ts + timeframe_ms(c.timeframe)
                if close > self.own_close:
                    self.own_close = close

    def _needs_foreign(self, name: str) -> bool:
        """Whether to read another partition's stream now: while this partition's bars wait, or while it is not
        ahead of this partition's own candles. (Read far ahead, a fast series would leave the window a waiting bar
        reads it through: alerts would depend on how far ahead it was read.)"""
        engine = self.engine
        if engine.waiting or self.own_close < 0:
            return True
        key = self.series_of.get(name)
        if key is None:  # another partition's tickers
            return all((t := engine.market.tickers.get(pair)) is None or t.ts <= self.own_close
                       for pair in self.plan.foreign_tickers if pair in self._pairs_in(name))
        w = engine.windows.get(key)
        last = w.last_closed() if w is not None else None
        return last is None or last.ts + w.tf_ms <= self.own_close  # type: ignore[union-attr]

    def _pairs_in(self, name: str) -> set[tuple[str, str]]:
        return {pair for pair in self.plan.foreign_tickers if streams.part_tickers(self._part(pair)) == name}

    async def _start_offset(self, name: str) -> bytes:
        """Where a stream never read before starts: its beginning; live (clock wall), a book or futures stream at
        its end (alerts on old book states would be news of the past)."""
        p = self.partition
        if self.settings.clock == "wall" and name in (streams.part_books(p), streams.part_derivs(p)):
            last = await self.redis.xrevrange(name, count=1)
            if last:
                return last[0][0] if isinstance(last[0][0], bytes) else str(last[0][0]).encode()
        return b"0-0"

    async def _processed(self, stream: str, offset: bytes, n: int) -> list[Candle]:
        """The newest ``n`` closed candles (by bucket, last revision) of a series stream with id <= ``offset``.

        candle_builder appends backfilled history after newer candles, so the last ``n`` entries need not be the
        newest ``n`` buckets: twice as many entries are read and sorted."""
        if n <= 0 or entry_id(offset) == (0, 0):
            return []
        entries: Any = await self.redis.xrevrange(stream, max=offset, min="-", count=2 * n)
        latest: dict[int, Candle] = {}
        for _, fields in reversed(entries):
            try:
                msg = unpack(fields[streams.FIELD])
                if not isinstance(msg, dict) or msg.get("k") != "candle":
                    continue
                candle = Candle.from_msg(msg)
            except (DecodeError, KeyError, ValueError):
                continue
            if candle.closed:
                have = latest.get(candle.ts)
                if have is None or candle.revision >= have.revision:
                    latest[candle.ts] = candle
        return [latest[ts] for ts in sorted(latest)[-n:]]

    async def _restore_last_fired(self) -> None:
        rows = await self.redis.hgetall(streams.part_rule_state(self.partition))
        for fp, row in rows.items():
            st = self.engine.status.get(fp.decode() if isinstance(fp, bytes) else fp)
            if st is None:
                continue
            try:
                last = unpack(row if isinstance(row, bytes) else row.encode()).get("last_fired")
            except (DecodeError, AttributeError, ValueError):
                continue
            if isinstance(last, int):
                st.last_fired_ms = last

    # ---- one step: read, evaluate, commit ---------------------------------------------------------------------------

    async def step(self, owner: Ownership, *, block_ms: int | None, waited_since: int | None = None) -> int:
        """One read of the partition's streams (blocking up to ``block_ms``) and of the other partitions' series
        its rules read, evaluated and committed with the new offsets; returns the entries read. ``waited_since``
        (live): bars waiting for other series since then or earlier are evaluated now."""
        count = self.settings.batch
        read: list[tuple[str, Any]] = []
        for names in self.foreign.values():  # (never blocks: the partition's own streams do)
            wanted: dict[str, bytes | str] = {n: self.offsets[n] for n in names if self._needs_foreign(n)}
            if wanted:
                read += await read_streams(self.raw, wanted, count=count, block_ms=None)
        own: dict[str, bytes | str] = {n: self.offsets[n] for n in self.main}
        read += await self._read_in_order(own, count, None if read else block_ms)
        fires = await self._evaluate(read)
        if waited_since is not None and self.engine.waiting:
            deferred = self.engine.deferred
            fires += self.engine.flush_deferred(waited_since)
            self._evaluated |= self.engine.deferred != deferred
        if not read and not fires:
            if self.unsaved or self._evaluated:  # the partition is quiet: save what the reads since the last commit
                await self._commit([], owner, rows=True)  # processed, and the rule states as they are now
            return 0
        new = {name: entries[-1][0] for name, entries in read}
        self.unsaved.update(new)
        if fires and self.commit.cooling_down(fires):  # (nothing to publish: Redis would answer -1 to each)
            fires = []
        if fires or self._save_due():
            await self._commit(fires, owner)
        self.offsets.update(new)
        return sum(len(entries) for _, entries in read)

    async def _read_in_order(self, own: dict[str, bytes | str], count: int,
                             block_ms: int | None) -> list[tuple[str, Any]]:
        """One XREAD of the partition's own streams, cut to entries whose order with the other streams' is known.

        A stream that returned ``count`` entries was cut there: its next entries are unread, and the other streams'
        entries written after them must wait, or they would be evaluated before them (a backlog of in-progress
        candles running ahead of the closed ones, by an amount that depends on read sizes and speed). Entry ids
        order the writes across streams but for entries of one millisecond (each stream numbers its own), so of
        every stream only the entries of milliseconds before the earliest last millisecond of a cut stream are
        taken, unless a single stream has entries from it on (nothing to order it with). candle_builder writes a
        commit's closed and in-progress candles in the order it made them (``_queue_in_order``), so what is taken
        holds every entry written before any of it, whatever the read size. When that leaves nothing (one
        millisecond holds more than ``count`` entries), the read is made again with twice the count."""
        got = await read_streams(self.raw, own, count=count, block_ms=block_ms)
        while True:
            cut = [entry_id(entries[-1][0])[0] for _, entries in got if len(entries) >= count]
            if not cut:
                return got
            horizon = min(cut)
            if sum(1 for _, entries in got if entry_id(entries[-1][0])[0] >= horizon) < 2:
                return got
            kept = []
            for name, entries in got:
                n = len(entries)
                while n and entry_id(entries[n - 1][0])[0] >= horizon:
                    n -= 1
                if n:
                    kept.append((name, entries[:n]))
            if kept:
                return kept
            count *= 2
            got = await read_streams(self.raw, own, count=count, block_ms=None)

    async def flush(self, owner: Ownership) -> None:
        """Evaluate every bar still waiting for another series with what that series has, and commit (the end of a
        backtest or a final drain), with the offsets not saved yet."""
        deferred = self.engine.deferred
        fires = self.engine.flush_deferred(None)
        self._evaluated |= self.engine.deferred != deferred
        if fires or self.unsaved or self._evaluated:
            await self._commit(fires, owner, rows=True)

    def _save_due(self) -> bool:
        every = self.settings.offsets_every_ms
        return every == 0 or (time.monotonic() - self._saved_at) * 1000 >= every

    async def _commit(self, fires: list[Fire], owner: Ownership, *, rows: bool = False) -> None:
        """Commit ``fires`` with every offset read since the last commit (one fenced call), and the rule state rows
        that changed when ``rows`` or when they are ``state_every_ms`` old."""
        now = time.monotonic()
        changed = None
        if self._evaluated and (rows or (now - self._rows_at) * 1000 >= self.settings.state_every_ms):
            changed = self.commit.changed_rows()
            self._rows_at, self._evaluated = now, False
        await self.commit.publish(fires, owner=owner, partition=self.partition, offsets=self.unsaved, rows=changed)
        self.unsaved = {}
        self._saved_at = now

    async def _evaluate(self, read: list[tuple[str, Any]]) -> list[Fire]:
        decoded: list[tuple[str, Any]] = []  # (stream, value or the entry that could not be decoded)
        bad: list[tuple[str, Any, Any, str]] = []
        for name, entries in read:
            for raw_id, fields in entries:
                data = entry_data(fields)
                try:
                    decoded.append((name, decode_input(data or b"")))
                except (DecodeError, KeyError, TypeError, ValueError) as exc:
                    bad.append((name, raw_id, data, f"undecodable: {exc}"))
        self._check_plan(decoded)
        for name, raw_id, data, reason in bad:
            await self.bus.dead_letter(name, raw_id, data, reason, GROUP)
        engine, plan = self.engine, self.plan
        fires: list[Fire] = []
        market: list[Candle | Ticker] = []
        own_candles = streams.part_candles(self.partition)
        for name, value in decoded:
            if isinstance(value, Candle):
                key = (value.exchange, value.symbol, value.timeframe)
                foreign_key = self.series_of.get(name)
                if foreign_key is not None:
                    if key == foreign_key:
                        market.append(value)
                elif name == own_candles:
                    if value.closed and key in plan.series:
                        market.append(value)
                elif not value.closed and key in plan.live:
                    market.append(value)
            elif isinstance(value, Ticker):
                pair = (value.exchange, value.symbol)
                if pair in plan.tickers or pair in plan.foreign_tickers:
                    market.append(value)
            elif isinstance(value, FEEDS):
                if (value.exchange, value.symbol) in plan.feeds:
                    self._evaluated = True
                    fires += engine.on_feed(value)
            elif isinstance(value, TradeBatch) and (value.exchange, value.symbol) in plan.trades:
                # tick-level rules see each trade as it comes (before the candles read with it)
                fires += engine.on_trades(value.exchange, value.symbol, value.trades)
        if market:
            self._evaluated = True
            with metrics.EVALUATION_SECONDS.time():
                fires += engine.on_batch(market)
            self._note_own([c for c in market if isinstance(c, Candle)])
        if engine.stale:  # backfilled candles read last: merged now, not at the next bar (which may be far off)
            engine.rewarm()
        metrics.RULES_EVALUATED.inc(engine.take_evaluations())
        return fires

    def _check_plan(self, decoded: list[tuple[str, Any]]) -> None:
        """PlanStale if the read holds data of a pair of this partition the rules need that the plan does not list
        (its registries were read before the pair appeared): evaluated with this plan, its bars would be skipped and
        their offset committed. Checked before anything is evaluated; a pair the next plan still leaves out is
        ``ignored`` from then on."""
        plan, routes = self.plan, self.engine.routes
        unknown: set[tuple[str, str]] = set()
        for name, value in decoded:
            if name not in self.main or not isinstance(value, (Candle, Ticker, TradeBatch, *FEEDS)):
                continue
            pair = (value.exchange, value.symbol)
            what = f"{value.timeframe}:{value.closed}" if isinstance(value, Candle) else type(value).__name__
            if (pair, what) in self._known:
                continue
            if isinstance(value, Candle):
                missing = (value.closed and value.timeframe in routes.needs(*pair)
                           and (*pair, value.timeframe) not in plan.series)
            elif isinstance(value, Ticker):
                missing = routes.needs_tickers(*pair) and pair not in plan.tickers
            elif isinstance(value, TradeBatch):
                missing = self.settings.intrabar and routes.needs_trades(*pair) and pair not in plan.trades
            else:
                missing = bool(routes.needs_feeds(*pair)) and pair not in plan.feeds
            if missing and pair not in self.ignored:
                unknown.add(pair)
            else:
                self._known.add((pair, what))
        if unknown:
            raise PlanStale(unknown)

    def caught_up_with(self, last_ids: dict[str, bytes]) -> bool:
        """Whether every stream read has been processed up to ``last_ids`` (stream -> its last entry id)."""
        return all(entry_id(self.offsets.get(n, b"0-0")) >= entry_id(last) for n, last in last_ids.items())
