"""Seeding a new series with OHLCV history: candle_builder's side of the contract in ``shared.history`` (message
formats and sample payloads there); market_feed in live mode answers.

The seam: the builder asks, per timeframe T, for T candles before the bucket of the first trade it builds, and for base
(1m) candles covering the part of each T bucket before that trade's base bucket; that seam bucket of every T is
rolled up from those exact 1m candles plus trades, so no bucket is missing, counted twice, or taken half from REST.
Candles without a taker split (exchanges other than Binance) are marked ``incomplete`` (``bars.bar_from_history``).
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from services.candle_builder.core import history as core_history
from services.candle_builder.series import Series, text
from services.candle_builder.settings import AUTO_HISTORY_BARS, MAX_HISTORY_BARS, Settings
from shared import streams
from shared.errors import DecodeError, ExchangeError
from shared.history import HistoryRow, request_history
from shared.timeframes import timeframe_ms

__all__ = ["HistoryRow", "Seeder", "fetch"]

logger = logging.getLogger(__name__)


async def fetch(redis: Redis, exchange: str, symbol: str, timeframe: str, since: int, until: int, *, limit: int,
                timeout_s: float) -> list[HistoryRow] | None:
    """Closed candles with ``since <= ts < until``; None (and a warning) when there is no usable reply in time."""
    if since >= until:
        return []
    try:
        reply = await request_history(redis, exchange, symbol, timeframe, since, until, limit=limit,
                                      timeout=timeout_s)
    except TimeoutError:
        logger.warning("candle_builder: no %s history for %s %s within %.1fs; starting without it", timeframe,
                       exchange, symbol, timeout_s)
        return None
    except (ExchangeError, DecodeError) as exc:
        logger.warning("candle_builder: %s history for %s %s unusable: %s", timeframe, exchange, symbol, exc)
        return None
    if not reply.complete:
        logger.warning("candle_builder: %s history for %s %s cut at %d candles", timeframe, exchange, symbol, limit)
    return reply.rows


class Seeder:
    """How many candles of history each series gets, and the seeding of a new series up to its first trade."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis

    async def seed(self, series: Series, asked: dict[str, int], first_ts: int, first_entry_ms: int) -> None:
        """A new series: ask market_feed for history up to its first trade the builder will process (at exchange
        time ``first_ts``, in a stream entry written at ``first_entry_ms``)."""
        series.needs_seed = False
        await self.decide(series, first_entry_ms - first_ts)
        bars = self.bars(series, asked)
        if not any(bars.values()):
            return
        builder = series.builder
        rows = {}
        plan = core_history.history_plan(builder, first_ts, bars)
        for tf, (since, until) in plan.items():
            ms = timeframe_ms(tf)
            rows[tf] = await fetch(self.redis, series.exchange, series.symbol, tf, since, until,
                                   limit=(until - since) // ms + 1, timeout_s=self.settings.history_timeout_s)
        core_history.seed(builder, first_ts, rows, series.seeded, plan)
        logger.info("candle_builder: %s %s seeded with %d history candles", series.exchange, series.symbol,
                    len(series.seeded))

    async def decide(self, series: Series, skew_ms: int | None) -> None:
        """Settle how many history candles ``series`` gets: ``history_bars`` when set; unset (auto), AUTO_HISTORY_BARS
        when its feed is live — market_feed's heartbeat says ``mode: live`` (only live mode serves history) and its
        trades reached Redis within ``live_max_skew_ms`` of their exchange time (``skew_ms``: a recording replayed
        through the live path is years old, and today's history would not be its past) — else none."""
        if series.history_bars is not None:
            return
        configured = self.settings.history_bars
        if configured is not None:
            series.history_bars = configured
            return
        if skew_ms is None:
            return  # not known yet (a restored series before its first batch): decided later
        mode = await self.redis.hget(streams.heartbeat("market_feed"), "mode")
        live = text(mode or b"") == "live" and abs(skew_ms) <= self.settings.live_max_skew_ms
        series.history_bars = AUTO_HISTORY_BARS if live else 0
        logger.info("candle_builder: %s %s: feed %s, %s", series.exchange, series.symbol,
                    "live" if live else f"not live (mode {text(mode or b'none')}, skew {skew_ms} ms)",
                    f"{AUTO_HISTORY_BARS} candles of history" if live else "no history")

    def bars(self, series: Series, asked: dict[str, int]) -> dict[str, int]:
        """History candles wanted per timeframe of ``series``: max(its history_bars, the look-back ``asked``), or none
        when history is off for it."""
        if not series.history_bars:  # off, or not decided yet
            return {}
        own = series.history_bars
        return {tf: min(max(own, asked.get(tf, 0)), MAX_HISTORY_BARS) for tf in series.builder.timeframes}
