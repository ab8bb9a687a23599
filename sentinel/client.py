"""A small async client for GUIs (trade_suite) and terminal views: live data from Redis pub/sub, history from the API.

::

    async with SentinelClient(redis_url, api_url="http://127.0.0.1:8000", token=None) as client:
        history = await client.candles("binance", "BTC/USDT", "1m", limit=300)
        async for event in client.subscribe(series=[("binance", "BTC/USDT", "1m")], alerts=True):
            if event.kind == "candle_live": ...          # event.value is a shared.schemas.Candle
            elif event.kind == "alert": ...              # an Alert
            elif event.kind == "reconnected": ...        # messages may have been missed: refetch history

Channels and payloads: docs/channels.md. ``TaskManager``, ``SignalEmitter`` and ``Signals`` (``sentinel.trade_suite``,
importable from here) give the same data the shape trade_suite's widgets expect. The subscription survives Redis restarts on its own (capped exponential
backoff with jitter), and says so with a ``reconnected`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from redis import exceptions as redis_errors

from shared import streams
from shared.book_messages import BookSnapshot
from shared.bus import backoff_delay
from shared.derivs_messages import DerivsMessage, decode_derivs
from shared.errors import DecodeError, SentinelError
from shared.feed_codec import decode_feed
from shared.runtime import connect
from shared.schemas import Alert, Candle, Ticker, TradeBatch, live_channels
from shared.subscriptions import HeldSeries

logger = logging.getLogger(__name__)

Series = tuple[str, str, str]  # exchange, symbol, timeframe


class ClientError(SentinelError):
    """The API refused or failed a request (``status`` is the HTTP status, 0 when unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Event:
    """One live message: ``kind`` is candle, candle_live, ticker, alert, trades (a ``TradeBatch``), book (a
    ``BookSnapshot``), derivs (``FundingRate``, ``OpenInterest`` or ``Liquidation``), or reconnected (value None)."""

    kind: str
    value: Candle | Alert | Ticker | TradeBatch | BookSnapshot | DerivsMessage | None
    channel: str = ""


class SentinelClient:
    """Live series and alerts over Redis pub/sub; history, rule states and rules through the REST API."""

    def __init__(self, redis_url: str, api_url: str | None = None, token: str | None = None, *,
                 timeout: float = 10.0, max_backoff: float = 5.0) -> None:
        self.redis_url = redis_url
        self.api_url = api_url
        self.max_backoff = max_backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout) if api_url else None
        self.reconnects = 0

    async def __aenter__(self) -> SentinelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # ---- live ------------------------------------------------------------------------------------------------------

    async def subscribe(self, *, series: Iterable[Series] = (), alerts: bool = True,
                        tickers: Iterable[tuple[str, str]] = (), trades: Iterable[tuple[str, str]] = (),
                        books: Iterable[tuple[str, str]] = (), derivs: Iterable[tuple[str, str]] = (),
                        hold_subscription: bool = True,
                        subscribed: asyncio.Event | None = None) -> AsyncIterator[Event]:
        """Typed live events until the caller stops iterating. Reconnects by itself; never raises on Redis loss.

        ``hold_subscription`` subscribes to the series for candle_builder (so it makes them, as a
        ``shared.subscriptions.HeldSeries`` of this iteration) while the iteration runs. ``subscribed`` is set once the channels are subscribed (each time after a
        reconnect): fetch history after that, so nothing published in between is missed.
        """
        series = list(series)
        channels: dict[str, tuple[str, Any]] = dict(live_channels(alerts, series, tickers))
        for exchange, symbol in trades:  # the API's throttled relay of the trades streams
            channels[streams.channel_trades(exchange, symbol)] = ("trades", TradesDecoder)
        for exchange, symbol in books:  # market_feed's book snapshots of a pair
            channels[streams.channel_books(exchange, symbol)] = ("book", BookSnapshot)
        for exchange, symbol in derivs:  # a perpetual's funding, open interest and liquidations
            channels[streams.channel_derivs(exchange, symbol)] = ("derivs", DerivsDecoder)
        if not channels:
            raise ValueError("nothing to subscribe to")
        wanted = series if hold_subscription else []
        failures = 0
        first = True
        while True:
            redis = connect(self.redis_url)
            pubsub = redis.pubsub()
            held = HeldSeries(redis, kind="client")
            try:
                await pubsub.subscribe(*channels)
                if wanted:
                    await held.hold(wanted)
                if subscribed is not None:
                    subscribed.set()
                if not first:
                    self.reconnects += 1
                    yield Event("reconnected", None)
                first, failures = False, 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    event = _decode(message, channels)
                    if event is not None:
                        yield event
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.1, cap=self.max_backoff)
                logger.warning("sentinel client: redis lost (%s); reconnecting in %.2fs", exc, delay)
                held.counts.clear()  # the server is gone: what was held there expires with its TTL
                await asyncio.sleep(delay)
            finally:
                await _close(redis, pubsub, held)

    # ---- REST ------------------------------------------------------------------------------------------------------

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        if self._http is None:
            raise ClientError("no api_url given: history and rule states come from the API")
        try:
            response = await self._http.get(path, params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.HTTPError as exc:
            raise ClientError(f"API unreachable at {self.api_url}: {exc}") from exc
        if response.status_code >= 400:
            raise ClientError(f"GET {path}: {response.status_code} {response.text[:300]}", response.status_code)
        return response.json()

    async def candles(self, exchange: str, symbol: str, timeframe: str, *, limit: int = 500,
                      since: int | None = None, live: bool = False) -> list[Candle]:
        """Closed candles ascending (plus the in-progress one last when ``live``)."""
        body = await self._get(f"/candles/{quote(exchange, safe='')}/{quote(symbol, safe='')}/{timeframe}",
                               {"limit": limit, "since": since, "live": str(live).lower()})
        out = [Candle.model_validate(c) for c in body["candles"]]
        if body.get("live"):
            out.append(Candle.model_validate(body["live"]))
        return out

    async def alert_history(self, *, rule: str | None = None, symbol: str | None = None, start: int | None = None,
                            end: int | None = None, limit: int = 100) -> list[Alert]:
        """Up to ``limit`` alerts, newest first, following the API's cursor."""
        out: list[Alert] = []
        cursor = None
        while len(out) < limit:
            body = await self._get("/alerts/history", {"rule": rule, "symbol": symbol, "start": start, "end": end,
                                                       "cursor": cursor, "limit": min(1000, limit - len(out))})
            out += [Alert.model_validate(item["alert"]) for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        return out

    async def rule_states(self) -> list[dict[str, Any]]:
        return (await self._get("/alerts"))["rules"]

    async def pipeline_status(self) -> dict[str, Any]:
        """``GET /status``: the pipeline's figures summed over live replicas (the counters Prometheus scrapes)."""
        return dict(await self._get("/status"))

    async def ticker(self, exchange: str, symbol: str) -> Ticker | None:
        body = await self._get(f"/ticker/{quote(exchange, safe='')}/{quote(symbol, safe='')}")
        return Ticker.model_validate(body["ticker"]) if body["ticker"] else None


class DerivsDecoder:
    """A perpetual's channel: FundingRate, OpenInterest or Liquidation."""

    decode = staticmethod(decode_derivs)


class TradesDecoder:
    """The trades channel's payload (the trades stream's own encoding) as a ``TradeBatch``."""

    @staticmethod
    def decode(raw: bytes) -> TradeBatch:
        batch = decode_feed(raw)
        if not isinstance(batch, TradeBatch):
            raise DecodeError("not a trades batch")
        return batch


def _decode(message: dict, channels: dict[str, tuple]) -> Event | None:
    channel = message["channel"]
    channel = channel.decode() if isinstance(channel, bytes) else channel
    kind, schema = channels.get(channel, (None, None))
    if schema is None:
        return None
    try:
        return Event(kind, schema.decode(message["data"]), channel)
    except DecodeError as exc:
        logger.warning("sentinel client: undecodable message on %s: %s", channel, exc)
        return None


async def _close(redis, pubsub, held: HeldSeries) -> None:
    with contextlib.suppress(Exception):
        await held.close()
    with contextlib.suppress(Exception):
        await pubsub.aclose()
    with contextlib.suppress(Exception):
        await redis.aclose()


def embedded_redis_url(data_dir: str | None = None) -> str | None:
    """The Redis of a ``sentinel up`` running on its embedded redis-server (``SENTINEL_DATA_DIR``, default
    ``.sentinel``), or None."""
    import os
    from pathlib import Path

    from shared.embedded_redis import running_url

    return running_url(Path(data_dir or os.environ.get("SENTINEL_DATA_DIR", ".sentinel")) / "redis")


def __getattr__(name: str) -> Any:
    """``from sentinel.client import TaskManager`` (trade_suite's shape, in ``sentinel.trade_suite``)."""
    if name in ("TaskManager", "SignalEmitter", "Signals", "candles_frame"):
        from sentinel import trade_suite

        return getattr(trade_suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
