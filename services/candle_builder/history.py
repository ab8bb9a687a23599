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

from shared.errors import DecodeError, ExchangeError
from shared.history import HistoryRow, request_history

__all__ = ["HistoryRow", "fetch"]

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
