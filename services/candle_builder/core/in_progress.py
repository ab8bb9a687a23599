"""A builder's candles in progress, as the live views get them (candle_builder's ``part_live``): the open candle of
every timeframe (``in_progress``), each naming the last closed bar of its timeframe (``last_closed``). Read only: the
builder is not changed.
"""

from __future__ import annotations

from services.candle_builder.core.builder import Emitted, SeriesBuilder
from shared.timeframes import bucket_start

__all__ = ["in_progress", "last_closed"]


def last_closed(builder: SeriesBuilder, tf: str) -> int | None:
    """Start of the last closed bar of ``tf`` (the builder keeps it whatever it prunes), None before any."""
    bars = builder.recent.get(tf)
    return max(bars) if bars else None


def in_progress(builder: SeriesBuilder) -> list[Emitted]:
    """The open candle of every timeframe (derived ones include the open base bar)."""
    out: list[Emitted] = []
    base = builder.base
    if base is not None and builder.emit_base:
        out.append((builder.base_tf, base))
    for tf, ms in builder.derived.items():
        cur = builder.cur[tf]
        if base is not None and bucket_start(base.ts, ms) >= builder.start_at[tf]:
            d = bucket_start(base.ts, ms)
            if cur is None or cur.ts != d:
                view = base.copy(d, d + ms)
            else:
                view = cur.copy()
                view.merge(base)
            out.append((tf, view))
        elif cur is not None:
            out.append((tf, cur))
    return out
