"""Malformed entries written straight into the pipeline's streams, as a buggy or hostile producer would: garbage
bytes, a wrong schema version, a float price (a binary float is not the decimal an exchange sent), and an oversized
entry. Each is what the stream's readers must dead-letter without changing a candle or an alert; the harness keeps
their entry ids so the comparison can tell them from the pipeline's own entries."""

from __future__ import annotations

import os
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.bus import FIELD
from shared.schemas import SCHEMA_VERSION, pack
from shared.timeframes import bucket_start, timeframe_ms
from tests.support.chaos.layout import Layout, Pair

KINDS = ("garbage", "version", "float", "oversized")
#: Trade ids of injected trades: above any real exchange's, so a trade that got through is told by its id alone.
INJECTED_TRADE_ID = 10**15
INJECTED_ALERT_PREFIX = "chaos-injected-"


@dataclass
class Injected:
    stream: str
    entry_id: str
    stream_kind: str  # trades | tickers | candles | alerts
    kind: str  # one of KINDS
    size: int


def _trade_msg(pair: Pair, n: int, ts: int, price: object, version: int = SCHEMA_VERSION) -> dict:
    return {"v": version, "k": "trades", "x": pair.exchange, "s": pair.symbol,
            "t": [[INJECTED_TRADE_ID + n, ts, price, "1.5", 1]]}


def _ticker_msg(pair: Pair, ts: int, price: object, version: int = SCHEMA_VERSION) -> dict:
    return {"v": version, "k": "ticker", "exchange": pair.exchange, "symbol": pair.symbol, "ts": ts,
            "bid": price, "ask": price, "last": price}


def _candle_msg(pair: Pair, tf: str, ts: int, price: object, version: int = SCHEMA_VERSION) -> dict:
    return {"v": version, "k": "candle", "exchange": pair.exchange, "symbol": pair.symbol, "timeframe": tf,
            "ts": ts, "open": price, "high": price, "low": price, "close": price, "volume": "1000000",
            "buy_volume": "1000000", "sell_volume": "0", "quote_volume": "0", "trades": 1, "closed": True}


def _alert_msg(n: int, ts: int, value: object, version: int = SCHEMA_VERSION) -> dict:
    return {"v": version, "k": "alert", "id": f"{INJECTED_ALERT_PREFIX}{n}", "rule": "injected", "exchange": "chaos",
            "symbol": "CHAOS/USDT", "timeframe": "1m", "ts": ts, "fired_at": ts, "price": value, "value": value,
            "message": "an injected entry: must never be delivered", "state": "firing"}


#: The field of each stream kind's map that the oversized entry fills with megabytes of bytes (never valid there).
OVERSIZED_FIELD = {"trades": "t", "tickers": "bid", "candles": "close", "alerts": "id"}


def payloads(stream_kind: str, make, oversized_bytes: int) -> dict[str, bytes]:
    """The four malformed payloads of one stream kind; ``make(price, version)`` builds the kind's map."""
    big = make("1", SCHEMA_VERSION)
    big[OVERSIZED_FIELD[stream_kind]] = os.urandom(oversized_bytes)  # a valid head, megabytes of bytes behind it
    return {
        "garbage": b"\xc1\xff" + os.urandom(61),  # 0xc1 is never valid msgpack
        "version": pack(make("1", SCHEMA_VERSION + 98)),
        "float": pack(make(61000.5, SCHEMA_VERSION)),
        "oversized": pack(big),
    }


class Injector:
    """Writes one round of every malformed kind into every stream kind of ``layout`` (for the pairs given)."""

    def __init__(self, redis: Redis, layout: Layout, oversized_bytes: int, kinds: tuple[str, ...] = KINDS) -> None:
        self.redis = redis
        self.layout = layout
        self.oversized_bytes = oversized_bytes
        self.kinds = kinds
        self.done: list[Injected] = []
        self._n = 0

    async def _add(self, stream: str, stream_kind: str, data: dict[str, bytes]) -> None:
        for kind, raw in data.items():
            if kind not in self.kinds:
                continue
            entry_id = await self.redis.xadd(stream, {FIELD: raw})
            self.done.append(Injected(stream, entry_id.decode(), stream_kind, kind, len(raw)))

    async def round(self, pair_ts: dict[Pair, int], timeframes: dict[Pair, list[str]]) -> int:
        """Inject into each pair's trades stream, its tickers stream if it has one, one of its candles streams (at
        ``pair_ts``, the pair's exchange time now: a bar an accepted entry would change), and the alerts stream.
        Returns how many entries."""
        before = len(self.done)
        for pair, ts in pair_ts.items():
            self._n += 1
            n = self._n
            await self._add(self.layout.trades[pair], "trades",
                            payloads("trades", lambda p, v: _trade_msg(pair, n, ts, p, v), self.oversized_bytes))
            if await self.redis.exists(self.layout.tickers[pair]):  # a replayed recording has no tickers
                await self._add(self.layout.tickers[pair], "tickers",
                                payloads("tickers", lambda p, v: _ticker_msg(pair, ts, p, v), self.oversized_bytes))
            existing = [tf for tf in timeframes.get(pair, [])
                        if await self.redis.exists(self.layout.candles[(pair, tf)])]
            if existing:  # one timeframe per round, in turn
                tf = existing[n % len(existing)]
                start = bucket_start(ts, timeframe_ms(tf))
                await self._add(self.layout.candles[(pair, tf)], "candles", payloads(
                    "candles", lambda p, v: _candle_msg(pair, tf, start, p, v), self.oversized_bytes))
        self._n += 1
        n, ts = self._n, max(pair_ts.values(), default=0)
        await self._add(self.layout.alerts, "alerts",
                        payloads("alerts", lambda p, v: _alert_msg(n, ts, p, v), self.oversized_bytes))
        return len(self.done) - before
