"""Seeding a new series with OHLCV history: the request/reply messages candle_builder exchanges with market_feed.

market_feed owns the exchange connections, so it serves the REST history. The contract (schema version 1):

Request: an entry on ``streams.HISTORY_REQUESTS`` whose field ``d`` is msgpack::

    {"v": 1, "k": "history_request", "id": "<uuid hex>", "x": "binance", "s": "BTC/USDT", "tf": "1m",
     "since": 1723161000000, "until": 1723161720000, "limit": 1000, "reply_to": "sentinel:history:reply:<id>"}

    Closed candles with ``since <= ts < until`` (bucket starts, ms UTC), oldest first, at most ``limit``.

Reply: one msgpack value RPUSHed onto ``reply_to`` (a list; give it a TTL, e.g. 60 s), which the builder BLPOPs::

    {"v": 1, "k": "history_reply", "id": "<same id>", "ok": true, "error": null,
     "candles": [[ts, "open", "high", "low", "close", "volume", "buy_volume" | null, trades | null,
                  "quote_volume" | null], ...]}

    Decimals as strings. Binance klines carry taker-buy volume, trade count and quote volume; where an exchange does
    not, send null: the builder then marks those candles ``incomplete`` (no taker split for CVD). ``ok: false`` with
    ``error`` when the exchange failed; the builder then starts without history.

The seam: the builder asks, per timeframe T, for T candles before the bucket of the first trade it builds, and for base
(1m) candles covering the part of each T bucket before that trade's base bucket; that seam bucket of every T is
rolled up from those exact 1m candles plus trades, so no bucket is missing, counted twice, or taken half from REST.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal

from redis.asyncio import Redis

from shared import streams
from shared.bus import FIELD
from shared.errors import DecodeError
from shared.schemas import SCHEMA_VERSION, pack, unpack

logger = logging.getLogger(__name__)

#: One candle of a reply: (ts, open, high, low, close, volume, buy_volume | None, trades | None, quote_volume | None).
HistoryRow = tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal | None, int | None, Decimal | None]


def encode_request(request_id: str, exchange: str, symbol: str, timeframe: str, since: int, until: int,
                   limit: int) -> bytes:
    return pack({"v": SCHEMA_VERSION, "k": "history_request", "id": request_id, "x": exchange, "s": symbol,
                 "tf": timeframe, "since": since, "until": until, "limit": limit,
                 "reply_to": streams.history_reply(request_id)})


def decode_request(raw: bytes) -> dict:
    msg = unpack(raw)
    if not isinstance(msg, dict) or msg.get("k") != "history_request" or msg.get("v") != SCHEMA_VERSION:
        raise DecodeError(f"not a history request: {msg!r:.200}")
    return msg


def encode_reply(request_id: str, rows: list[tuple] | None, error: str | None = None) -> bytes:
    """What market_feed pushes back (``rows`` as HistoryRow-like tuples; None with ``error`` on failure)."""
    def text(value):
        return None if value is None else str(value)

    candles = [[r[0], *(str(x) for x in r[1:6]), text(r[6]), r[7], text(r[8])] for r in rows or []]
    return pack({"v": SCHEMA_VERSION, "k": "history_reply", "id": request_id, "ok": error is None,
                 "error": error, "candles": candles})


def decode_reply(raw: bytes) -> list[HistoryRow]:
    """Rows of a reply; DecodeError if malformed or if market_feed reported a failure."""
    msg = unpack(raw)
    if not isinstance(msg, dict) or msg.get("k") != "history_reply" or msg.get("v") != SCHEMA_VERSION:
        raise DecodeError(f"not a history reply: {msg!r:.200}")
    if not msg.get("ok"):
        raise DecodeError(f"history request failed: {msg.get('error')}")
    rows: list[HistoryRow] = []
    try:
        for n, (ts, o, h, lo, c, v, buy, trades, quote) in enumerate(msg.get("candles") or []):
            if type(ts) is not int:
                raise TypeError(f"candle {n}: ts must be an integer")
            rows.append((ts, Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v),
                         None if buy is None else Decimal(buy), trades,
                         None if quote is None else Decimal(quote)))
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise DecodeError(f"malformed history reply: {exc}") from exc
    return rows


async def fetch(redis: Redis, exchange: str, symbol: str, timeframe: str, since: int, until: int, *, limit: int,
                timeout_s: float) -> list[HistoryRow] | None:
    """Ask market_feed for history and wait for the reply; None (and a warning) when there is none in time."""
    if since >= until:
        return []
    request_id = uuid.uuid4().hex
    await redis.xadd(streams.HISTORY_REQUESTS, {FIELD: encode_request(request_id, exchange, symbol, timeframe,
                                                                      since, until, limit)},
                     maxlen=10_000, approximate=True)
    reply = await redis.blpop([streams.history_reply(request_id)], timeout=timeout_s)
    if reply is None:
        logger.warning("candle_builder: no %s history for %s %s within %.1fs; starting without it", timeframe,
                       exchange, symbol, timeout_s)
        return None
    try:
        return decode_reply(reply[1])
    except DecodeError as exc:
        logger.warning("candle_builder: %s history for %s %s unusable: %s", timeframe, exchange, symbol, exc)
        return None
