"""One followed (exchange, symbol) and the small helpers around it: stream ids, candle messages, timeframe changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from services.candle_builder.core import Bar, Emitted, SeriesBuilder
from shared.partitioned import entry_id
from shared.schemas import SCHEMA_VERSION, pack

__all__ = ["Pair", "Series", "encode_candle", "entry_id", "retune", "text"]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]  # (exchange, symbol)


def encode_candle(exchange: str, symbol: str, tf: str, bar: Bar, *, closed: bool = True,
                  history: bool = False, prev_ts: int | None = None, as_of: int | None = None) -> bytes:
    """The bus message of a bar: the bytes ``Candle(...).encode()`` gives, without building the model (a closing
    batch's work is done with caches gone cold on a shared machine: pydantic's construct and dump cost ~4x this
    there). The builder's types are already the model's (``test_series_encode.py`` holds the two equal)."""
    return pack({"exchange": exchange, "symbol": symbol, "timeframe": tf, "ts": bar.ts, "open": str(bar.open),
                 "high": str(bar.high), "low": str(bar.low), "close": str(bar.close), "volume": str(bar.volume),
                 "buy_volume": str(bar.buy_volume), "sell_volume": str(bar.sell_volume),
                 "quote_volume": str(bar.quote_volume), "trades": bar.trades, "first_trade_id": bar.first_id,
                 "last_trade_id": bar.last_id, "closed": closed, "revision": max(bar.revision, 0),
                 "incomplete": bar.incomplete, "history": history, "prev_ts": prev_ts, "as_of": as_of,
                 "v": SCHEMA_VERSION,
                 "k": "candle"})


@dataclass(slots=True)
class Series:
    """One (exchange, symbol): its builder and partition."""

    exchange: str
    symbol: str
    partition: int
    builder: SeriesBuilder
    last_id: tuple[int, int] | None = None  # the last entry of the partition's trades stream applied to it
    registered: set[str] = field(default_factory=set)
    last_live: float = 0.0  # monotonic time of the last wall-time-throttled in-progress publish
    live_ts: int | None = None  # exchange time of the last exchange-time throttle point (saved with the state)
    # Redis arrival time (entry id ms) minus exchange time of the newest trade/watermark: the feed's latency when
    # live, years for a replay of a recording. Maps the wall clock to exchange time for the closing timer.
    live_offset: int | None = None
    timer_check_at: int = 0  # wall ms before which the closing timer has nothing to close here (``ClosingTimer``)
    seeded: list[Emitted] = field(default_factory=list)  # history candles to write with the first batch
    needs_seed: bool = False  # new series, history wanted, no trade seen yet
    late_logged: int = 0  # late_dropped count at the last warning
    late_logged_at: float = -1e9
    late_counted: tuple[int, int] = (0, 0)  # (late_revised, late_dropped) already in shared.metrics.LATE_TRADES
    # Candles of history per timeframe this series gets (settings.history_bars, or auto: decided once per process from
    # whether its feed is live); None until decided. Look-backs raise it per timeframe.
    history_bars: int | None = None
    backfill_retry: dict[str, float] = field(default_factory=dict)  # timeframe -> monotonic time of the next try


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def say_start(series: Series, added: set[str], history_bars: int | None) -> None:
    """Say from when a timeframe added to a running series is built, when no exchange history backfills the buckets
    before it (``history_bars`` 0: a replay, or history off): from the next whole bucket on, and the earlier ones rolled
    up from the base candles in their stream once that bucket starts (or none, if the base timeframe is not kept)."""
    if history_bars != 0:
        return  # backfilled from the exchange's history (or not decided yet)
    builder = series.builder
    for tf in sorted(added):
        start = builder.start_at.get(tf) if tf != builder.base_tf else None
        if not start:
            continue
        when = datetime.fromtimestamp(start / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if builder.emit_base:
            logger.info("candle_builder: %s %s %s added while running: built from the bucket of %s (exchange time, "
                        "ts %d) on; the earlier ones are rolled up from the %s candles in their stream once that "
                        "bucket has ended", series.exchange, series.symbol, tf, when, start, builder.base_tf)
        else:
            logger.warning("candle_builder: %s %s %s added while running: its candles start at the bucket of %s "
                           "(exchange time, ts %d); none before it (no exchange history and no %s candles kept to "
                           "roll up)", series.exchange, series.symbol, tf, when, start, builder.base_tf)


def retune(builder: SeriesBuilder, tfs: set[str]) -> None:
    """Follow a change of wanted timeframes (subscriptions) on a running builder."""
    current = set(builder.timeframes)
    for tf in tfs - current:
        try:
            builder.add_timeframe(tf)
        except ValueError as exc:
            logger.warning("candle_builder: cannot add timeframe %s: %s", tf, exc)
    for tf in current - tfs:
        builder.remove_timeframe(tf)
