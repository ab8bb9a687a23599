"""Writing market_feed's messages to Redis: trades streams (with the feed's resume state), tickers.

A trade counts as published only once Redis has acknowledged the write that carries it. ``Outbox`` seals what was
queued into a write with a random token and keeps it until Redis answers; a write that failed (Redis killed, a
failover, a cut connection) stays first in line and is sent again, before anything queued after it. Each write is
one Lua script: the XADDs, the PUBLISHes and the feed state (``last_id``, ``last_ts`` and the write's token) of every
symbol it touches, applied atomically — and skipped whole when the first symbol's state already holds the token, so
the retry of a write that landed but whose reply was lost publishes nothing twice.

Every Redis call of market_feed's own (not the history consumer's) lives here; ``RedisRetry`` retries them while
Redis is unreachable, read-only or loading, with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import metrics, streams
from shared.bus import FIELD, Bus
from shared.schemas import GapMarker, Ticker, TradeBatch, Watermark, encode_gap, encode_trades, encode_watermark

logger = logging.getLogger(__name__)

TICKER_MAXLEN = 10_000
T = TypeVar("T")

# KEYS: the feed-state hashes of the symbols the write touches (ns), then the stream of each entry (ne).
# ARGV: token, ns, ne, nc; per entry maxlen, data; per channel name, data; per state last_id ('' = keep), last_ts
# ('' = keep). The first state hash holding the token means this write already landed.
_WRITE = """
local token = ARGV[1]
local ns, ne, nc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ns > 0 and redis.call('HGET', KEYS[1], 'write') == token then return 0 end
local a = 5
for i = 1, ne do
  redis.call('XADD', KEYS[ns + i], 'MAXLEN', '~', ARGV[a], '*', '""" + FIELD.decode() + """', ARGV[a + 1])
  a = a + 2
end
for i = 1, nc do
  redis.call('PUBLISH', ARGV[a], ARGV[a + 1])
  a = a + 2
end
for i = 1, ns do
  redis.call('HSET', KEYS[i], 'write', token)
  if ARGV[a] ~= '' then redis.call('HSET', KEYS[i], 'last_id', ARGV[a]) end
  if ARGV[a + 1] ~= '' then redis.call('HSET', KEYS[i], 'last_ts', ARGV[a + 1]) end
  a = a + 2
end
return 1
"""


def redis_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "Redis is not there right now" (retry later), not "this command is wrong"."""
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
                        ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).split(" ", 1)[0] in ("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")
    return False


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


async def read_last_ids(redis: Redis, exchange: str, symbols: list[str]) -> dict[str, int | None]:
    """Last trade id market_feed published per symbol (restart safety), from ``streams.feed_state``."""
    out: dict[str, int | None] = {}
    for symbol in symbols:
        raw = await redis.hget(streams.feed_state(exchange, symbol), "last_id")
        out[symbol] = int(raw) if raw is not None and raw.lstrip(b"-").isdigit() else None
    return out


async def read_last_ts(redis: Redis, exchange: str, symbol: str) -> int | None:
    """Exchange time of the last trade market_feed published for the symbol, from ``streams.feed_state``."""
    raw = await redis.hget(streams.feed_state(exchange, symbol), "last_ts")
    return int(raw) if raw else None


async def register_feeds(redis: Redis, exchange: str, symbols: list[str]) -> None:
    """Add the streams to ``streams.FEED_REGISTRY`` (consumers discover them there)."""
    await redis.sadd(streams.FEED_REGISTRY, *(streams.registry_member(exchange, s) for s in symbols))


async def consumer_lag(bus: Bus, exchange: str, symbols: list[str], group: str) -> int:
    """Most entries of any of the symbols' trades streams that ``group`` has not been delivered yet."""
    worst = 0
    for symbol in symbols:
        status = await bus.group_status(streams.trades(exchange, symbol), group)
        if status:
            worst = max(worst, status["lag"])
    return worst


@dataclass
class _Write:
    """One sealed write: the unit Redis applies atomically, and the unit retried."""

    token: str
    entries: list[tuple[str, bytes, int]]  # stream, data, maxlen
    channels: list[tuple[str, bytes]]
    states: dict[str, tuple[int | str | None, int | None]]  # symbol -> (last id, last ts) after this write
    trades: int
    counts: dict[str, int] = field(default_factory=dict)
    per_symbol: dict[str, int] = field(default_factory=dict)  # trades of each symbol in this write


class Outbox:
    """Encodes core events and writes them in one script per round trip (see the module docstring)."""

    def __init__(self, bus: Bus, exchange: str, *, maxlen: int, pipeline_entries: int) -> None:
        self.bus = bus
        self.redis = bus.redis
        self.exchange = exchange
        self.maxlen = maxlen
        self.pipeline_entries = pipeline_entries
        self._script = self.redis.register_script(_WRITE)
        self._open = self._new_write()
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

    @staticmethod
    def _new_write() -> _Write:
        return _Write(os.urandom(12).hex(), [], [], {}, 0)

    def add(self, event: TradeBatch | Watermark | GapMarker) -> None:
        w = self._open
        stream = streams.trades(self.exchange, event.symbol)
        last_id, last_ts = w.states.get(event.symbol, (None, None))
        if isinstance(event, GapMarker):
            w.entries.append((stream, encode_gap(event), self.maxlen))
            w.counts["gaps"] = w.counts.get("gaps", 0) + 1
        elif isinstance(event, TradeBatch):
            w.entries.append((stream, encode_trades(self.exchange, event.symbol, event.trades), self.maxlen))
            last = event.trades[-1]
            last_id, last_ts = last.id, last.ts
            w.trades += len(event.trades)
            w.per_symbol[event.symbol] = w.per_symbol.get(event.symbol, 0) + len(event.trades)
        else:
            w.entries.append((stream, encode_watermark(event), self.maxlen))
            w.counts["watermarks"] = w.counts.get("watermarks", 0) + 1
        w.states[event.symbol] = (last_id, last_ts)

    def add_ticker(self, ticker: Ticker) -> None:
        data = ticker.encode()
        self._open.entries.append((streams.tickers(ticker.exchange, ticker.symbol), data, TICKER_MAXLEN))
        self._open.channels.append((streams.channel_tickers(ticker.exchange, ticker.symbol), data))
        self._open.counts["tickers"] = self._open.counts.get("tickers", 0) + 1

    @property
    def full(self) -> bool:
        return len(self._open.entries) >= self.pipeline_entries

    @property
    def pending(self) -> int:
        """Entries queued or sent but not acknowledged by Redis yet."""
        return len(self._open.entries) + sum(len(w.entries) for w in self._sealed)

    async def flush(self) -> None:
        """Write everything queued, oldest first; returns once Redis has acknowledged all of it.

        On an error the unacknowledged writes are kept and the error is raised: the next ``flush`` sends them again
        (idempotently). The writing runs in a task of its own (shielded): a cancelled caller cannot leave a write
        half-sent, and a write that completes after the caller left is still accounted for."""
        if self._open.entries or self._open.channels:
            self._sealed.append(self._open)
            self._open = self._new_write()
        if self._drain is None or self._drain.done():
            if not self._sealed:
                return
            self._drain = asyncio.ensure_future(self._send_sealed())
            self._drain.add_done_callback(_retrieve)
        await asyncio.shield(self._drain)

    async def _send_sealed(self) -> None:
        while self._sealed:
            w = self._sealed[0]
            applied = await self._send(w)
            self._sealed.pop(0)
            if not applied:
                self.replays_skipped += 1
            self.entries_published += len(w.entries)
            self.trades_published += w.trades
            metrics.count_trades(self.exchange, w.per_symbol)
            self.watermarks += w.counts.get("watermarks", 0)
            self.tickers += w.counts.get("tickers", 0)
            self.gaps += w.counts.get("gaps", 0)
            for symbol, (last_id, last_ts) in w.states.items():
                prev_id, prev_ts = self.published.get(symbol, (None, None))
                self.published[symbol] = (last_id if last_id is not None else prev_id,
                                          last_ts if last_ts is not None else prev_ts)

    async def _send(self, w: _Write) -> bool:
        symbols = list(w.states)
        keys = [streams.feed_state(self.exchange, s) for s in symbols] + [e[0] for e in w.entries]
        args: list[Any] = [w.token, len(symbols), len(w.entries), len(w.channels)]
        for _, data, maxlen in w.entries:
            args += [maxlen, data]
        for channel, data in w.channels:
            args += [channel, data]
        for s in symbols:
            last_id, last_ts = w.states[s]
            args += [last_id if isinstance(last_id, int) else "", "" if last_ts is None else last_ts]
        for attempt in (1, 2):
            try:
                # the bus's pipeline packs the ~2 arguments per entry in C (redis-py's packing cost ~5 µs a trade)
                async with self.bus.pipeline() as pipe:
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                    (applied,) = await pipe.execute()
                return bool(applied)
            except redis_errors.NoScriptError:  # a restarted Redis forgot the script
                if attempt == 2:
                    raise
                await self.redis.script_load(_WRITE)
        return False  # (not reached)


def _retrieve(task: asyncio.Task) -> None:
    """Mark a write task's error as seen: its caller may have been cancelled and gone (the write stays queued and
    the next ``flush`` sends it again)."""
    if not task.cancelled():
        task.exception()
