"""Candle aggregation: pure logic, no I/O, no clock (exchange timestamps are passed in).

One ``SeriesBuilder`` per (exchange, symbol) keeps a single *base* candle (1m by default, 1s when 1s is wanted) built
from trades; every other timeframe is *derived* by rolling up closed base candles, never by re-processing trades.

Closing follows exchange time. ``advance(ts)`` (called for every trade of a later bucket and for every Watermark)
closes the base bucket and every derived bucket whose end is ``<= ts``. A final watermark closes everything still
open, partial buckets included. Empty base intervals become flat candles (OHLC = previous close, volume 0) when
``flat_candles`` is on; a derived bucket is flat only when it holds no trade at all (its open is the first trade's
price, as on the exchanges, not the previous close carried by a flat minute).

Late trades (exchange time already past their bucket) within ``lateness_ms`` of the newest exchange time revise the
closed candles of every timeframe that hold them (``revision`` + 1, emitted once per batch); older ones are counted in
``late_dropped``. A ``GapMarker`` flags the candles overlapping it ``incomplete``.

A new series can be seeded from OHLCV history (``history.history_plan`` says what to ask for, ``history.seed`` takes
it): history candles before the first trade's bucket are emitted, and the bucket under way at the seam of every derived
timeframe is rolled up from exact base candles plus trades.

Arithmetic is exact: ``Decimal`` under a 60-digit context, so sums of products never round.

- ``builder``: ``SeriesBuilder``, the candles of one (exchange, symbol) from its trades;
- ``in_progress``: its candles in progress (published live);
- ``history``: history candles joining them (a new series seeded, older buckets backfilled);
- ``state``: a builder's saved state (``dump_state``, ``restore_state``), what the next owner resumes from.
"""

from __future__ import annotations

from services.candle_builder.core.builder import Bar, Emitted, SeriesBuilder, bar_from_history, base_timeframe

__all__ = ["Bar", "Emitted", "SeriesBuilder", "bar_from_history", "base_timeframe"]
