"""Writing market_feed's messages to Redis: trades streams (with the feed's resume state), tickers."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from shared import streams
from shared.bus import Bus
from shared.schemas import GapMarker, Ticker, TradeBatch, Watermark, encode_gap, encode_trades, encode_watermark

TICKER_MAXLEN = 10_000


async def read_last_ids(redis: Redis, exchange: str, symbols: list[str]) -> dict[str, int | None]:
    """Last trade id market_feed published per symbol (restart safety), from ``streams.feed_state``."""
    out: dict[str, int | None] = {}
    for symbol in symbols:
        raw = await redis.hget(streams.feed_state(exchange, symbol), "last_id")
        out[symbol] = int(raw) if raw is not None and raw.lstrip(b"-").isdigit() else None
    return out


class Outbox:
    """Encodes core events and writes them in pipelined round trips, with the feed state in the same pipeline."""

    def __init__(self, bus: Bus, exchange: str, *, maxlen: int, pipeline_entries: int) -> None:
        self.bus = bus
        self.exchange = exchange
        self.maxlen = maxlen
        self.pipeline_entries = pipeline_entries
        self._entries: list[tuple[str, bytes, int]] = []  # stream, data, maxlen
        self._channels: list[tuple[str, bytes]] = []
        self._state: dict[str, tuple[int | str | None, int]] = {}
        self._pending_trades = 0
        self.trades_published = 0
        self.entries_published = 0
        self.watermarks = 0
        self.tickers = 0
        self.gaps = 0

    def add(self, event: TradeBatch | Watermark | GapMarker) -> None:
        if isinstance(event, GapMarker):
            self._entries.append((streams.trades(self.exchange, event.symbol), encode_gap(event), self.maxlen))
            self.gaps += 1
        elif isinstance(event, TradeBatch):
            self._entries.append((streams.trades(self.exchange, event.symbol),
                                  encode_trades(self.exchange, event.symbol, event.trades), self.maxlen))
            last = event.trades[-1]
            self._state[event.symbol] = (last.id, last.ts)
            self._pending_trades += len(event.trades)
        else:
            self._entries.append((streams.trades(self.exchange, event.symbol), encode_watermark(event), self.maxlen))
            self.watermarks += 1

    def add_ticker(self, ticker: Ticker) -> None:
        data = ticker.encode()
        self._entries.append((streams.tickers(ticker.exchange, ticker.symbol), data, TICKER_MAXLEN))
        self._channels.append((streams.channel_tickers(ticker.exchange, ticker.symbol), data))
        self.tickers += 1

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.pipeline_entries

    async def flush(self) -> None:
        """Write what is queued in one pipelined round trip (shielded: a cancelled caller cannot leave it half-sent
        and re-send it later; the resume state travels in the same pipeline as the trades it describes)."""
        if not self._entries and not self._channels:
            return
        entries, channels, state, n = self._entries, self._channels, self._state, self._pending_trades
        self._entries, self._channels, self._state, self._pending_trades = [], [], {}, 0
        await asyncio.shield(self._write(entries, channels, state))
        self.entries_published += len(entries)
        self.trades_published += n

    async def _write(self, entries: list[tuple[str, bytes, int]], channels: list[tuple[str, bytes]],
                     state: dict[str, tuple[int | str | None, int]]) -> None:
        async with self.bus.pipeline() as pipe:
            for stream, data, maxlen in entries:
                self.bus.add_to(pipe, stream, data, maxlen=maxlen)
            for channel, data in channels:
                pipe.publish(channel, data)
            for symbol, (last_id, last_ts) in state.items():
                mapping: dict[str, Any] = {"last_ts": last_ts}
                if isinstance(last_id, int):
                    mapping["last_id"] = last_id
                pipe.hset(streams.feed_state(self.exchange, symbol), mapping=mapping)
            await pipe.execute()
