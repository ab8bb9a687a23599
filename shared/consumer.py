"""The one consumer of Redis Streams: consumer groups, ack after success, own pending first, XAUTOCLAIM, dead letters.

``Consumer(bus, ConsumerSettings(group=..., consumer=...), decode=..., handler=...)`` reads its streams in a
consumer group and hands decoded entries to ``handler`` as one ``Batch`` per read. Guarantees:

- an entry is XACKed only after the handler returned, or, for handlers that write state in a MULTI/EXEC, in the
  handler's own transaction (``Batch.ack_with(pipe)``): state, output and ack land together;
- on start (and after a connection error) the consumer first re-reads its own pending entries (delivered before a
  crash, never acked), so a restarted instance with the same name resumes its work at once; entries other consumers
  left pending for longer than ``claim_idle_ms`` are claimed (XAUTOCLAIM) at start and every ``claim_every_s``;
- an entry that cannot be decoded goes to the dead-letter stream and is acked at once; an entry whose handler keeps
  failing goes there after ``max_deliveries`` deliveries; a failing batch is retried entry by entry so one poison
  entry does not hold back the others (within a stream, entries after a failure wait: order is kept);
- consumers of the group idle for longer than ``dead_consumer_idle_ms`` with nothing pending are deleted, sooner
  (``silent_consumer_idle_ms``) when their replica heartbeat is missing (``shared.consumer_pruning``);
- Redis connection errors are retried with capped backoff and reported to the service's ``Outage`` (one warning when
  Redis goes away, one when it is back); the loop does not die.

Replies of XREADGROUP and XAUTOCLAIM are taken as the server sent them and never retried (``shared.packed.raw_command``):
redis-py's parsers would build a dict per entry, and its automatic retry of a command whose connection failed would
leave a lost reply's entries pending and unseen while newer ones are handled. What a handler receives (``Batch`` of
``Entry``) and the parsing of raw replies are in ``shared.stream_entries``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from shared import metrics
from shared.consumer_pruning import DeadConsumerPruner
from shared.errors import DecodeError
from shared.outage import REDIS_DOWN, backoff_delay
from shared.packed import raw_command
from shared.stream_entries import Batch, Entry, Handler, as_text, entry_data, stream_items
from shared.streams import FIELD

if TYPE_CHECKING:
    from shared.bus import Bus

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The options a service's settings pass on (``shared.config.ServiceSettings`` declares them with these types).
ClaimIdleMs = Annotated[int, Field(gt=0, description="Entries pending this long at another (dead) consumer are "
                                   "claimed.")]
DeadConsumerIdleMs = Annotated[int, Field(gt=0, description="Consumers of a group idle this long with nothing pending "
                                          "(killed instances) are deleted from it.")]
SilentConsumerIdleMs = Annotated[int, Field(gt=0, description="Consumers of a group idle this long with nothing "
                                            "pending and no live replica heartbeat are deleted from it.")]


class ConsumerSettings(BaseModel):
    """Every option of a ``Consumer`` (``ServiceSettings.consumer_settings(group)`` fills them from a service's
    settings)."""

    model_config = ConfigDict(frozen=True)

    group: str = Field(min_length=1, description="Consumer group.")
    consumer: str = Field(min_length=1, description="This instance's name in the group: keep it stable across "
                          "restarts, so a restarted instance resumes its own pending entries at once.")
    count: int = Field(default=1000, gt=0, description="COUNT of each XREADGROUP.")
    block_ms: int = Field(default=500, ge=0, description="BLOCK of each XREADGROUP.")
    claim_idle_ms: ClaimIdleMs = 30_000
    claim_every_s: float = Field(default=5.0, gt=0, description="How often stale entries are looked for.")
    max_deliveries: int = Field(default=5, gt=0, description="An entry whose handler failed this many times is "
                                "dead-lettered.")
    dead_consumer_idle_ms: DeadConsumerIdleMs = 3_600_000
    silent_consumer_idle_ms: SilentConsumerIdleMs = 30_000
    service: str | None = Field(default=None, description="The service whose replica heartbeats "
                                "(streams.replica_heartbeat(service, consumer name)) tell which consumers of the group "
                                "are alive; None: consumers are only pruned after dead_consumer_idle_ms.")


class Consumer(Generic[T]):
    """Reads streams in a consumer group, decodes, hands batches to ``handler``, acks after success."""

    def __init__(self, bus: Bus, settings: ConsumerSettings, *, decode: Callable[[bytes], T], handler: Handler[T],
                 streams: Sequence[str] = ()) -> None:
        self.bus = bus
        self.redis: Redis = bus.redis
        self.settings = settings
        self.decode = decode
        self.handler = handler
        self._pruner = DeadConsumerPruner(self.redis, settings)
        self._streams: list[str] = list(dict.fromkeys(streams))
        self._ready: set[str] = set()  # streams whose group exists
        self._recover: set[str] = set()  # streams whose own pending entries must be re-read first
        self._last_claim = float("-inf")
        self._retry_at = 0.0  # loop time before which failed entries are not retried
        self._failures = 0
        self.processed = 0
        self.dead_lettered = 0
        self.claimed = 0

    @property
    def name(self) -> str:
        return self.settings.consumer

    @property
    def group(self) -> str:
        return self.settings.group

    @property
    def pruned(self) -> int:
        """Dead consumers this one deleted from the group."""
        return self._pruner.pruned

    # ---- streams ---------------------------------------------------------------------------------------------------

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def set_streams(self, names: Iterable[str]) -> None:
        """Replace the set of streams read (groups of new ones are created on the next poll)."""
        self._streams = list(dict.fromkeys(names))
        self._ready &= set(self._streams)
        self._recover &= set(self._streams)

    def add_streams(self, names: Iterable[str]) -> None:
        self.set_streams([*self._streams, *names])

    # ---- loop ------------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set. Redis outages are retried with capped backoff, told once (``Outage``)."""
        failures = 0
        outage = self.bus.outage
        while not stop.is_set():
            try:
                await self.poll(self.settings.block_ms)
                failures = 0
                if self._streams:  # (a poll without streams sends nothing: it proves nothing about Redis)
                    outage.ok()
            except REDIS_DOWN as exc:
                # a read whose reply was lost may have delivered entries (pending here): re-read own pending first
                self._recover.update(self._ready)
                failures += 1
                outage.lost(exc, f"consumer {self.group}/{self.name}")
                await _sleep_or_stop(stop, backoff_delay(failures, base=0.2, cap=5.0))
            except Exception:
                failures += 1
                logger.exception("%s/%s: consume loop error", self.group, self.name)
                await _sleep_or_stop(stop, backoff_delay(failures, base=0.2, cap=5.0))

    async def drain(self) -> int:
        """Burst mode: process everything available now (own pending, claimable, new) and return how many."""
        total = 0
        while True:
            n = await self.poll(None)
            total += n
            if n == 0 and not self._recover:
                return total
            if n == 0:  # only failed entries remain: wait for their retry time
                await asyncio.sleep(max(0.0, self._retry_at - asyncio.get_running_loop().time()))

    async def poll(self, block_ms: int | None) -> int:
        """One round: own pending first, stale entries of others when due, then new entries (blocking up to
        ``block_ms``; None: not at all). Returns how many entries were handled."""
        for stream in self._streams:
            if stream not in self._ready:
                await self.bus.ensure_group(stream, self.group)
                self._ready.add(stream)
                self._recover.add(stream)
        if not self._streams:
            if block_ms:
                await asyncio.sleep(block_ms / 1000)
            return 0
        loop = asyncio.get_running_loop()
        handled = 0
        if self._recover and loop.time() >= self._retry_at:
            handled += await self._read_own_pending()
        if loop.time() - self._last_claim >= self.settings.claim_every_s:
            self._last_claim = loop.time()
            handled += await self._claim_stale()
            await self._pruner.prune(self._streams, loop.time())
            await metrics.sample_consumer(self.redis, self.group, self._streams)
        if handled:
            return handled
        readable = {s: ">" for s in self._streams if s not in self._recover}  # a stream waiting for a retry keeps order
        if not readable:
            await asyncio.sleep(max(0.0, min(self._retry_at - loop.time(), (block_ms or 0) / 1000)))
            return 0
        return await self._handle_reply(await self._xreadgroup(readable, block_ms))

    async def _xreadgroup(self, ids: dict[str, str], block_ms: int | None) -> Any:
        block = () if block_ms is None else ("BLOCK", block_ms)
        return await raw_command(self.redis, "XREADGROUP", "GROUP", self.group, self.name, "COUNT", self.settings.count,
                                   *block, "STREAMS", *ids, *ids.values())

    async def _read_own_pending(self) -> int:
        handled = 0
        for stream in list(self._recover):
            reply = await self._xreadgroup({stream: "0"}, None)
            n = await self._handle_reply(reply)
            handled += n
            if n == 0:
                self._recover.discard(stream)
        return handled

    async def _claim_stale(self) -> int:
        handled = 0
        for stream in self._streams:
            start: Any = "0-0"
            while True:
                reply = await raw_command(self.redis, "XAUTOCLAIM", stream, self.group, self.name,
                                          self.settings.claim_idle_ms, start, "COUNT", self.settings.count)
                start, claimed = reply[0], [e for e in reply[1] if e]  # (Redis 6.2: nil for a trimmed entry)
                if claimed:
                    logger.info("%s/%s: claimed %d stale entries of %s", self.group, self.name, len(claimed), stream)
                    self.claimed += len(claimed)
                    handled += await self._handle_entries(stream, claimed)
                if as_text(start) in ("0-0", "0"):
                    break
        return handled

    # ---- handling --------------------------------------------------------------------------------------------------

    async def _handle_reply(self, reply: Any) -> int:
        """Every stream of one XREADGROUP reply goes to the handler as ONE batch (a handler that commits per batch
        makes one round trip per read, not one per stream); order within each stream is kept."""
        entries: list[Entry[T]] = []
        handled = 0
        for stream_name, raw_entries in stream_items(reply):
            handled += len(raw_entries)
            entries += await self._decode_entries(as_text(stream_name), raw_entries)
        if entries:
            await self._dispatch(entries)
        return handled

    async def _handle_entries(self, stream: str, raw_entries: list[Any]) -> int:
        entries = await self._decode_entries(stream, raw_entries)
        if entries:
            await self._dispatch(entries)
        return len(raw_entries)

    async def _decode_entries(self, stream: str, raw_entries: list[Any]) -> list[Entry[T]]:
        """Decoded entries; undecodable ones (and ones trimmed while pending) are dead-lettered / acked here."""
        entries: list[Entry[T]] = []
        decode = self.decode
        for entry_id, fields in raw_entries:
            if fields is None:  # deleted by trimming while pending
                await self.redis.xack(stream, self.group, entry_id)
                continue
            # the bus's own entries are exactly [b"d", data]
            data = fields[1] if type(fields) is list and len(fields) == 2 and fields[0] == FIELD else \
                entry_data(fields)
            try:
                if data is None:
                    raise DecodeError(f"entry has no {FIELD.decode()!r} field")
                entries.append(Entry(stream, entry_id, decode(data)))
            except DecodeError as exc:
                await self.bus.dead_letter(stream, entry_id, data, f"undecodable: {exc}", self.group)
                await self.redis.xack(stream, self.group, entry_id)
                self.dead_lettered += 1
                metrics.DEAD_LETTERS.labels(self.group).inc()
        return entries

    async def _dispatch(self, entries: list[Entry[T]]) -> None:
        try:
            await self._run_handler(entries)
            return
        except REDIS_DOWN:
            raise
        except Exception:
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
            except REDIS_DOWN:
                raise
            except Exception:
                failed_streams.add(entry.stream)
                await self._failed(entry)

    async def _run_handler(self, entries: list[Entry[T]]) -> None:
        batch = Batch(entries, self.group)
        await self.handler(batch)
        if not batch.acked:
            await self.ack(batch)
        self.processed += len(entries)

    async def ack(self, batch: Batch[T]) -> None:
        """Ack ``batch`` now (what the consumer does when its handler returns without having acked it)."""
        async with self.bus.pipeline() as pipe:
            batch.ack_with(pipe)
            await pipe.execute()

    async def _failed(self, entry: Entry[T]) -> None:
        pending: Any = await self.redis.xpending_range(entry.stream, self.group, min=entry.id, max=entry.id, count=1)
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        if deliveries >= self.settings.max_deliveries:
            raw: Any = await self.redis.xrange(entry.stream, min=entry.id, max=entry.id)
            data = raw[0][1].get(FIELD) if raw else None
            await self.bus.dead_letter(entry.stream, entry.id, data, f"handler failed {deliveries} times", self.group)
            await self.redis.xack(entry.stream, self.group, entry.id)
            self.dead_lettered += 1
            metrics.DEAD_LETTERS.labels(self.group).inc()
            return
        logger.exception("%s/%s: handler failed on %s %s (delivery %d of %d)", self.group, self.name, entry.stream,
                         as_text(entry.id), deliveries, self.settings.max_deliveries)
        self._recover.add(entry.stream)
        self._failures += 1
        self._retry_at = asyncio.get_running_loop().time() + backoff_delay(self._failures, base=0.05, cap=2.0)


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        pass


__all__ = ["Consumer", "ConsumerSettings"]
