"""Closing bars from the trades stream, without waiting for candle_builder's hop.

A closed-bar alert used to take two hops: the trade that closes a bar → candle_builder → its closed candle → the
engine. With ``fast_close`` the engine reads the trades streams of the pairs its rules watch and runs a *replica* of
candle_builder's own ``SeriesBuilder`` on them: restored from the state candle_builder saves with every batch
(``streams.builder_state``: the builder's state and the last trades entry it holds), then fed the entries after that
one, in stream order, decoded by candle_builder's own decoder. The same code on the same state and the same entries
emits the same candles, so the engine evaluates a bar the moment the closing trade is read — one hop — and
candle_builder's candle for that bar, when it arrives, is only compared (``confirm``): equal, it is dropped; different
(something changed the builder's state outside the stream: a bar closed by its wall-clock timer, history seeded or
backfilled, a timeframe added, another replica sharing the engine's consumer group), the replica is dropped and re-read
from the builder's state, and the builder's candle is taken as the bar's revision: re-evaluated when it is the series'
last bar (its alert ids are the bar's, so an alert already sent is not sent again), merged into the history when it is
an older one — as a late trade's revision would be. Bars the replica closes after candle_builder's candle came (the builder's
timer was first) are not evaluated twice either.

Only a bar's first close is taken from the replica; revisions (late trades), history candles and every timeframe no
rule reads come from candle_builder as before. A pair without saved builder state (no candle_builder yet, or one that
saves no configuration) simply has no replica: its bars come from candle_builder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from services.candle_builder.core import Emitted, SeriesBuilder
from services.candle_builder.series import entry_id
from shared import streams
from shared.bus import FIELD
from shared.errors import DecodeError
from shared.schemas import Candle, GapMarker, TradeBatch, Watermark, decode_feed, unpack
from shared.timeframes import bucket_start

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
SeriesKey = tuple[str, str, str]

#: candles of a series closed here and not yet confirmed by candle_builder, at most (the oldest are forgotten: a
#: builder that stopped publishing must not grow them without end)
MAX_PENDING = 1024
#: how long the newest trade's lead over this machine's clock is remembered (``FastClose.exchange_now``)
LEAD_WINDOW_MS = 10_000
#: a bar is evaluated ahead (``FastClose.closing``) when its close is due within this many of its pair's gaps between
#: trades
SPECULATE_GAPS = 3
#: closing trades this long after a bar's end still make the engine look for others written with them
#: (``FastClose.wants_top_up``); a later one (a quiet pair's) is taken alone, without the extra read
TOP_UP_MS = 50


@dataclass(slots=True)
class Replica:
    """The replica of one pair's builder and the last trades entry it holds."""

    builder: SeriesBuilder
    last_id: tuple[int, int]


@dataclass(slots=True)
class FastClose:
    """Replicas of candle_builder's builders, per (exchange, symbol); see the module docstring."""

    redis: Any
    retry_s: tuple[float, float] = (0.1, 5.0)  # a pair that could not be synced is tried again: first, longest wait
    max_catch_up: int = 10_000  # entries read to bring a replica from the builder's state to the read position
    replicas: dict[Pair, Replica] = field(default_factory=dict)
    pending: dict[SeriesKey, dict[int, Candle]] = field(default_factory=dict)
    last_builder: dict[SeriesKey, Candle] = field(default_factory=dict)  # candle_builder's newest closed candle
    retry_at: dict[Pair, float] = field(default_factory=dict)
    retry_wait: dict[Pair, float] = field(default_factory=dict)  # the wait before the next try (doubles)
    closed: int = 0  # bars evaluated from a replica
    confirmed: int = 0  # ... and later found equal to candle_builder's
    mismatched: int = 0  # candle_builder's candle differed (the replica was re-synced)
    synced: int = 0
    lead_ms: float = 0.0  # exchange time of the freshest trade read minus this machine's clock then (< 0: latency)
    lead_at: float = 0.0  # when that was seen (ms)
    _bases: tuple[int, ...] | None = None  # distinct base bucket lengths of the replicas (None: to be recomputed)

    def bases(self) -> tuple[int, ...]:
        """The replicas' base bucket lengths (ms): every bar they close ends on a multiple of one of them."""
        if self._bases is None:
            self._bases = tuple(sorted({r.builder.base_ms for r in self.replicas.values()}))
        return self._bases

    def exchange_now(self, now_ms: float) -> float:
        """The exchange time of a trade read now, as far as the trades read so far tell: this machine's clock plus
        the largest lead of a trade's time over it seen in the last ``LEAD_WINDOW_MS`` (feed latency and clock
        skew)."""
        return now_ms + self.lead_ms

    def settled(self, now: float, tail_ms: float) -> bool:
        """Exchange time ``now`` is within ``tail_ms`` after a close of some replicas' base bars, and each of those has
        read its first trade past that close (its bar in progress starts at or after it): nothing of that close is
        still to come. False outside such a tail."""
        any_tail = False
        for replica in self.replicas.values():
            builder = replica.builder
            boundary = bucket_start(int(now), builder.base_ms)
            if now - boundary >= tail_ms:
                continue
            any_tail = True
            base = builder.base
            if base is None or base.ts < boundary:
                return False
        return any_tail

    def forget(self, pair: Pair) -> None:
        """``pair`` is no longer watched."""
        self.resync(pair)
        for table in (self.pending, self.last_builder):
            for key in [k for k in table if k[:2] == pair]:
                del table[key]

    def resync(self, pair: Pair) -> None:
        """Drop ``pair``'s replica: it is re-read from candle_builder's state at the pair's next trades entry (bars it
        closed and evaluated stay pending, so candle_builder's candles of them are still compared, not re-evaluated)."""
        self.replicas.pop(pair, None)
        self._bases = None
        self.retry_at.pop(pair, None)
        self.retry_wait.pop(pair, None)

    async def sync(self, pair: Pair, first_id: bytes) -> bool:
        """Make sure ``pair`` has a replica that holds every trades entry before ``first_id`` (the first one of the
        batch about to be applied). False when it has none (no saved state yet: tried again after a wait that
        doubles from ``retry_s[0]`` to ``retry_s[1]``)."""
        if pair in self.replicas:
            return True
        now = time.monotonic()
        if self.retry_at.get(pair, 0.0) > now:
            return False
        wait = self.retry_wait.get(pair, self.retry_s[0])
        self.retry_at[pair] = now + wait
        self.retry_wait[pair] = min(2 * wait, self.retry_s[1])
        state_raw, last_raw = await self.redis.hmget(streams.builder_state(*pair), b"state", b"last_id")
        if state_raw is None or last_raw is None:
            return False
        try:
            builder = SeriesBuilder.replica(unpack(state_raw))
            last = entry_id(last_raw)
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            logger.info("alert_engine: %s %s: no replica of candle_builder's state (%s); its bars come from "
                        "candle_builder", *pair, exc)
            return False
        first = entry_id(first_id)
        if last < first:  # entries read before the replica existed, not in the builder's state yet: apply them
            entries = await self.redis.xrange(streams.trades(*pair), min="(%d-%d" % last, max="(" + _text(first_id),
                                              count=self.max_catch_up + 1)
            if len(entries) > self.max_catch_up:
                return False
            sink: list[Emitted] = []  # bars those entries close: candle_builder publishes them (not read yet)
            for raw_id, fields in entries:
                try:
                    msg = decode_feed((fields or {}).get(FIELD) or b"")
                except DecodeError:
                    continue  # dead-lettered by the builder too
                builder.apply(msg, sink)
                last = entry_id(raw_id)
        self.replicas[pair] = Replica(builder, last)
        self._bases = None
        self.retry_at.pop(pair, None)
        self.retry_wait.pop(pair, None)
        self.synced += 1
        return True

    def apply(self, pair: Pair, raw_id: bytes, msg: TradeBatch | Watermark | GapMarker,
              wanted: set[str]) -> list[Candle]:
        """Apply one trades entry to ``pair``'s replica; the bars it closes first time in timeframes ``wanted``."""
        replica = self.replicas.get(pair)
        if replica is None:
            return []
        eid = entry_id(raw_id)
        if eid <= replica.last_id:
            return []  # already in the builder's state the replica started from
        out: list[Emitted] = []
        builder = replica.builder
        builder.apply(msg, out)
        replica.last_id = eid
        if (bar := builder.base) is not None:
            now = time.time() * 1000
            lead = bar.last_ts - now
            if lead > self.lead_ms or now - self.lead_at > LEAD_WINDOW_MS:
                self.lead_ms, self.lead_at = lead, now
        if not out:
            return []
        candles = []
        ex, sym = pair
        for tf, bar in out:
            if bar.revision > 0 or tf not in wanted:
                continue
            key = (ex, sym, tf)
            seen = self.last_builder.get(key)
            if seen is not None and seen.ts >= bar.ts:  # candle_builder was first (its timer): compare, skip
                if seen.ts == bar.ts and not _same(seen, bar):
                    self._mismatch(key, seen, bar)
                continue
            candle = _closed(ex, sym, tf, bar)
            pending = self.pending.setdefault(key, {})
            pending[bar.ts] = candle
            if len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]  # the oldest: bars of a series close in ts order
            candles.append(candle)
        self.closed += len(candles)
        return candles

    def wants_top_up(self, entries: list) -> bool:
        """Entries just read (``shared.bus.Entry``) hold the trade that closes a pair's bar, at most ``TOP_UP_MS``
        after that bar's end (the moment every pair's closing trade comes), while another pair's bar of the same close
        is still open here: its closing trade may have been written together with this one."""
        replicas = self.replicas
        if not replicas:
            return False
        closes: set[int] = set()
        closing: set[Pair] = set()
        for entry in entries:
            value = entry.value
            if type(value) is TradeBatch and value.trades:
                pair = (value.exchange, value.symbol)
                replica = replicas.get(pair)
                base = replica.builder.base if replica is not None else None
                if base is not None and base.end <= value.trades[-1][1] < base.end + TOP_UP_MS:
                    closes.add(base.end)
                    closing.add(pair)
        if not closes:
            return False
        for pair, replica in replicas.items():
            base = replica.builder.base
            if base is not None and base.end in closes and pair not in closing:
                return True
        return False

    def closing(self, pair: Pair, wanted: set[str], now: float, window_ms: float) -> list[Candle]:
        """The candles ``pair``'s next close would give in timeframes ``wanted`` if no other trade came before it, when
        that close (the end of its base bar in progress) is due within ``window_ms`` of exchange time ``now`` and
        within ``SPECULATE_GAPS`` of the pair's gaps between trades (its bar's average so far): a busy pair is worth
        evaluating ahead only in the last moments of a bar, a few times, not after every read of the last
        ``window_ms``."""
        if not self.due(pair, now, window_ms):
            return []
        return self.next_close(pair, wanted)

    def next_close(self, pair: Pair, wanted: set[str]) -> list[Candle]:
        """The candles in timeframes ``wanted`` that ``pair``'s next close (the end of its base bar in progress)
        gives if no other trade comes before it ([] without a bar in progress)."""
        replica = self.replicas.get(pair)
        base = replica.builder.base if replica is not None else None
        if base is None:
            return []
        ex, sym = pair
        return [_closed(ex, sym, tf, bar) for tf, bar in replica.builder.in_progress()
                if bar.end == base.end and tf in wanted]

    def due(self, pair: Pair, now: float, window_ms: float) -> bool:
        """``closing`` would offer candles of ``pair`` (given a timeframe wanted): the test alone, without building
        them (asked of every pair read near a close, after every read)."""
        replica = self.replicas.get(pair)
        base = replica.builder.base if replica is not None else None
        if base is None:
            return False
        due = base.end - now
        if due > window_ms:
            return False
        return base.trades <= 1 or due <= SPECULATE_GAPS * (base.last_ts - base.first_ts) / (base.trades - 1)

    def mark(self, pair: Pair) -> tuple[Replica, tuple[int, int]] | None:
        """The state of ``pair``'s replica now (its bars' close as ``closing`` gives them holds while it is unchanged;
        ``closes`` tells whether it still is)."""
        replica = self.replicas.get(pair)
        return (replica, replica.last_id) if replica is not None else None

    def closes(self, pair: Pair, entries: list, mark: tuple[Replica, tuple[int, int]] | None) -> bool | None:
        """What applying ``entries`` (``pair``'s trades entries of one batch, in order, ``TradeBatch`` values) will do,
        told without applying them: False, they close no bar; True, they close the open base bar and the bars of other
        timeframes ending with it, exactly as ``closing`` gave them when ``mark`` was taken (nothing was applied
        since, and their first trade is past the bar's end), and nothing else; None, anything else (a late trade,
        a trade in the bar before the closing one, a second close, an entry applied already, no replica).

        The alert engine then evaluates and commits those bars before the entries are applied (``apply`` still runs
        after, and must emit the same candles)."""
        replica = self.replicas.get(pair)
        base = replica.builder.base if replica is not None else None
        if base is None:
            return None
        start, end = base.ts, base.end
        after = end + replica.builder.base_ms  # the bar a closing trade opens ends here (or later, after a gap)
        last = replica.last_id
        closed = changed = False
        for entry in entries:
            if entry_id(entry.id) <= last:
                return None
            for row in entry.value.trades:
                ts = row[1]
                if closed:
                    if not end <= ts < after:  # a late trade (a revision), or a second close
                        return None
                elif ts >= end:
                    if changed or ts >= after or mark is None or mark[0] is not replica or mark[1] != last:
                        return None  # the bar is not as marked, or flat bars / a gap follow the close
                    closed = True
                elif ts < start:
                    return None  # late: revises a closed bar (may emit a bar's first version)
                else:
                    changed = True
        return closed

    def builder_was_first(self, candle: Candle) -> bool:
        """candle_builder's candle of ``candle``'s bar (or a later one) came already (its wall-clock timer closed it):
        ``apply`` will not emit this bar."""
        seen = self.last_builder.get((candle.exchange, candle.symbol, candle.timeframe))
        return seen is not None and seen.ts >= candle.ts

    def confirms(self, candle: Candle) -> bool:
        """``confirm(candle)`` will find candle_builder's candle equal to the bar closed here (and drop it): told
        without changing anything."""
        if candle.history or candle.revision:
            return False
        key = (candle.exchange, candle.symbol, candle.timeframe)
        replica = self.replicas.get(key[:2])
        if replica is not None and key[2] not in replica.builder.timeframes:
            return False
        pending = self.pending.get(key)
        mine = pending.get(candle.ts) if pending else None
        return mine is not None and _same(candle, mine)

    def confirm(self, candle: Candle) -> bool:
        """candle_builder's closed candle of a series read here: True when it still has to be evaluated (no replica
        closed it, or the replica's differed), False when it is the bar already evaluated."""
        if candle.history or candle.revision:
            return True
        key = (candle.exchange, candle.symbol, candle.timeframe)
        replica = self.replicas.get(key[:2])
        if replica is not None and key[2] not in replica.builder.timeframes:
            self.resync(key[:2])  # candle_builder builds a timeframe the replica does not (added since): re-read it
        last = self.last_builder.get(key)
        if last is None or candle.ts >= last.ts:
            self.last_builder[key] = candle
        pending = self.pending.get(key)
        mine = pending.pop(candle.ts, None) if pending else None
        if mine is None:
            return True
        if _same(candle, mine):
            self.confirmed += 1
            return False
        self._mismatch(key, candle, mine)
        return True

    def _mismatch(self, key: SeriesKey, builders: Candle, mine: Any) -> None:
        self.mismatched += 1
        logger.warning("alert_engine: %s %s %s bar %d: candle_builder's candle differs from the one closed here "
                       "(its state changed outside the trades stream); re-reading its state", *key, builders.ts)
        self.resync(key[:2])


_FIELDS = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume", "quote_volume", "trades",
           "incomplete")


def _closed(exchange: str, symbol: str, tf: str, bar: Any) -> Candle:
    """The closed candle of a builder's bar (first close: revision 0)."""
    return Candle.trusted(  # the builder's types are the model's (test_series_encode.py)
        exchange=exchange, symbol=symbol, timeframe=tf, ts=bar.ts, open=bar.open, high=bar.high, low=bar.low,
        close=bar.close, volume=bar.volume, buy_volume=bar.buy_volume, sell_volume=bar.sell_volume,
        quote_volume=bar.quote_volume, trades=bar.trades, first_trade_id=bar.first_id, last_trade_id=bar.last_id,
        closed=True, revision=0, incomplete=bar.incomplete, history=False, prev_ts=None)


def _same(candle: Candle, other: Any) -> bool:
    """Same bar: every value a rule can read (``other`` a Candle, or a builder ``Bar``: the same attribute names)."""
    return all(getattr(candle, f) == getattr(other, f) for f in _FIELDS)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
