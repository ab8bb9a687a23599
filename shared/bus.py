"""One Redis Streams publisher for every service, its dead-letter stream, and the consumer (``shared.consumer``).

A message is one stream entry with a single field ``d`` holding msgpack bytes (``shared.schemas``): one field is
cheaper for redis-py to build than many, and a trades entry carries a whole batch.

Publishing trims streams with approximate MAXLEN. An entry larger than ``BusSettings.max_entry_bytes`` is refused at
this boundary: it goes to the dead-letter stream instead of its stream, so no consumer ever reads a 20 MB entry.

Dead letters (``streams.DEAD_LETTER``) are bounded twice: the stream by ``dead_letter_maxlen`` (approximate MAXLEN),
and each record's payload to its first ``dead_letter_keep_bytes`` bytes with the full size and a SHA-256, which is
enough to recognise the entry without storing a poison message whole once per consumer group.

Everything here uses redis-py's and hiredis's public APIs only (``shared.packed`` for pipelines).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import streams
from shared.outage import Outage, backoff_delay
from shared.packed import PackedPipeline
from shared.streams import FIELD

logger = logging.getLogger(__name__)

DEFAULT_MAXLEN = 100_000


# The limits a service's settings pass on (``shared.config.ServiceSettings`` declares them with these types).
MaxEntryBytes = Annotated[int, Field(gt=0, description="Larger entries are refused when published (a dead letter "
                                     "instead).")]
DeadLetterMaxlen = Annotated[int, Field(gt=0, description="Approximate MAXLEN of the dead-letter stream.")]
DeadLetterKeepBytes = Annotated[int, Field(ge=0, description="Bytes of a dead entry's payload kept (with its size "
                                           "and SHA-256).")]


class BusSettings(BaseModel):
    """The publisher's limits (``ServiceSettings.bus_settings()`` builds them from a service's settings)."""

    model_config = ConfigDict(frozen=True)

    maxlen: int = Field(default=DEFAULT_MAXLEN, gt=0, description="Approximate MAXLEN of a stream written to.")
    max_entry_bytes: MaxEntryBytes = 1_000_000
    dead_letter_maxlen: DeadLetterMaxlen = 10_000
    dead_letter_keep_bytes: DeadLetterKeepBytes = 1024


def as_str(value: bytes | str | None) -> str:
    """A Redis reply field as text (redis-py returns bytes with decode_responses=False)."""
    return value.decode() if isinstance(value, bytes) else str(value)


_s = as_str


class Bus:
    """Publishing side, the dead-letter stream, and the group helpers consumers and tools share."""

    def __init__(self, redis: Redis, settings: BusSettings | None = None, *, service: str = "sentinel") -> None:
        self.redis = redis
        self.settings = settings or BusSettings()
        self.maxlen = self.settings.maxlen
        #: the service's Redis outage state: its loops report to it, so an outage is logged once (``shared.outage``)
        self.outage = Outage(service)
        self.refused = 0  # oversized entries turned into dead letters here

    # ---- publishing ------------------------------------------------------------------------------------------------

    def pipeline(self, *, transaction: bool = False) -> PackedPipeline:
        """A pipeline (MULTI/EXEC when ``transaction``) for hot writes: commands packed by hiredis, one write, replies
        read back to back (``shared.packed``). No WATCH: use ``redis.pipeline()`` for that."""
        return PackedPipeline(self.redis, transaction=transaction)

    def add_to(self, pipe: Any, stream: str, data: bytes, *, maxlen: int | None = None,
               channel: str | None = None) -> bool:
        """Queue an XADD (and a PUBLISH to ``channel``) on a caller's pipeline or MULTI/EXEC transaction.

        An entry over ``max_entry_bytes`` is queued as a dead letter instead (one reply in its place either way);
        returns False then."""
        if len(data) > self.settings.max_entry_bytes:
            self.refused += 1
            reason = f"oversized: {len(data)} bytes (max_entry_bytes {self.settings.max_entry_bytes})"
            logger.warning("refusing an entry for %s: %s", stream, reason)
            pipe.xadd(streams.DEAD_LETTER, self._dead_fields(stream, b"-", data, reason, ""),
                      maxlen=self.settings.dead_letter_maxlen, approximate=True)
            return False
        if type(pipe) is PackedPipeline:
            pipe.xadd_entry(stream, maxlen or self.maxlen, FIELD, data)
        else:  # a caller's redis-py pipeline
            pipe.xadd(stream, {FIELD: data}, maxlen=maxlen or self.maxlen, approximate=True)
        if channel is not None:
            pipe.publish(channel, data)
        return True

    async def publish(self, stream: str, data: bytes, *, maxlen: int | None = None,
                      channel: str | None = None) -> bytes | None:
        """Append one message; also PUBLISH it on ``channel`` for live views when given. Returns the entry id, None
        when the entry was refused (oversized: dead-lettered)."""
        async with self.pipeline() as pipe:
            written = self.add_to(pipe, stream, data, maxlen=maxlen, channel=channel)
            result = await pipe.execute()
        return result[0] if written else None

    async def publish_many(self, items: Iterable[tuple[str, bytes]], *, maxlen: int | None = None) -> list[Any]:
        """Append many (stream, data) messages in one pipelined round trip, in order; one reply per message (the
        dead letter's id for a refused one)."""
        async with self.pipeline() as pipe:
            for stream, data in items:
                self.add_to(pipe, stream, data, maxlen=maxlen)
            return list(await pipe.execute())

    # ---- dead letters ----------------------------------------------------------------------------------------------

    def _dead_fields(self, stream: str, entry_id: bytes | str, data: bytes | None, reason: str,
                     group: str) -> dict[Any, Any]:
        payload = data or b""
        keep = self.settings.dead_letter_keep_bytes
        return {b"source": stream, b"id": entry_id, b"group": group, b"reason": reason[:2000],
                b"size": len(payload), b"sha256": hashlib.sha256(payload).hexdigest(),
                b"truncated": int(len(payload) > keep), FIELD: payload[:keep]}

    async def dead_letter(self, stream: str, entry_id: bytes | str, data: bytes | None, reason: str,
                          group: str = "") -> None:
        """Record an entry that could not be processed, with why, on the (capped) dead-letter stream: the first
        ``dead_letter_keep_bytes`` of its payload, its size and its SHA-256."""
        logger.warning("dead-lettering %s %s (group %s): %s", stream, _s(entry_id), group or "-", reason)
        await self.redis.xadd(streams.DEAD_LETTER, self._dead_fields(stream, entry_id, data, reason, group),
                              maxlen=self.settings.dead_letter_maxlen, approximate=True)

    # ---- groups ----------------------------------------------------------------------------------------------------

    async def ensure_group(self, stream: str, group: str, start_id: str = "0") -> None:
        """Create ``group`` on ``stream`` (and the stream) if missing. ``start_id="0"`` reads what was already there."""
        try:
            await self.redis.xgroup_create(stream, group, id=start_id, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def caught_up(self, stream: str, group: str) -> bool:
        """True when ``group`` has been delivered every entry of ``stream`` and acked them all."""
        try:
            info: Any = await self.redis.xinfo_stream(stream)
            groups: Any = await self.redis.xinfo_groups(stream)
        except redis_errors.ResponseError:
            return False
        last = info.get("last-generated-id") or info.get(b"last-generated-id")
        for g in groups:
            name = g.get("name") or g.get(b"name")
            if _s(name) == group:
                return bool(g["pending"] == 0 and _s(g["last-delivered-id"]) == _s(last))
        return False

    async def group_status(self, stream: str, group: str) -> dict[str, int] | None:
        """Pending count and lag (entries not yet delivered) of a group, None if the group does not exist."""
        try:
            info: Any = await self.redis.xinfo_stream(stream)
            groups: Any = await self.redis.xinfo_groups(stream)
        except redis_errors.ResponseError:
            return None
        for g in groups:
            if _s(g.get("name")) == group:
                lag = g.get("lag")
                if lag is None:  # Redis < 7 has no lag field: count what lies after last-delivered-id
                    after: Any = await self.redis.xrange(stream, min=f"({_s(g['last-delivered-id'])}", count=10_000)
                    lag = len(after)
                return {"pending": int(g["pending"]), "lag": int(lag), "length": int(info["length"])}
        return None


# The consumer side lives in shared.consumer and shared.stream_entries; these names are what services import from here.
from shared.consumer import (  # noqa: E402
    ClaimIdleMs,
    Consumer,
    ConsumerSettings,
    DeadConsumerIdleMs,
    SilentConsumerIdleMs,
)
from shared.stream_entries import Batch, Entry, Handler  # noqa: E402

__all__ = ["FIELD", "Batch", "Bus", "BusSettings", "ClaimIdleMs", "Consumer", "ConsumerSettings", "DeadConsumerIdleMs",
           "DeadLetterKeepBytes", "DeadLetterMaxlen", "Entry", "Handler", "MaxEntryBytes", "SilentConsumerIdleMs",
           "as_str", "backoff_delay"]
