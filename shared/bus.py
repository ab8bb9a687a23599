"""One Redis Streams publisher/consumer for every service.

A message is one stream entry with a single field ``d`` holding msgpack bytes (``shared.schemas``): one field is
cheaper for redis-py to build than many, and a trades entry carries a whole batch.

Consumer guarantees:

- consumer groups; an entry is XACKed only after the handler returned (or, for handlers that write state in a
  MULTI/EXEC, in the handler's own transaction via ``Batch.ack_with``: state, output and ack land together);
- on start the consumer first re-reads its own pending entries (delivered before a crash, never acked), then claims
  entries other consumers left pending for longer than ``claim_idle_ms`` (XAUTOCLAIM), at start and periodically;
- an entry that cannot be decoded goes to the dead-letter stream and is acked at once; an entry whose handler keeps
  failing goes there after ``max_deliveries`` deliveries; a failing batch is retried entry by entry so one poison
  entry does not hold back the others (within a stream, entries after a failure wait: order is kept);
- Redis connection errors are logged and retried with capped backoff; the loop does not die.

Publishing trims streams with approximate MAXLEN.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import streams
from shared.errors import DecodeError
from shared.fastredis import PinnedConnection, RawPipeline, entry_field, pack_command, stream_items

logger = logging.getLogger(__name__)

FIELD = b"d"
DEFAULT_MAXLEN = 100_000

T = TypeVar("T")


def backoff_delay(attempt: int, *, base: float = 0.1, cap: float = 10.0) -> float:
    """Capped exponential backoff with full jitter: a random delay in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class Bus:
    """Publishing side, plus the helpers consumers and tools share."""

    def __init__(self, redis: Redis, *, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.redis = redis
        self.maxlen = maxlen

    def add_to(self, pipe: Any, stream: str, data: bytes, *, maxlen: int | None = None,
               channel: str | None = None) -> None:
        """Queue an XADD (and a PUBLISH to ``channel``) on a caller's pipeline or MULTI/EXEC transaction."""
        pipe.xadd(stream, {FIELD: data}, maxlen=maxlen or self.maxlen, approximate=True)
        if channel is not None:
            pipe.publish(channel, data)

    def pipeline(self, *, transaction: bool = False, pinned: PinnedConnection | None = None) -> RawPipeline:
        """A pipeline (MULTI/EXEC when ``transaction``) with redis-py's command methods and cheap packing
        (``shared.fastredis``): what the hot paths queue their XADD/XACK/HSET on. ``pinned``: a batch's
        ``Batch.pinned`` (the consumer's read connection), so ``execute(read_ahead=batch.read_ahead)`` can send the
        next read with the commit."""
        return RawPipeline(self.redis, transaction=transaction, pinned=pinned)

    async def publish(self, stream: str, data: bytes, *, maxlen: int | None = None,
                      channel: str | None = None) -> bytes:
        """Append one message; also PUBLISH it on ``channel`` for live views when given. Returns the entry id."""
        async with self.pipeline() as pipe:
            self.add_to(pipe, stream, data, maxlen=maxlen, channel=channel)
            result = await pipe.execute()
        return result[0]

    async def publish_many(self, items: Iterable[tuple[str, bytes]], *, maxlen: int | None = None) -> list[bytes]:
        """Append many (stream, data) messages in one pipelined round trip, in order."""
        async with self.pipeline() as pipe:
            for stream, data in items:
                self.add_to(pipe, stream, data, maxlen=maxlen)
            return await pipe.execute()

    async def ensure_group(self, stream: str, group: str, start_id: str = "0") -> None:
        """Create ``group`` on ``stream`` (and the stream) if missing. ``start_id="0"`` reads what was already there."""
        try:
            await self.redis.xgroup_create(stream, group, id=start_id, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def dead_letter(self, stream: str, entry_id: bytes | str, data: bytes | None, reason: str,
                          group: str = "") -> None:
        """Record an entry that could not be processed, with why, on the dead-letter stream."""
        logger.warning("dead-lettering %s %s (group %s): %s", stream, _s(entry_id), group or "-", reason)
        await self.redis.xadd(streams.DEAD_LETTER, {
            b"source": stream, b"id": entry_id, b"group": group, b"reason": reason[:2000], FIELD: data or b"",
        }, maxlen=self.maxlen, approximate=True)

    async def caught_up(self, stream: str, group: str) -> bool:
        """True when ``group`` has been delivered every entry of ``stream`` and acked them all."""
        try:
            info = await self.redis.xinfo_stream(stream)
            groups = await self.redis.xinfo_groups(stream)
        except redis_errors.ResponseError:
            return False
        last = info.get("last-generated-id") or info.get(b"last-generated-id")
        for g in groups:
            name = g.get("name") or g.get(b"name")
            if _s(name) == group:
                return g["pending"] == 0 and _s(g["last-delivered-id"]) == _s(last)
        return False

    async def group_status(self, stream: str, group: str) -> dict[str, int] | None:
        """Pending count and lag (entries not yet delivered) of a group, None if the group does not exist."""
        try:
            info = await self.redis.xinfo_stream(stream)
            groups = await self.redis.xinfo_groups(stream)
        except redis_errors.ResponseError:
            return None
        for g in groups:
            if _s(g.get("name")) == group:
                lag = g.get("lag")
                if lag is None:  # Redis < 7 has no lag field: count what lies after last-delivered-id
                    lag = len(await self.redis.xrange(stream, min=f"({_s(g['last-delivered-id'])}", count=10_000))
                return {"pending": int(g["pending"]), "lag": int(lag), "length": int(info["length"])}
        return None


def as_str(value: bytes | str | None) -> str:
    """A Redis reply field as text (redis-py returns bytes with decode_responses=False)."""
    return value.decode() if isinstance(value, bytes) else str(value)


_s = as_str


@dataclass(slots=True)
class Entry(Generic[T]):
    """One decoded stream entry."""

    stream: str
    id: bytes
    value: T


@dataclass(slots=True)
class Batch(Generic[T]):
    """What a handler receives: decoded entries in stream order (per stream)."""

    entries: list[Entry[T]]
    group: str
    acked: bool = field(default=False)
    # The consumer's read connection and its next XREADGROUP, packed (None when the next poll must do something
    # else first). A handler that commits with ``bus.pipeline(transaction=True, pinned=batch.pinned)`` and
    # ``execute(read_ahead=batch.read_ahead)`` sends that read in the same write as its commit: one round trip per
    # batch. Redis runs it after EXEC, so entries are still acked only after the commit; if the commit fails, the
    # entries it delivered stay pending and are re-read in order. With ``Consumer(prefetch=True)`` the next read
    # usually went out already (before this batch was handed over): then ``pinned`` is the consumer's commit
    # connection and ``read_ahead`` is None.
    pinned: Any = None
    read_ahead: bytes | None = None

    def ids_by_stream(self) -> dict[str, list[bytes]]:
        """This batch's entry ids per stream, in order (what its XACKs ack)."""
        by_stream: dict[str, list[bytes]] = {}
        for entry in self.entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        return by_stream

    def packed_acks(self) -> tuple[list[bytes], list[str]]:
        """This batch's XACKs, packed (one per stream), and their streams."""
        by_stream = self.ids_by_stream()
        return [pack_command("XACK", stream, self.group, *ids) for stream, ids in by_stream.items()], list(by_stream)

    def ack_with(self, pipe: Any) -> None:
        """Queue the XACKs of this batch on the handler's own pipeline or transaction (the bus will not ack again)."""
        for stream, ids in self.ids_by_stream().items():
            pipe.xack(stream, self.group, *ids)
        self.acked = True


Handler = Callable[[Batch[T]], Awaitable[None]]

TOP_UP_MISSES = 8  # empty top-ups in a row after which a consumer tries none for TOP_UP_BACKOFF_S
TOP_UP_BACKOFF_S = 1.0


class Consumer(Generic[T]):
    """Reads streams in a consumer group, decodes, hands batches to ``handler``, acks after success."""

    def __init__(
        self,
        bus: Bus,
        *,
        group: str,
        consumer: str,
        decode: Callable[[bytes], T],
        handler: Handler[T],
        streams: Sequence[str] = (),
        count: int = 1000,
        block_ms: int = 500,
        claim_idle_ms: int = 30_000,
        claim_every_s: float = 5.0,
        max_deliveries: int = 5,
        prefetch: bool = False,
        linger_ms: int = 0,
        linger: Callable[[], float] | None = None,
        top_up: Callable[[list[Entry[T]]], bool] | None = None,
        top_up_early: Callable[[], bool] | None = None,
    ) -> None:
        self.bus = bus
        self.redis = bus.redis
        self.group = group
        self.name = consumer
        self.decode = decode
        self.handler = handler
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self.max_deliveries = max_deliveries
        # Send the next XREADGROUP as soon as a reply is taken, before its batch is handled: Redis reads batch N+1
        # while the handler works on batch N (whose commit then goes on ``_commits``).
        self.prefetch = prefetch and not linger_ms and linger is None
        # After a read that delivered entries, wait this long before the next one, so a busy stream is read in
        # fewer, larger batches (less work per entry, fewer wake-ups) at the cost of up to this much delay.
        self.linger_ms = linger_ms
        # ``linger``: asked after each read that delivered entries (before they are handled) how many ms to wait
        # then; overrides ``linger_ms`` (the alert engine lingers mid-bar and reads at once near a bar's close)
        self.linger = linger
        # ``top_up``: asked with the entries of each blocking read; True makes the consumer read once more at once (no
        # BLOCK) and hand over both reads' entries as one batch. A blocked XREADGROUP returns when the first entry
        # lands, so entries written together (a bar boundary: every symbol's closing trade) come one read, then the
        # rest; the alert engine says when that split would make the others wait for the first one's work.
        self.top_up = top_up
        # ``top_up_early`` (with ``top_up``): asked when a blocking read returns a single entry — the signature of a
        # read served at the first of several entries written together; True sends the top-up read at once, before
        # the entry is decoded (the decoding then overlaps its round trip), whatever the entry holds
        self.top_up_early = top_up_early
        self.topped_up = 0  # reads that were topped up
        self.top_ups_empty = 0  # ... whose top-up brought nothing
        self._top_up_misses = 0  # empty top-ups in a row
        self.top_up_backoff_s = TOP_UP_BACKOFF_S
        self._top_up_after = 0.0  # loop time before which no top-up is tried (TOP_UP_MISSES came back empty)
        self._linger_now: float = linger_ms  # the wait after the batch being handled
        self._stop: asyncio.Event | None = None  # of run(): no new read is sent ahead once it is set
        self._streams: list[str] = list(dict.fromkeys(streams))
        self._ready: set[str] = set()
        self._recover: set[str] = set()  # streams whose own pending entries must be re-read
        self._last_claim = 0.0
        self._retry_at = 0.0  # loop time before which failed entries are not retried
        self._failures = 0
        self.processed = 0
        self.dead_lettered = 0
        self._reads = PinnedConnection(self.redis)  # XREADGROUP's own connection: no pool checkout per read
        self._commits = PinnedConnection(self.redis)  # with prefetch: the handlers' commits while a read is out
        self._block_ms: int | None = block_ms  # of the poll in progress (a read-ahead uses the same)
        self._read_cmd: tuple[tuple, bytes] | None = None  # (key, packed XREADGROUP) cache
        self._acks_sent: list[str] = []  # streams of the XACKs sent after the outstanding read (``ack``)

    # ---- subscriptions ---------------------------------------------------------------------------------------------

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def set_streams(self, names: Iterable[str]) -> None:
        """Replace the set of streams read (groups of new ones are created on the next poll)."""
        self._streams = list(dict.fromkeys(names))
        self._read_cmd = None
        self._ready &= set(self._streams)
        self._recover &= set(self._streams)

    def add_streams(self, names: Iterable[str]) -> None:
        self.set_streams([*self._streams, *names])

    async def _prepare(self) -> None:
        for stream in self._streams:
            if stream not in self._ready:
                await self.bus.ensure_group(stream, self.group)
                self._ready.add(stream)
                self._recover.add(stream)

    # ---- loop ------------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set. Transient Redis errors are retried with capped backoff."""
        failures = 0
        self._stop = stop
        try:
            while not stop.is_set() or self._reads.outstanding:  # a read-ahead already delivered is handled
                try:
                    if await self.poll(self.block_ms) and self._linger_now:
                        await _sleep_or_stop(stop, self._linger_now / 1000)
                    failures = 0
                except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                    # a read whose reply was lost may have delivered entries (pending here): re-read own pending first
                    self._recover.update(self._streams)
                    failures += 1
                    delay = backoff_delay(failures, base=0.2, cap=5.0)
                    logger.warning("%s/%s: redis unavailable (%s); retrying in %.1fs", self.group, self.name, exc,
                                   delay)
                    await _sleep_or_stop(stop, delay)
                except Exception:
                    failures += 1
                    logger.exception("%s/%s: consume loop error", self.group, self.name)
                    await _sleep_or_stop(stop, backoff_delay(failures, base=0.2, cap=5.0))
        finally:
            await self._reads.release()
            await self._commits.release()

    async def drain(self) -> int:
        """Burst mode: process everything available now (own pending, claimable, new) and return how many."""
        total = 0
        while True:
            n = await self.poll(None)
            total += n
            if n == 0 and not self._recover:
                await self._reads.release()
                await self._commits.release()
                return total
            if n == 0:  # only failed entries remain: wait for their retry time
                await asyncio.sleep(max(0.0, self._retry_at - asyncio.get_running_loop().time()))

    async def poll(self, block_ms: int | None) -> int:
        """One round: recover own pending, claim stale entries when due, then read new ones. Returns entries handled."""
        self._block_ms = block_ms
        if self._reads.outstanding:  # the next read went out with the previous batch's commit (or ahead of it)
            response = await self._read_outstanding()
            self._set_linger(response)
            await self._send_ahead(response)
            return await self._handle_response(response, read_ahead=True, top_up=block_ms is not None)
        await self._prepare()
        if not self._streams:
            if block_ms:
                await asyncio.sleep(block_ms / 1000)
            return 0
        handled = 0
        loop = asyncio.get_running_loop()
        if self._recover and loop.time() >= self._retry_at:
            handled += await self._read_own_pending()
        if loop.time() - self._last_claim >= self.claim_every_s:
            self._last_claim = loop.time()
            handled += await self._claim_stale()
        if handled:
            return handled
        readable = self._readable()
        if not readable:
            delay = max(0.0, min(self._retry_at - loop.time(), (block_ms or 0) / 1000))
            await asyncio.sleep(delay)
            return 0
        response = await self._xreadgroup(readable, block_ms)
        self._set_linger(response)
        await self._send_ahead(response)
        return await self._handle_response(response, read_ahead=True, top_up=block_ms is not None)

    def _readable(self) -> dict[str, str]:
        """The streams a read of new entries asks for. A stream with entries waiting for a retry is not read further:
        its order is kept."""
        return {s: ">" for s in self._streams if s not in self._recover}

    def _set_linger(self, response: Any) -> None:
        if self.linger is not None:
            self._linger_now = self.linger() if response else 0

    async def _xreadgroup(self, ids: dict[str, str], block_ms: int | None) -> Any:
        """XREADGROUP with the server's raw reply: redis-py's response callback would build a dict per entry."""
        await self._reads.send_ahead(self._pack_read(ids, block_ms))
        return await self._read_outstanding()

    async def _read_outstanding(self) -> Any:
        """The reply of the read sent ahead; the XACKs sent after it (``ack``) are checked."""
        try:
            return await self._reads.read_outstanding()
        finally:
            if self._acks_sent:
                self._check_acks()

    def _pack_read(self, ids: dict[str, str], block_ms: int | None) -> bytes:
        block = () if block_ms is None else ("BLOCK", block_ms)
        return pack_command("XREADGROUP", "GROUP", self.group, self.name, "COUNT", self.count, *block, "STREAMS",
                            *ids, *ids.values())

    async def _send_ahead(self, response: Any) -> None:
        """With ``prefetch``: send the next XREADGROUP now, before ``response`` is handled (only after a reply that
        delivered entries, and only when the next poll would do nothing else first). Its entries are delivered
        before this batch's commit: if that commit fails, ``_settle_read_ahead`` leaves them pending (re-read in
        order)."""
        if not self.prefetch or not response:
            return
        read = self._next_read()
        if read is not None:
            await self._reads.send_ahead(read)

    def _next_read(self) -> bytes | None:
        """The packed XREADGROUP the next poll would send, when that poll would do nothing else first (no own
        pending to recover, no claim due, every group ready); else None."""
        if self._recover or not self._streams or len(self._ready) < len(self._streams) or self._linger_now:
            return None  # (_ready is a subset of _streams: equal sizes mean every group is ready)
        if self._stop is not None and self._stop.is_set():
            return None  # run() is stopping: a read carried by a commit would chain reads while entries keep coming
        if asyncio.get_running_loop().time() - self._last_claim >= self.claim_every_s:
            return None
        key = (self._block_ms, self.count)  # set_streams() drops the cache
        cached = self._read_cmd
        if cached is None or cached[0] != key:
            cached = self._read_cmd = (key, self._pack_read(dict.fromkeys(self._streams, ">"), self._block_ms))
        return cached[1]

    async def _settle_read_ahead(self) -> None:
        """After a failed handler: take the read-ahead reply, if one is outstanding, and leave its entries pending
        (their streams re-read from their own pending entries, in order, after the failed ones)."""
        if not self._reads.outstanding:
            return
        for stream_name, raw_entries in stream_items(await self._read_outstanding()):
            if raw_entries:
                self._recover.add(_s(stream_name))

    async def _read_own_pending(self) -> int:
        handled = 0
        for stream in list(self._recover):
            response = await self._xreadgroup({stream: "0"}, None)
            n = await self._handle_response(response)
            handled += n
            if n == 0 or not any(entries for _, entries in stream_items(response)):
                self._recover.discard(stream)
        return handled

    async def _claim_stale(self) -> int:
        handled = 0
        for stream in self._streams:
            start = "0-0"
            while True:
                result = await self.redis.xautoclaim(stream, self.group, self.name, self.claim_idle_ms,
                                                     start_id=start, count=self.count)
                start, claimed = result[0], [e for e in result[1] if e and e[1] is not None]
                if claimed:
                    logger.info("%s/%s: claimed %d stale entries of %s", self.group, self.name, len(claimed), stream)
                    handled += await self._handle_entries(stream, claimed)
                if _s(start) in ("0-0", "0"):
                    break
        return handled

    async def _handle_response(self, response: Any, read_ahead: bool = False, top_up: bool = False) -> int:
        """Hand every stream of one XREADGROUP reply to the handler as ONE batch.

        A handler that commits per batch (MULTI/EXEC) then makes one round trip per read, not one per stream: with N
        symbols trading, a per-stream split made the last stream of a reply wait N round trips. Order within each
        stream is kept, and a failing batch is still retried entry by entry.
        """
        entries: list[Entry[T]] = []
        handled = 0
        asked_early = top_up and self.top_up_early is not None and not self._reads.outstanding and \
            _single_entry(response) and self._asks(self.top_up_early)
        early = asked_early and self._top_up_worth()
        if early:
            readable = self._readable()
            if readable:
                self.topped_up += 1
                await self._reads.send_ahead(self._pack_read(readable, None))
        for stream_name, raw_entries in stream_items(response):
            handled += len(raw_entries)
            entries += await self._decode_entries(_s(stream_name), raw_entries)
        if early and self._reads.outstanding:
            handled += await self._add_top_up(await self._read_outstanding(), entries)
        elif top_up and not asked_early and entries and self.top_up is not None and not self._reads.outstanding and \
                self._wants_more(entries) and self._top_up_worth():
            readable = self._readable()
            if readable:
                self.topped_up += 1
                handled += await self._add_top_up(await self._xreadgroup(readable, None), entries)
        if entries:
            await self._dispatch(entries, read_ahead)
        return handled

    async def _add_top_up(self, response: Any, entries: list[Entry[T]]) -> int:
        """A top-up read's entries, decoded onto ``entries``; how many it delivered (none counts as a miss)."""
        handled = 0
        for stream_name, raw_entries in stream_items(response):
            handled += len(raw_entries)
            entries += await self._decode_entries(_s(stream_name), raw_entries)
        if handled:
            self._top_up_misses = 0
        else:
            self._top_up_misses += 1
            self.top_ups_empty += 1
            if self._top_up_misses >= TOP_UP_MISSES:
                self._top_up_after = asyncio.get_running_loop().time() + self.top_up_backoff_s
        return handled

    def _top_up_worth(self) -> bool:
        """A top-up costs a round trip: after ``TOP_UP_MISSES`` in a row came back empty (entries that come one at a
        time: a quiet market), none is tried for ``top_up_backoff_s``; then one is, and another miss waits again."""
        return self._top_up_misses < TOP_UP_MISSES or asyncio.get_running_loop().time() >= self._top_up_after

    def _wants_more(self, entries: list[Entry[T]]) -> bool:
        return self._asks(self.top_up, entries)  # type: ignore[arg-type]

    def _asks(self, hint: Callable[..., bool], *args: Any) -> bool:
        try:
            return bool(hint(*args))
        except Exception:  # a hint only: the entries are handled either way
            logger.exception("%s/%s: top-up hint failed", self.group, self.name)
            return False

    async def _handle_entries(self, stream: str, raw_entries: list) -> int:
        entries = await self._decode_entries(stream, raw_entries)
        if entries:
            await self._dispatch(entries)
        return len(raw_entries)

    async def _decode_entries(self, stream: str, raw_entries: list) -> list[Entry[T]]:
        """Decoded entries; undecodable ones (and ones trimmed while pending) are dead-lettered / acked here."""
        entries: list[Entry[T]] = []
        for entry_id, fields in raw_entries:
            if fields is None:  # deleted by trimming while pending
                await self.redis.xack(stream, self.group, entry_id)
                continue
            # the bus's own entries are exactly [b"d", data]
            data = fields[1] if type(fields) is list and len(fields) == 2 and fields[0] == FIELD else \
                entry_field(fields, FIELD)
            try:
                if data is None:
                    raise DecodeError(f"entry has no {FIELD.decode()!r} field")
                entries.append(Entry(stream, entry_id, self.decode(data)))
            except DecodeError as exc:
                await self.bus.dead_letter(stream, entry_id, data, f"undecodable: {exc}", self.group)
                await self.redis.xack(stream, self.group, entry_id)
                self.dead_lettered += 1
        return entries

    async def _dispatch(self, entries: list[Entry[T]], read_ahead: bool = False) -> None:
        try:
            await self._run_handler(entries, read_ahead)
            return
        except (redis_errors.ConnectionError, redis_errors.TimeoutError):
            if self._reads.outstanding:  # a read sent ahead: its entries (if any) stay pending, re-read in order
                await self._reads.drop()
                self._recover.update(self._streams)
            raise
        except Exception:
            await self._settle_read_ahead()
            if len(entries) == 1:
                await self._failed(entries[0])
                return
            logger.warning("%s/%s: batch of %d failed; retrying entry by entry", self.group, self.name, len(entries),
                           exc_info=True)
        failed_streams: set[str] = set()
        for entry in entries:
            if entry.stream in failed_streams:
                self._recover.add(entry.stream)
                continue
            try:
                await self._run_handler([entry])
            except (redis_errors.ConnectionError, redis_errors.TimeoutError):
                raise
            except Exception:
                failed_streams.add(entry.stream)
                await self._failed(entry)

    async def _run_handler(self, entries: list[Entry[T]], read_ahead: bool = False) -> None:
        reads = self._reads
        pinned = reads if not reads.outstanding else self._commits if self.prefetch else None
        batch = Batch(entries, self.group, pinned=pinned,
                      read_ahead=self._next_read() if read_ahead and pinned is reads else None)
        await self.handler(batch)
        if not batch.acked:
            await self.ack(batch)
        self.processed += len(entries)

    def reply_waiting(self) -> bool:
        """The next read, sent ahead (by ``ack`` or with the last commit), has its reply arriving: entries to handle
        (or its BLOCK ran out). A handler's optional work after ``ack`` stops when this turns True."""
        return self._reads.reply_waiting()

    async def ack(self, batch: Batch[T], behind_read: bool = False) -> None:
        """Ack ``batch``, with the next read when it carries one (on the read connection, in the same write): what the
        consumer does when its handler returns; a handler with work left after its entries are safe (the alert
        engine's speculation) calls it first, so that work overlaps the next read.

        ``behind_read`` (with a read to send): the XACKs go after that read in the same write and nothing waits for
        them (``PinnedConnection.send_ahead(after=)``): Redis runs them when the read returns, their replies come with
        its reply. The entries stay pending until then (a crash meanwhile re-delivers them, as one before the ack
        would), so only a consumer whose next read returns at once should ask: the engine near a bar's close, which
        then has its ~0.1-0.3 ms of optional work start at once instead of after the XACKs' round trip."""
        reads = self._reads
        if behind_read and batch.read_ahead is not None and not reads.outstanding:
            acks, streams = batch.packed_acks()
            await reads.send_ahead(batch.read_ahead, b"".join(acks), len(acks))
            self._acks_sent = streams
            batch.acked = True
            return
        pinned = None if reads.outstanding else reads  # the handler may have sent the read-ahead itself
        async with self.bus.pipeline(pinned=pinned) as pipe:
            batch.ack_with(pipe)
            await pipe.execute(read_ahead=batch.read_ahead if pinned is not None else None)

    def _check_acks(self) -> None:
        """The replies of the XACKs sent after the read just taken (``ack``): a failed one leaves its stream's entries
        pending, re-read from the group's pending list before the next new ones."""
        replies, streams = self._reads.trailing_replies, self._acks_sent
        self._reads.trailing_replies, self._acks_sent = [], []
        self._recover.update(streams[len(replies):])  # the connection failed before their replies: not known
        for stream, reply in zip(streams, replies):
            if isinstance(reply, Exception):
                logger.warning("%s/%s: XACK on %s failed (%s); its entries are re-read from the pending list",
                               self.group, self.name, stream, reply)
                self._recover.add(stream)

    async def _failed(self, entry: Entry[T]) -> None:
        pending = await self.redis.xpending_range(entry.stream, self.group, min=entry.id, max=entry.id, count=1)
        deliveries = pending[0]["times_delivered"] if pending else 1
        if deliveries >= self.max_deliveries:
            raw = await self.redis.xrange(entry.stream, min=entry.id, max=entry.id)
            data = raw[0][1].get(FIELD) if raw else None
            await self.bus.dead_letter(entry.stream, entry.id, data,
                                       f"handler failed {deliveries} times", self.group)
            await self.redis.xack(entry.stream, self.group, entry.id)
            self.dead_lettered += 1
        else:
            logger.exception("%s/%s: handler failed on %s %s (delivery %d of %d)", self.group, self.name,
                             entry.stream, _s(entry.id), deliveries, self.max_deliveries)
            self._recover.add(entry.stream)
            self._failures += 1
            self._retry_at = asyncio.get_running_loop().time() + backoff_delay(self._failures, base=0.05, cap=2.0)


def _single_entry(response: Any) -> bool:
    """A raw XREADGROUP reply that delivered exactly one entry."""
    n = 0
    for _, raw_entries in stream_items(response):
        n += len(raw_entries)
        if n > 1:
            return False
    return n == 1


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        pass
