"""market_feed's side of the OHLCV history contract (``shared.history``): ``HistoryServer`` answers requests from
its exchange connections in live mode.

A consumer group on ``streams.history_requests(exchange)`` of each exchange it serves, so only a feed connected to
the exchange gets its requests, several market_feed instances share them and an unanswered request is claimed by
another. Binance rows come from the raw klines (exact strings, with taker-buy volume, trade
count and quote volume); other exchanges from ccxt's ``fetch_ohlcv`` (those three columns null). A malformed request
goes to the dead-letter stream (``decode_request`` raises DecodeError).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from services.market_feed.adapters.ccxt_exchange import fetch_ohlcv_page
from shared import streams
from shared.bus import Batch, Bus, Consumer, ConsumerSettings
from shared.errors import ExchangeError
from shared.history import REPLY_TTL_S, HistoryRequest, HistoryRow, decode_request, encode_reply, request_history
from shared.timeframes import bucket_start, timeframe_ms

__all__ = ["HistoryServer", "request_history"]

logger = logging.getLogger(__name__)

PAGE = 1000


class HistoryServer:
    """Answers history requests with the given ccxt exchanges (id → instance)."""

    def __init__(self, bus: Bus, exchanges: dict[str, Any], settings: ConsumerSettings,
                 serving: list[str] | None = None) -> None:
        self.bus = bus
        self.exchanges = exchanges
        self.served = 0
        self.consumer = Consumer(bus, settings, decode=decode_request, handler=self._handle,
                                 streams=[streams.history_requests(x) for x in serving or list(exchanges)])

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.run(stop)

    async def _handle(self, batch: Batch[HistoryRequest]) -> None:
        for entry in batch.entries:
            req = entry.value
            try:
                rows, complete = await self.fetch(req.exchange, req.symbol, req.timeframe, req.since, req.until,
                                                  req.limit)
                reply = encode_reply(req.id, rows, complete=complete)
            except ExchangeError as exc:  # (the adapter translates ccxt's errors)
                reply = encode_reply(req.id, error=str(exc)[:500])
            except Exception as exc:  # a bad request must get an answer, not a retry loop
                logger.exception("history request %s failed", req.id)
                reply = encode_reply(req.id, error=f"{type(exc).__name__}: {exc}"[:500])
            async with self.bus.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(req.reply_to, reply)
                pipe.expire(req.reply_to, REPLY_TTL_S)
                await pipe.execute()
            self.served += 1

    async def fetch(self, exchange_id: str, symbol: str, timeframe: str, since: int, until: int | None,
                    limit: int) -> tuple[list[HistoryRow], bool]:
        """Closed buckets with ``since <= ts`` and ``ts + timeframe <= until`` (now if None), at most ``limit``;
        and whether that is all of them (rows are fetched until one past ``limit`` shows there are more)."""
        exchange = self.exchanges.get(exchange_id)
        if exchange is None:
            raise ExchangeError(f"exchange {exchange_id!r} is not configured in market_feed "
                                f"(configured: {', '.join(self.exchanges) or 'none'})")
        if not exchange.markets:
            raise ExchangeError(f"{exchange_id} is not reachable yet (its markets have not loaded); try again later")
        if symbol not in exchange.markets:
            raise ExchangeError(f"{symbol!r} is not listed by {exchange_id}")
        tf_ms = timeframe_ms(timeframe)
        until = until if until is not None else int(time.time() * 1000)
        rows: list[HistoryRow] = []
        low = since
        cursor = bucket_start(since, tf_ms)  # ask from a bucket start: a mid-bucket startTime could give a partial bucket
        while cursor + tf_ms <= until and len(rows) <= limit:
            page = await fetch_ohlcv_page(exchange, symbol, timeframe, cursor, PAGE)
            page = [r for r in page if r[0] >= low and r[0] + tf_ms <= until]
            if not page:
                break
            rows.extend(page)
            low = cursor = page[-1][0] + tf_ms
        return rows[:limit], len(rows) <= limit  # one more than asked for: the answer was cut short
