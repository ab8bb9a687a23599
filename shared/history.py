"""OHLCV history over Redis: the one request/reply contract between whoever asks (candle_builder seeding a new series)
and market_feed, which owns the exchange connections and answers in live mode (schema version 1).

Request — one entry on ``streams.history_requests(exchange)`` whose field ``d`` is msgpack::

    {"v": 1, "k": "history_request", "id": "3f2c…", "x": "binance", "s": "BTC/USDT", "tf": "1m",
     "since": 1723161000000, "until": 1723161720000, "limit": 1000,
     "reply_to": "sentinel:history:reply:3f2c…"}

    Closed buckets with ``since <= ts`` and ``ts + timeframe <= until`` (bucket starts, ms UTC), oldest first, at most
    ``limit``. ``until`` null means "now". When ``until`` is a bucket start (as candle_builder asks) this is simply
    ``since <= ts < until``. ``reply_to`` is always ``streams.history_reply(id)`` (checked: a request cannot make
    market_feed write to another key).

Reply — one msgpack value RPUSHed onto ``reply_to`` (a list with a TTL of ``REPLY_TTL_S``), which the asker BLPOPs::

    {"v": 1, "k": "history_reply", "id": "3f2c…", "ok": true, "error": null, "complete": true,
     "candles": [[1723161000000, "61837.63", "61850.00", "61800.01", "61820.00", "12.345",
                  "7.001", 412, "763412.99811"], ...]}

    A candle is ``[ts, open, high, low, close, volume, buy_volume | null, trades | null, quote_volume | null]``;
    decimals as strings (exact). Binance klines carry them all: quote volume (kline index 7), trade count (8) and
    taker-buy base volume (9). Exchanges served through ccxt's ``fetch_ohlcv`` send null for the last three, and
    candle_builder marks such candles ``incomplete`` (no taker split for CVD). ``ok: false`` with ``error`` when the
    request cannot be served (exchange not configured, unknown symbol, exchange down); ``complete: false`` when
    ``limit`` cut the answer short.

``request_history`` is the asking side; market_feed's ``HistoryServer`` answers with ``decode_request`` /
``encode_reply`` and builds rows with ``kline_row`` / ``ohlcv_row``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.asyncio import Redis

from shared import streams
from shared.bus import FIELD
from shared.errors import DecodeError, ExchangeError
from shared.schemas import SCHEMA_VERSION, pack, unpack
from shared.timeframes import timeframe_ms

__all__ = ["KIND_REPLY", "KIND_REQUEST", "MAX_HISTORY_BARS", "REPLY_TTL_S", "HistoryReply", "HistoryRequest",
           "HistoryRow", "decode_reply", "decode_request", "encode_reply", "encode_request", "kline_row", "ohlcv_row",
           "request_history"]

KIND_REQUEST = "history_request"
KIND_REPLY = "history_reply"
#: Seconds a reply list lives if nobody pops it (the asker timed out).
REPLY_TTL_S = 120
#: Most closed candles of history asked for one timeframe: candle_builder's ``history_bars`` bound, and the cap a
#: subscriber puts on its look-back (``shared.subscriptions``) (a 1d anchor on 1s candles would otherwise ask for 86,400).
MAX_HISTORY_BARS = 5_000

#: One candle: (ts, open, high, low, close, volume, buy_volume | None, trades | None, quote_volume | None).
HistoryRow = tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal | None, int | None, Decimal | None]


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    id: str
    exchange: str
    symbol: str
    timeframe: str
    since: int
    until: int | None
    limit: int

    @property
    def reply_to(self) -> str:
        return streams.history_reply(self.id)


@dataclass(frozen=True, slots=True)
class HistoryReply:
    id: str
    ok: bool
    error: str | None
    complete: bool
    rows: list[HistoryRow]


def encode_request(request_id: str, exchange: str, symbol: str, timeframe: str, since: int, until: int | None = None,
                   limit: int = 5000) -> bytes:
    return pack({"v": SCHEMA_VERSION, "k": KIND_REQUEST, "id": request_id, "x": exchange, "s": symbol,
                 "tf": timeframe, "since": since, "until": until, "limit": limit,
                 "reply_to": streams.history_reply(request_id)})


def _field(msg: dict[str, Any], key: str, kind: type, what: str, optional: bool = False) -> Any:
    value = msg.get(key)
    if value is None and optional:
        return None
    if type(value) is not kind:  # type(): a bool is not an int here
        raise DecodeError(f"{what} field {key!r} must be {kind.__name__}, got {value!r:.100}")
    return value


def decode_request(raw: bytes) -> HistoryRequest:
    """A request from its msgpack bytes; DecodeError naming the field when malformed."""
    msg = unpack(raw)
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION or msg.get("k") != KIND_REQUEST:
        raise DecodeError(f"not a history request: {msg!r:.200}")
    what = "history request"
    request_id = _field(msg, "id", str, what)
    timeframe = _field(msg, "tf", str, what)
    try:
        timeframe_ms(timeframe)
    except Exception as exc:
        raise DecodeError(f"{what} field 'tf': {exc}") from exc
    limit = _field(msg, "limit", int, what, optional=True)
    if limit is not None and limit <= 0:
        raise DecodeError(f"{what} field 'limit' must be positive, got {limit}")
    reply_to = msg.get("reply_to")
    if reply_to is not None and reply_to != streams.history_reply(request_id):
        raise DecodeError(f"{what} field 'reply_to' must be {streams.history_reply(request_id)!r}, got {reply_to!r:.100}")
    return HistoryRequest(request_id, _field(msg, "x", str, what), _field(msg, "s", str, what), timeframe,
                          _field(msg, "since", int, what), _field(msg, "until", int, what, optional=True),
                          5000 if limit is None else limit)


def encode_reply(request_id: str, rows: Iterable[Sequence[Any]] | None = None, *, error: str | None = None,
                 complete: bool = True) -> bytes:
    """What market_feed pushes back: ``rows`` as HistoryRow-like sequences (decimals may be Decimal or str)."""
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    candles = [[int(r[0]), *(str(x) for x in r[1:6]), text(r[6]), None if r[7] is None else int(r[7]), text(r[8])]
               for r in rows or ()] if error is None else []
    return pack({"v": SCHEMA_VERSION, "k": KIND_REPLY, "id": request_id, "ok": error is None, "error": error,
                 "complete": complete if error is None else False, "candles": candles})


def _decimal(value: Any, n: int, name: str, optional: bool = False) -> Decimal | None:
    if value is None and optional:
        return None
    if type(value) is not str:
        raise DecodeError(f"history reply candle {n}: {name} must be a decimal string, got {value!r:.50}")
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise DecodeError(f"history reply candle {n}: {name} {value!r:.50} is not a decimal") from None
    if not d.is_finite():
        raise DecodeError(f"history reply candle {n}: {name} {value!r:.50} is not finite")
    return d


_NAMES = ("open", "high", "low", "close", "volume")


def decode_reply(raw: bytes) -> HistoryReply:
    """A reply from its msgpack bytes; DecodeError naming the candle and column when malformed."""
    msg = unpack(raw)
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION or msg.get("k") != KIND_REPLY:
        raise DecodeError(f"not a history reply: {msg!r:.200}")
    ok = _field(msg, "ok", bool, "history reply")
    error = msg.get("error")
    if not ok:
        return HistoryReply(str(msg.get("id")), False, str(error or "unknown error"), False, [])
    candles = msg.get("candles")
    if not isinstance(candles, list):
        raise DecodeError(f"history reply field 'candles' must be a list, got {candles!r:.100}")
    rows: list[HistoryRow] = []
    for n, candle in enumerate(candles):
        if not isinstance(candle, list) or len(candle) != 9:
            raise DecodeError(f"history reply candle {n}: expected 9 columns, got {candle!r:.200}")
        ts, trades = candle[0], candle[7]
        if type(ts) is not int:
            raise DecodeError(f"history reply candle {n}: ts must be an integer, got {ts!r:.50}")
        if trades is not None and (type(trades) is not int or trades < 0):
            raise DecodeError(f"history reply candle {n}: trades must be a count or null, got {trades!r:.50}")
        o, h, lo, c, v = (_decimal(x, n, name) for x, name in zip(candle[1:6], _NAMES))
        rows.append((ts, o, h, lo, c, v, _decimal(candle[6], n, "buy_volume", True), trades,  # type: ignore[arg-type]
                     _decimal(candle[8], n, "quote_volume", True)))
    return HistoryReply(str(msg.get("id")), True, None, bool(msg.get("complete", True)), rows)


def kline_row(kline: Sequence[Any]) -> HistoryRow:
    """A row from a raw Binance kline (strings kept exact)::

        [1723161000000, "61837.63", "61850.00", "61800.01", "61820.00", "12.345", 1723161059999, "763412.99811",
         412, "7.001", "432882.1", "0"]
        # open time, o, h, l, c, volume, close time, quote volume, trades, taker-buy base, taker-buy quote, ignore
    """
    return (int(kline[0]), Decimal(str(kline[1])), Decimal(str(kline[2])), Decimal(str(kline[3])),
            Decimal(str(kline[4])), Decimal(str(kline[5])), Decimal(str(kline[9])), int(kline[8]),
            Decimal(str(kline[7])))


def ohlcv_row(ohlcv: Sequence[Any]) -> HistoryRow:
    """A row from a ccxt ``fetch_ohlcv`` row ``[ts, o, h, l, c, v]`` (floats via repr: shortest exact text)."""
    o, h, lo, c, v = (Decimal(repr(x) if isinstance(x, float) else str(x)) for x in ohlcv[1:6])
    return (int(ohlcv[0]), o, h, lo, c, v, None, None, None)


async def request_history(redis: Redis, exchange: str, symbol: str, timeframe: str, since: int,
                          until: int | None = None, limit: int = 5000, timeout: float = 30.0) -> HistoryReply:
    """Ask market_feed for closed OHLCV buckets and wait for the answer.

    ExchangeError if it answers with an error, TimeoutError if it does not answer in time, DecodeError if the reply
    is malformed.
    """
    request_id = uuid.uuid4().hex
    await redis.xadd(streams.history_requests(exchange),
                     {FIELD: encode_request(request_id, exchange, symbol, timeframe, since, until, limit)},
                     maxlen=10_000, approximate=True)
    got: Any = await redis.blpop([streams.history_reply(request_id)], timeout=timeout)
    if got is None:
        raise TimeoutError(f"no history reply for {exchange} {symbol} {timeframe} within {timeout:g}s "
                           f"(is a market_feed serving {exchange} in live mode?)")
    reply = decode_reply(got[1])
    if not reply.ok:
        raise ExchangeError(f"history {exchange} {symbol} {timeframe}: {reply.error}")
    return reply
