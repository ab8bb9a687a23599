"""Writing market_feed's messages to Redis: the partition streams (with the feed's resume state), tickers.

Every pair belongs to a partition (``shared.partitions``); its trades, gap markers and watermarks go to
``streams.part_trades(p)``, its tickers to ``streams.part_tickers(p)``, and the feed's resume state of the pair
(``last_id:<symbol>``, ``last_ts:<symbol>``) to the hash ``streams.part_state(p, feed_group(exchange))``: every key
of a write shares the partition's hash tag. A feed writes a partition only while it holds the partition's lease
(``shared.ownership``): each write checks the lease in the same script (``LEASE_CHECK``, which also extends it, or
takes back one that expired untaken), so a feed that lost a partition (paused past its lease and taken over, or
handed it back) cannot publish there any more (``FencedError``).

A trade counts as published only once Redis has acknowledged the write that carries it. ``Outbox`` seals what was
queued into one write per partition with a random token and keeps it until Redis answers; a write that failed (Redis
killed, a failover, a cut connection) stays first in line and is sent again, before anything queued after it. The
retry of a write that landed but whose reply was lost finds its token in the partition's state and publishes nothing:
each writer (``Outbox``) of a partition keeps its last token in a field of its own (``write:<writer>``), so a pair's
tickers, or another pair of the partition, written meanwhile by another writer do not hide it.

Every Redis call of market_feed's own (not the history consumer's) lives here; ``RedisRetry`` retries them while
Redis is unreachable, read-only or loading, with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared import metrics, streams
from shared.bus import FIELD
from shared.durability import NO_REPLICATION, Replication
from shared.errors import ConfigError
from shared.feed_codec import encode_gap, encode_trades, encode_watermark
from shared.outage import redis_unavailable
from shared.ownership import FencedError, Ownership, fenced_script
from shared.partitions import partition_of
from shared.schemas import GapMarker, Ticker, TradeBatch, Watermark

logger = logging.getLogger(__name__)

TICKER_MAXLEN = 10_000
T = TypeVar("T")

# After the lease check (``shared.ownership.fenced_script``: KEYS[1..2], ARGV[1..3]): KEYS the feed state hash,
# part_trades, part_tickers (one partition). ARGV write token, writer, ne, nc, ns; per entry 1 (trades) or 2 (tickers),
# maxlen, data; per channel name, data; per state symbol, last_id ('' = keep), last_ts ('' = keep). Returns {1 or 0
# (already applied), id of the last trades entry or ''}.
_WRITE = fenced_script("""
local token, field = ARGV[4], 'write:' .. ARGV[5]
if redis.call('HGET', KEYS[3], field) == token then return {0, ''} end
local ne, nc, ns = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local a = 9
local last = ''
for i = 1, ne do
  local id = redis.call('XADD', KEYS[3 + tonumber(ARGV[a])], 'MAXLEN', '~', ARGV[a + 1], '*', '""" + FIELD.decode() + """',
                        ARGV[a + 2])
  if ARGV[a] == '1' then last = id end
  a = a + 3
end
for i = 1, nc do
  redis.call('PUBLISH', ARGV[a], ARGV[a + 1])
  a = a + 2
end
redis.call('HSET', KEYS[3], field, token)
for i = 1, ns do
  if ARGV[a + 1] ~= '' then redis.call('HSET', KEYS[3], 'last_id:' .. ARGV[a], ARGV[a + 1]) end
  if ARGV[a + 2] ~= '' then redis.call('HSET', KEYS[3], 'last_ts:' .. ARGV[a], ARGV[a + 2]) end
  a = a + 3
end
return {1, last}
""")


class RedisRetry:
    """Runs Redis operations again while Redis is unavailable: capped exponential backoff with full jitter, one
    warning when Redis goes away and one line when it is back (not a traceback per attempt)."""

    def __init__(self, what: str, *, base_s: float = 0.1, cap_s: float = 10.0) -> None:
        self.what = what
        self.base_s = base_s
        self.cap_s = cap_s
        self.down_since: float | None = None
        self.outages = 0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** min(attempt, 30)))

    async def call(self, stop: asyncio.Event, op: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """``(True, result)`` once ``op()`` succeeds; ``(False, None)`` if ``stop`` is set while Redis is down.
        Errors that do not mean Redis is unavailable propagate."""
        attempt = 0
        while True:
            try:
                result = await op()
            except Exception as exc:
                if not redis_unavailable(exc):
                    raise
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    self.outages += 1
                    logger.warning("%s: Redis unavailable (%s: %s); retrying with backoff", self.what,
                                   type(exc).__name__, exc)
                if stop.is_set():
                    return False, None
                attempt += 1
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.delay(attempt))
                except TimeoutError:
                    pass
                continue
            if self.down_since is not None:
                logger.warning("%s: Redis is back after %.1fs", self.what, time.monotonic() - self.down_since)
                self.down_since = None
            return True, result


async def read_last_ids(redis: Any, exchange: str, symbols: list[str], partitions: int) -> dict[str, int | None]:
    """Last trade id market_feed published per symbol (restart and takeover safety), from the partitions' state."""
    out: dict[str, int | None] = {}
    for symbol in symbols:
        state = streams.part_state(partition_of(exchange, symbol, partitions), streams.feed_group(exchange))
        raw = await redis.hget(state, f"last_id:{symbol}")
        out[symbol] = int(raw) if raw is not None and raw.lstrip(b"-").isdigit() else None
    return out


async def read_last_ts(redis: Any, exchange: str, symbol: str, partitions: int) -> int | None:
    """Exchange time of the last trade market_feed published for the symbol, from its partition's state."""
    state = streams.part_state(partition_of(exchange, symbol, partitions), streams.feed_group(exchange))
    raw = await redis.hget(state, f"last_ts:{symbol}")
    return int(raw) if raw else None


async def register_feeds(redis: Any, exchange: str, symbols: list[str],
                         replication: Replication = NO_REPLICATION) -> None:
    """Add the pairs to ``streams.FEED_REGISTRY`` (candle_builder and the API discover them there), on
    ``replication``'s replicas before the feed publishes (``shared.durability``): registered once, at the start, so a
    registration lost in a failover stays lost, and candle_builder then builds the pair's trades with its own
    timeframes only (none a subscriber asked for)."""
    await redis.sadd(streams.FEED_REGISTRY, *(streams.registry_member(exchange, s) for s in symbols))
    await replication.wait(redis)


_CLAIM_LIST = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. '|' .. ARGV[2])
return fields
"""


async def check_symbol_list(redis: Any, group: str, instance: str, symbols: Iterable[str], *, ttl_ms: int,
                            now_ms: int) -> None:
    """Refuse to feed group ``group`` with a symbol list other than its live replicas': a ConfigError naming both.

    Replicas of one feed group share its partitions (one lease each), and a partition's ``symbol == ""`` watermark
    speaks for every pair of the exchange in it. A replica configured with other symbols would, while it holds a
    partition, leave unpublished the pairs only the others list, and its watermarks would close their candles
    early. Each replica records its list in ``streams.feed_symbols(group)`` (in one script with reading the others',
    so of two replicas starting together the second sees the first); a recorded list counts while its replica is a
    live member of the group (``streams.members``) or was recorded less than ``ttl_ms`` ago. A group whose replicas
    all stopped takes a new list."""
    mine = ",".join(sorted(set(symbols)))
    script = redis.register_script(_CLAIM_LIST)
    raw = await script(keys=[streams.feed_symbols(group)], args=[instance, mine, now_ms])
    pairs = [(_text(raw[i]), _text(raw[i + 1])) for i in range(0, len(raw), 2)]
    others = [(name, value) for name, value in pairs if name != instance]
    if not others:
        return
    alive = {_text(m) for m in await redis.zrangebyscore(streams.members(group), now_ms - ttl_ms, "+inf")}
    stale = []
    for name, value in others:
        seen, _, theirs = value.partition("|")
        if name not in alive and not (seen.isdigit() and int(seen) > now_ms - ttl_ms):
            stale.append(name)
            continue
        if theirs != mine:
            await redis.hdel(streams.feed_symbols(group), instance)
            raise ConfigError([f"market_feed: symbols [{mine}] of {group!r} differ from those of its live replica "
                               f"{name!r}: [{theirs}]. Replicas of one exchange share its partitions and watermarks: "
                               "give them the same symbols (docs/scale-out.md), or stop the others first"])
    if stale:
        await redis.hdel(streams.feed_symbols(group), *stale)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Write:
    """One sealed write of one partition: the unit Redis applies atomically, and the unit retried."""

    partition: int
    token: str
    entries: list[tuple[int, bytes, int]]  # 1 = trades / 2 = tickers, data, maxlen
    channels: list[tuple[str, bytes]]
    states: dict[str, tuple[int | str | None, int | None]]  # symbol -> (last id, last ts) after this write
    trades: int
    counts: dict[str, int] = field(default_factory=dict)
    per_symbol: dict[str, int] = field(default_factory=dict)  # trades of each symbol in this write


class Outbox:
    """Encodes core events of ``symbols`` (pairs of ``exchange``) and writes them, one script per partition and
    round trip, while ``ownership`` holds the partition (see the module docstring).

    A Watermark whose symbol is "" (``FeedCore``: exchange time moved on for every symbol it has) becomes one entry
    per partition of ``symbols``: named after the pair when the partition has only one of them, else "" (every pair
    of the exchange in the partition)."""

    def __init__(self, redis: Any, ownership: Ownership, exchange: str, symbols: Iterable[str], *, maxlen: int,
                 pipeline_entries: int, writer: str) -> None:
        self.redis = redis
        #: names this writer's last token in the partition state (one per concurrent writer of a partition: a
        #: replay's or simulated market's one outbox, a live pair's trades, a live pair's tickers)
        self.writer = writer
        self.ownership = ownership
        self.exchange = exchange
        self.maxlen = maxlen
        self.pipeline_entries = pipeline_entries
        self.state_key = {p: streams.part_state(p, streams.feed_group(exchange)) for p in range(ownership.partitions)}
        self.partition: dict[str, int] = {}
        self.served: dict[int, list[str]] = {}
        for symbol in symbols:
            self.serve(symbol)
        self._script = redis.register_script(_WRITE)
        self._open: dict[int, _Write] = {}
        self._queued = 0  # entries in ``_open`` (``full`` is asked after every trade: no sum over the writes)
        self._sealed: list[_Write] = []  # not acknowledged yet, in order
        self._drain: asyncio.Task | None = None
        self.trades_published = 0
        self.entries_published = 0
        self.watermarks = 0
        self.tickers = 0
        self.gaps = 0
        self.replays_skipped = 0  # retried writes Redis already had (their reply was lost)
        #: (last id, last ts) per symbol as Redis has acknowledged them
        self.published: dict[str, tuple[int | str | None, int | None]] = {}
        #: per partition: (trades entries written so far, id of the last one) after each write (replay backpressure)
        self.written: dict[int, deque[tuple[int, bytes]]] = {}
        self._counts: dict[int, int] = {}

    def serve(self, symbol: str) -> int:
        """Publish ``symbol`` too; its partition."""
        p = self.partition.get(symbol)
        if p is None:
            p = self.partition[symbol] = partition_of(self.exchange, symbol, self.ownership.partitions)
            self.served.setdefault(p, []).append(symbol)
        return p

    def _write(self, partition: int) -> _Write:
        w = self._open.get(partition)
        if w is None:
            w = self._open[partition] = _Write(partition, os.urandom(12).hex(), [], [], {}, 0)
        return w

    def add(self, event: TradeBatch | Watermark | GapMarker) -> None:
        if isinstance(event, Watermark) and event.symbol == "":
            for p, symbols in self.served.items():
                named = Watermark(self.exchange, symbols[0] if len(symbols) == 1 else "", event.ts, event.final)
                self._write(p).entries.append((1, encode_watermark(named), self.maxlen))
                self._write(p).counts["watermarks"] = self._write(p).counts.get("watermarks", 0) + 1
                self._queued += 1
            return
        self._queued += 1
        w = self._write(self.serve(event.symbol))
        last_id, last_ts = w.states.get(event.symbol, (None, None))
        if isinstance(event, GapMarker):
            w.entries.append((1, encode_gap(event), self.maxlen))
            w.counts["gaps"] = w.counts.get("gaps", 0) + 1
        elif isinstance(event, TradeBatch):
            w.entries.append((1, encode_trades(self.exchange, event.symbol, event.trades), self.maxlen))
            last = event.trades[-1]
            last_id, last_ts = last.id, last.ts
            w.trades += len(event.trades)
            w.per_symbol[event.symbol] = w.per_symbol.get(event.symbol, 0) + len(event.trades)
        else:
            w.entries.append((1, encode_watermark(event), self.maxlen))
            w.counts["watermarks"] = w.counts.get("watermarks", 0) + 1
        w.states[event.symbol] = (last_id, last_ts)

    def add_ticker(self, ticker: Ticker) -> None:
        data = ticker.encode()
        w = self._write(self.serve(ticker.symbol))
        w.entries.append((2, data, TICKER_MAXLEN))
        self._queued += 1
        w.channels.append((streams.channel_tickers(ticker.exchange, ticker.symbol), data))
        w.counts["tickers"] = w.counts.get("tickers", 0) + 1

    @property
    def full(self) -> bool:
        return self._queued >= self.pipeline_entries

    @property
    def pending(self) -> int:
        """Entries queued or sent but not acknowledged by Redis yet."""
        return self._queued + sum(len(w.entries) for w in self._sealed)

    def discard(self) -> None:
        """Forget everything queued and unacknowledged (the partitions were lost: their new owner publishes it)."""
        self._open.clear()
        self._queued = 0
        self._sealed.clear()

    async def flush(self) -> None:
        """Write everything queued, oldest first; returns once Redis has acknowledged all of it.

        On an error the unacknowledged writes are kept and the error is raised: the next ``flush`` sends them again
        (idempotently); a ``FencedError`` (a partition's lease is not ours) drops that partition's writes. The
        writing runs in a task of its own (shielded): a cancelled caller cannot leave a write half-sent, and a write
        that completes after the caller left is still accounted for."""
        for p in sorted(self._open):
            w = self._open[p]
            if w.entries or w.channels:
                self._sealed.append(w)
        self._open.clear()
        self._queued = 0
        if self._drain is None or self._drain.done():
            if not self._sealed:
                return
            self._drain = asyncio.ensure_future(self._send_sealed())
            self._drain.add_done_callback(_retrieve)
        await asyncio.shield(self._drain)

    async def _send_sealed(self) -> None:
        while self._sealed:
            w = self._sealed[0]
            try:
                applied, last = await self._send(w)
            except FencedError:
                self._sealed = [x for x in self._sealed if x.partition != w.partition]
                raise
            self._sealed.pop(0)
            if not applied:
                self.replays_skipped += 1
            self.entries_published += len(w.entries)
            self.trades_published += w.trades
            metrics.count_trades(self.exchange, w.per_symbol)
            self.watermarks += w.counts.get("watermarks", 0)
            self.tickers += w.counts.get("tickers", 0)
            self.gaps += w.counts.get("gaps", 0)
            if last:
                count = self._counts[w.partition] = self._counts.get(w.partition, 0) + sum(
                    1 for kind, _, _ in w.entries if kind == 1)
                self.written.setdefault(w.partition, deque(maxlen=10_000)).append((count, last))
            for symbol, (last_id, last_ts) in w.states.items():
                prev_id, prev_ts = self.published.get(symbol, (None, None))
                self.published[symbol] = (last_id if last_id is not None else prev_id,
                                          last_ts if last_ts is not None else prev_ts)

    async def _send(self, w: _Write) -> tuple[bool, bytes]:
        p = w.partition
        keys = [self.state_key[p], streams.part_trades(p), streams.part_tickers(p)]
        args: list[Any] = [w.token, self.writer, len(w.entries), len(w.channels), len(w.states)]
        for kind, data, maxlen in w.entries:
            args += [kind, maxlen, data]
        for channel, data in w.channels:
            args += [channel, data]
        for s, (last_id, last_ts) in w.states.items():
            args += [s, last_id if isinstance(last_id, int) else "", "" if last_ts is None else last_ts]
        applied, last = await self.ownership.call_fenced(p, self._script, keys, args)
        await self.ownership.replicated()  # published = on the replicas redis_wait_replicas asks for (retried if not)
        return bool(applied), last

    def lag_mark(self, partition: int, entries: int) -> bytes | None:
        """The id of the trades entry this outbox wrote ``entries`` entries before its latest in ``partition``
        (None if it wrote fewer): a reader whose offset is below it lags by more than ``entries``."""
        marks = self.written.get(partition)
        if not marks:
            return None
        target = marks[-1][0] - entries
        found = None
        for count, last in marks:
            if count > target:
                break
            found = last
        return found


def _retrieve(task: asyncio.Task) -> None:
    """Mark a write task's error as seen: its caller may have been cancelled and gone (the write stays queued and
    the next ``flush`` sends it again)."""
    if not task.cancelled():
        task.exception()
