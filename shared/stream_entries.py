"""Stream entries as a ``Consumer`` reads them: the parts of a raw XREADGROUP/XAUTOCLAIM reply (``stream_items``,
``entry_data``, ``as_text``), and the decoded ``Entry`` and ``Batch`` a consumer's ``Handler`` receives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shared.streams import FIELD

T = TypeVar("T")


def stream_items(reply: Any) -> Any:
    """(stream, entries) pairs of a raw XREAD/XREADGROUP reply: a map under RESP3, a list of pairs under RESP2; None
    (nothing within BLOCK) gives nothing."""
    if not reply:
        return ()
    return reply.items() if isinstance(reply, dict) else reply


def entry_data(fields: Any) -> bytes | None:
    """The bus's ``d`` field of a raw stream entry (``[b"d", data]``, any other field list ``[f, v, f, v...]``, or a
    dict); None when it has none."""
    if isinstance(fields, dict):
        value = fields.get(FIELD)
        return value if isinstance(value, bytes) else None
    if type(fields) is list and len(fields) == 2 and fields[0] == FIELD:  # the bus's own entries
        return fields[1]  # type: ignore[no-any-return]
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == FIELD:
            return fields[i + 1]  # type: ignore[no-any-return]
    return None


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

    def ids_by_stream(self) -> dict[str, list[bytes]]:
        """This batch's entry ids per stream, in order (what its XACKs ack)."""
        by_stream: dict[str, list[bytes]] = {}
        for entry in self.entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        return by_stream

    def ack_with(self, pipe: Any) -> None:
        """Queue the XACKs of this batch on the handler's own pipeline or transaction (the consumer will not ack
        again)."""
        for stream, ids in self.ids_by_stream().items():
            pipe.xack(stream, self.group, *ids)
        self.acked = True


Handler = Callable[[Batch[T]], Awaitable[None]]


def as_text(value: bytes | str) -> str:
    """A stream name, entry id or consumer name of a raw reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
