"""OHLCV history over Redis: candle_builder (or anyone) asks, market_feed answers from its exchange connections.

Request — one entry on ``streams.HISTORY_REQUESTS`` (field ``d``, msgpack)::

    {"v": 1, "k": "history", "id": "3f2c…", "x": "binance", "s": "BTC/USDT", "tf": "1m",
     "since": 1723161240000, "until": 1723161900000, "limit": 1000}        # until/limit optional

Reply — one msgpack item RPUSHed on ``streams.history_reply(id)`` (expires after ``REPLY_TTL_S``)::

    {"v": 1, "k": "history_reply", "id": "3f2c…", "error": null, "complete": true,
     "rows": [[1723161240000, "61837.63", "61850.00", "61800.01", "61820.00", "12.345"], ...]}

Rows are ``[open time ms, open, high, low, close, volume]`` as decimal strings, ascending, closed buckets only
(``ts + timeframe <= until``). Binance rows come from the raw klines (exact strings); other exchanges from ccxt's
``fetch_ohlcv``. ``error`` is a message when the request cannot be served (exchange not configured, unknown symbol,
exchange down); ``complete`` is False when ``limit`` cut the answer short.

``request_history`` is the client side; ``HistoryServer`` the market_feed side (a consumer group on the stream, so
several market_feed instances share requests and an unanswered request is claimed by another).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import ccxt
from redis.asyncio import Redis

from shared import streams
from shared.bus import FIELD, Batch, Bus, Consumer
from shared.errors import DecodeError, ExchangeError
from shared.schemas import SCHEMA_VERSION, pack, unpack
from shared.timeframes import timeframe_ms

logger = logging.getLogger(__name__)

REPLY_TTL_S = 120
PAGE = 1000


def decode_request(raw: bytes) -> dict[str, Any]:
    msg = unpack(raw)
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION or msg.get("k") != "history":
        raise DecodeError(f"not a history request: {msg!r:.200}")
    for key, kind in (("id", str), ("x", str), ("s", str), ("tf", str), ("since", int)):
        if not isinstance(msg.get(key), kind):
            raise DecodeError(f"history request field {key!r} must be {kind.__name__}, got {msg.get(key)!r}")
    return msg


async def request_history(redis: Redis, exchange: str, symbol: str, timeframe: str, since: int,
                          until: int | None = None, limit: int = 5000, timeout: float = 30.0
                          ) -> list[tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]]:
    """Ask market_feed for closed OHLCV buckets; ExchangeError if it answers with an error, TimeoutError if none."""
    request_id = uuid.uuid4().hex
    body = {"v": SCHEMA_VERSION, "k": "history", "id": request_id, "x": exchange, "s": symbol, "tf": timeframe,
            "since": since, "until": until, "limit": limit}
    await redis.xadd(streams.HISTORY_REQUESTS, {FIELD: pack(body)}, maxlen=10_000, approximate=True)
    got = await redis.blpop([streams.history_reply(request_id)], timeout=timeout)
    if got is None:
        raise TimeoutError(f"no history reply for {exchange} {symbol} {timeframe} within {timeout:.0f}s "
                           f"(is market_feed running in live mode?)")
    reply = unpack(got[1])
    if reply.get("error"):
        raise ExchangeError(f"history {exchange} {symbol} {timeframe}: {reply['error']}")
    return [(int(r[0]), *(Decimal(x) for x in r[1:6])) for r in reply["rows"]]  # type: ignore[misc]


class HistoryServer:
    """Answers history requests with the given ccxt exchanges (id → instance)."""

    def __init__(self, bus: Bus, exchanges: dict[str, Any], consumer: str) -> None:
        self.bus = bus
        self.exchanges = exchanges
        self.served = 0
        self.consumer = Consumer(bus, group=streams.GROUP_MARKET_FEED, consumer=consumer, decode=decode_request,
                                 handler=self._handle, streams=[streams.HISTORY_REQUESTS], count=10)

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.run(stop)

    async def _handle(self, batch: Batch[dict[str, Any]]) -> None:
        for entry in batch.entries:
            req = entry.value
            reply: dict[str, Any] = {"v": SCHEMA_VERSION, "k": "history_reply", "id": req["id"], "error": None,
                                     "complete": True, "rows": []}
            try:
                rows, complete = await self.fetch(req["x"], req["s"], req["tf"], req["since"], req.get("until"),
                                                  int(req.get("limit") or 5000))
                reply.update(rows=rows, complete=complete)
            except (ExchangeError, ccxt.BaseError) as exc:
                reply["error"] = str(exc)[:500]
            except Exception as exc:  # a bad request must get an answer, not a retry loop
                logger.exception("history request %s failed", req["id"])
                reply["error"] = f"{type(exc).__name__}: {exc}"[:500]
            key = streams.history_reply(req["id"])
            async with self.bus.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, pack(reply))
                pipe.expire(key, REPLY_TTL_S)
                await pipe.execute()
            self.served += 1

    async def fetch(self, exchange_id: str, symbol: str, timeframe: str, since: int, until: int | None,
                    limit: int) -> tuple[list[list[Any]], bool]:
        exchange = self.exchanges.get(exchange_id)
        if exchange is None:
            raise ExchangeError(f"exchange {exchange_id!r} is not configured in market_feed "
                                f"(configured: {', '.join(self.exchanges) or 'none'})")
        if symbol not in exchange.markets:
            raise ExchangeError(f"{symbol!r} is not listed by {exchange_id}")
        tf_ms = timeframe_ms(timeframe)
        until = until if until is not None else int(time.time() * 1000)
        rows: list[list[Any]] = []
        cursor = since - since % tf_ms
        while cursor + tf_ms <= until and len(rows) < limit:
            page = await self._page(exchange, symbol, timeframe, cursor)
            page = [r for r in page if r[0] >= cursor and r[0] + tf_ms <= until]
            if not page:
                break
            rows.extend(page)
            cursor = page[-1][0] + tf_ms
        truncated = len(rows) >= limit and cursor + tf_ms <= until
        return rows[:limit], not truncated

    async def _page(self, exchange: Any, symbol: str, timeframe: str, since: int) -> list[list[Any]]:
        if exchange.id in ("binance", "binanceus"):
            raw = await exchange.publicGetKlines({"symbol": exchange.market_id(symbol), "interval": timeframe,
                                                  "startTime": since, "limit": PAGE})
            return [[int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5])] for r in raw]
        raw = await exchange.fetch_ohlcv(symbol, timeframe, since, PAGE)
        return [[int(r[0]), *(repr(x) if isinstance(x, float) else str(x) for x in r[1:6])] for r in raw]
