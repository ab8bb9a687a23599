"""Decoding what the engine reads: closed and in-progress candles, tickers, trades, book and futures updates."""

from __future__ import annotations

from typing import Any

import msgpack

from services.alert_engine.core.feeds import BookFigures
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.errors import DecodeError
from shared.feed_codec import feed_from_msg
from shared.schemas import Candle, GapMarker, Ticker, TradeBatch, Watermark, unpack, unpack_tuples

Feed = BookFigures | FundingRate | OpenInterest | Liquidation
Input = Candle | Ticker | TradeBatch | GapMarker | Watermark | Feed
_FEEDS: dict[str, Any] = {"book": BookFigures, "funding": FundingRate, "open_interest": OpenInterest,
                          "liquidation": Liquidation}

_BOOK_KIND = msgpack.packb({"k": "book"})[1:]  # the map entry "k": "book", as every book entry carries it


def decode_input(raw: bytes) -> Input:
    """Decode an entry of a candle, live-candle, ticker, trades, book or futures stream."""
    if _BOOK_KIND in raw:  # a book snapshot (~2,000/s): its levels unpacked as tuples, which the GC costs far less
        msg = unpack_tuples(raw)
        if isinstance(msg, dict) and msg.get("k") == "book":
            return BookFigures.from_msg(msg)
    msg = unpack(raw)
    kind = msg.get("k") if isinstance(msg, dict) else None
    if kind == "ticker":
        return Ticker.from_msg(msg)
    if kind in _FEEDS:
        feed: Feed = _FEEDS[kind].from_msg(msg)
        return feed
    if kind == "candle":
        return Candle.from_msg(msg)
    if kind in ("trades", "gap", "watermark"):
        return feed_from_msg(msg)
    raise DecodeError(f"expected a candle, a ticker, trades, a book or futures data, got kind {kind!r}")
