"""The raw-trades channel for GUIs: the API relays a pair's trades (read from its partition's trades stream, the
partition's other pairs skipped) to ``streams.channel_trades`` while anyone listens there (PUBSUB CHANNELS),
throttled to one message per pair every ``throttle_ms`` holding every trade since the previous one (the newest
``max_trades`` of them when more came). Nobody listening costs one PUBSUB CHANNELS a second; the durable consumers of
the stream are untouched (a plain XREAD, no consumer group)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import streams
from shared.bus import FIELD, backoff_delay
from shared.bus import as_str as _s
from shared.errors import DecodeError
from shared.feed_codec import decode_feed, encode_trades
from shared.partitions import partition_of
from shared.schemas import Trade, TradeBatch

logger = logging.getLogger(__name__)
_CHANNEL_HEAD = streams.channel_trades("", "")[:-1]  # "sentinel:ch:trades:" — the pair follows


def pair_of(channel: str) -> tuple[str, str] | None:
    """(exchange, symbol) of a trades channel name, None for another name."""
    if not channel.startswith(_CHANNEL_HEAD):
        return None
    exchange, sep, symbol = channel[len(_CHANNEL_HEAD):].partition(":")
    return (exchange, symbol) if sep and exchange and symbol else None


class TradesRelay:
    def __init__(self, redis: Redis, *, partitions: int, throttle_ms: int = 100, max_trades: int = 1000,
                 discover_s: float = 1.0) -> None:
        self.redis = redis
        self.partitions = partitions
        self.throttle_s = throttle_ms / 1000
        self.max_trades = max_trades
        self.discover_s = discover_s
        self.positions: dict[str, str] = {}  # partition trades stream -> last id read
        self.pending: dict[tuple[str, str], list[Trade]] = {}  # the pairs listened to
        self.sent: dict[tuple[str, str], float] = {}
        self.published = 0  # messages

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        next_discovery = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_discovery:
                    await self._discover()
                    next_discovery = time.monotonic() + self.discover_s
                if not self.positions:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.discover_s)
                    continue
                await self._read()
                await self._flush()
                failures = 0
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                failures += 1
                if failures == 1:
                    logger.warning("trades relay: redis unavailable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff_delay(failures, base=0.2, cap=5.0))

    def _stream(self, pair: tuple[str, str]) -> str:
        return streams.part_trades(partition_of(*pair, self.partitions))

    async def _discover(self) -> None:
        listened = {pair for name in await self.redis.pubsub_channels(streams.CHANNEL_TRADES_PATTERN)
                    if (pair := pair_of(_s(name)))}
        for pair in set(self.pending) - listened:  # nobody left: stop relaying it
            self.pending.pop(pair)
        self.pending.update({pair: [] for pair in listened - set(self.pending)})
        wanted = {self._stream(pair) for pair in self.pending}
        for name in set(self.positions) - wanted:
            self.positions.pop(name)
        for name in wanted - set(self.positions):  # relay what comes after now, not the stream's past
            last = await self.redis.xrevrange(name, count=1)
            self.positions[name] = _s(last[0][0]) if last else "0-0"

    async def _read(self) -> None:
        """The partitions' trades streams of the pairs listened to; other pairs' entries are skipped."""
        wait = max(1, int(self.throttle_s * 1000))
        replies = await self.redis.xread(dict(self.positions), count=1000, block=wait)
        for name, entries in replies or []:
            name = _s(name)
            if name not in self.positions:
                continue
            for entry_id, fields in entries:
                self.positions[name] = _s(entry_id)
                try:
                    message = decode_feed(fields.get(FIELD, b""))
                except DecodeError:
                    continue
                pending = self.pending.get((message.exchange, message.symbol))
                if pending is not None and isinstance(message, TradeBatch):
                    pending.extend(message.trades)

    async def _flush(self) -> None:
        now = time.monotonic()
        for pair, trades in self.pending.items():
            if not trades or now - self.sent.get(pair, 0.0) < self.throttle_s:
                continue
            await self.redis.publish(streams.channel_trades(*pair), encode_trades(*pair, trades[-self.max_trades:]))
            self.pending[pair] = []
            self.sent[pair] = now
            self.published += 1
