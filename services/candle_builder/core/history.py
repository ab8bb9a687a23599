"""Candles from history joining the ones a ``SeriesBuilder`` builds from trades.

- A new series: ``history_plan`` says what to ask for before its first trade, ``seed`` starts the builder from it
  (history candles before the first trade's bucket emitted as closed; the bucket under way at the seam of every derived
  timeframe rolled up from exact base candles plus trades).
- A look-back that grew, or a timeframe added to a running series: ``backfill_range`` says which older buckets to
  fetch, ``backfill`` emits them (behind the published candles; the live ones are not touched).

Each function reads and moves the builder's ``history_from`` (per timeframe, the oldest bucket its published candles
cover).
"""

from __future__ import annotations

from typing import Any

from services.candle_builder.bars import Bar, bar_from_history
from services.candle_builder.core.builder import Emitted, SeriesBuilder
from shared.timeframes import bucket_start

__all__ = ["backfill", "backfill_range", "history_plan", "seed"]


def history_plan(builder: SeriesBuilder, first_ts: int, bars: int | dict[str, int]) -> dict[str, tuple[int, int]]:
    """What to ask for before the first trade (at ``first_ts``): timeframe -> (since, until) bucket starts.

    Each derived timeframe gets ``bars`` (one count, or a count per timeframe) candles before the bucket holding
    the first trade; the base gets its count before the first trade's base bucket *and* every base bucket from the
    start of each derived seam bucket, so that seam bucket is rolled up from exact base candles plus trades.
    """
    def count(tf: str) -> int:
        return bars if isinstance(bars, int) else bars.get(tf, 0)

    seam = first_ts - first_ts % builder.base_ms
    plan: dict[str, tuple[int, int]] = {}
    base_since = seam - count(builder.base_tf) * builder.base_ms
    for tf, ms in builder.derived.items():
        start = bucket_start(seam, ms)
        plan[tf] = (start - count(tf) * ms, start)
        base_since = min(base_since, start)
    plan[builder.base_tf] = (base_since, seam)
    return plan


def seed(builder: SeriesBuilder, first_ts: int, rows: dict[str, list[Any] | None], out: list[Emitted],
         plan: dict[str, tuple[int, int]] | None = None) -> None:
    """Start a fresh series from history (``rows`` per timeframe, None where it could not be had).

    History candles before each seam bucket are emitted as closed; the seam bucket of each derived timeframe is
    rolled up from the base history. Without base history a derived seam bucket already under way is skipped.
    ``plan`` (what was asked) records how far back each timeframe's history now reaches (``history_from``).
    """
    if builder.base is not None or builder.last_base_ts is not None:
        return  # not fresh: live data already decided these buckets
    seam = first_ts - first_ts % builder.base_ms
    base_rows = rows.get(builder.base_tf)
    for tf, ms in builder.derived.items():
        start = bucket_start(seam, ms)
        for row in sorted(rows.get(tf) or [], key=lambda r: r[0]):
            if row[0] < start:
                builder.emit(tf, bar_from_history(row, ms), out)
        builder.start_at[tf] = start if (base_rows is not None or start == seam) else start + ms
        asked = (plan or {}).get(tf)
        builder.history_from[tf] = asked[0] if asked and rows.get(tf) is not None else builder.start_at[tf]
    for row in sorted(base_rows or [], key=lambda r: r[0]):
        if row[0] < seam and (builder.last_base_ts is None or row[0] > builder.last_base_ts):
            builder.advance(row[0], out)  # flat candles for base buckets the history skipped
            builder.close_base(bar_from_history(row, builder.base_ms), out)
    builder.closed_until = max(builder.closed_until, seam)
    asked = (plan or {}).get(builder.base_tf)
    builder.history_from[builder.base_tf] = asked[0] if asked and base_rows is not None else seam
    builder.flush_revisions(out)


def backfill_range(builder: SeriesBuilder, tf: str, bars: int) -> tuple[int, int] | None:
    """(since, until) of the history to fetch so that ``tf`` reaches ``bars`` closed candles back from the bucket
    in progress, or None: far enough already, nothing published yet, or the bucket before ``history_from`` not
    closed yet in exchange time (a timeframe added mid-bucket: that bucket is fetched whole once it ended)."""
    if tf != builder.base_tf and tf not in builder.derived:
        return None
    until = builder.history_from.get(tf)
    if until is None or bars <= 0 or until > builder.hwm:
        return None
    ms = builder.base_ms if tf == builder.base_tf else builder.derived[tf]
    since = bucket_start(builder.hwm, ms) - bars * ms  # whole weeks back from a Monday stay Mondays
    return (since, until) if since < until else None


def backfill(builder: SeriesBuilder, tf: str, since: int, until: int, rows: list[Any], out: list[Emitted]) -> None:
    """Older history for ``tf`` (buckets ``since <= ts < until``, before anything published): emitted oldest
    first, with flat candles between rows when those are on; the live candles are not touched."""
    if builder.history_from.get(tf) != until:
        return  # the series moved on (restored, or another backfill) since the range was planned
    ms = builder.base_ms if tf == builder.base_tf else builder.derived[tf]
    prev: Bar | None = None
    for row in sorted(rows, key=lambda r: r[0]):
        if not since <= row[0] < until:
            continue
        if builder.flat_candles and prev is not None:
            b = prev.end
            while b < row[0]:
                out.append((tf, Bar(b, b + ms, prev.close)))
                b += ms
        prev = bar_from_history(row, ms)
        out.append((tf, prev))
    if builder.flat_candles and prev is not None:
        b = prev.end
        while b < until:
            out.append((tf, Bar(b, b + ms, prev.close)))
            b += ms
    builder.history_from[tf] = since
