"""``/ws``: a WebSocket streaming alerts, candle updates and tickers from the Redis pub/sub channels as JSON.

Subscribe with query parameters (browsers cannot set headers on a WebSocket, so the token may come as ``token=``)::

    /ws?alerts=true&series=binance|BTC/USDT|1m&series=binance|ETH/USDT|5m&tickers=binance|BTC/USDT&token=...
       &books=binance|BTC/USDT&derivs=binanceusdm|BTC/USDT:USDT

Each message is ``{"type": "alert" | "candle" | "candle_live" | "ticker" | "book" | "funding" | "open_interest" |
"liquidation", "data": {...}}`` with decimals as strings (``books``: the pair's book snapshots; ``derivs``: a
perpetual's funding, open interest and liquidations, ``services/api/books_api.py``).
While a socket watches a series the API holds it (``shared.subscriptions.HeldSeries``) so candle_builder makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from redis.asyncio import Redis

from shared import streams
from shared.book_messages import BookSnapshot
from shared.derivs_messages import decode_derivs
from shared.errors import DecodeError
from shared.schemas import live_channels
from shared.subscriptions import HeldSeries

logger = logging.getLogger(__name__)


def parse_series(values: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for value in values:
        parts = value.split(streams.REGISTRY_SEP)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"series {value!r}: expected exchange|symbol|timeframe")
        exchange, symbol, timeframe = parts
        out.append((exchange, symbol if "/" in symbol else symbol.replace("-", "/", 1), timeframe))
    return out


def parse_pairs(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        parts = value.split(streams.REGISTRY_SEP)
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"tickers {value!r}: expected exchange|symbol")
        out.append((parts[0], parts[1] if "/" in parts[1] else parts[1].replace("-", "/", 1)))
    return out


def mount(app: FastAPI, settings, redis: Redis, access) -> HeldSeries:
    """Serve ``/ws``; returns the series its sockets hold (``close()`` it when the API stops)."""
    held = HeldSeries(redis, kind="api")

    @app.websocket("/ws")
    async def live(websocket: WebSocket) -> None:
        params = websocket.query_params
        header = websocket.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else params.get("token")
        if access.level(token) is None:
            await websocket.close(code=1008, reason="missing or invalid bearer token")
            return
        try:
            series = parse_series(params.getlist("series"))
            tickers = parse_pairs(params.getlist("tickers"))
            books = parse_pairs(params.getlist("books"))
            derivs = parse_pairs(params.getlist("derivs"))
        except ValueError as exc:
            await websocket.close(code=1003, reason=str(exc)[:120])
            return
        alerts = params.get("alerts", "true").lower() not in ("0", "false", "no")
        channels: dict[str, tuple[str | None, Any]] = {**live_channels(alerts, series, tickers)}
        channels.update({streams.channel_books(ex, sym): ("book", BookSnapshot) for ex, sym in books})
        channels.update({streams.channel_derivs(ex, sym): (None, _Derivs) for ex, sym in derivs})
        await websocket.accept()
        if not channels:
            await websocket.close(code=1000, reason="nothing subscribed")
            return
        pubsub = redis.pubsub()
        holding = False
        try:
            if series:
                await held.hold(series)
                holding = True
            await pubsub.subscribe(*channels)
            await websocket.send_json({"type": "subscribed", "data": {"channels": sorted(channels)}})
            await _pump(websocket, pubsub, channels)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            if holding:
                with contextlib.suppress(Exception):
                    await held.release(series)

    return held


class _Derivs:
    """A perpetual's channel carries three kinds of message, decoded by their ``k`` (the socket's type is it)."""

    decode = staticmethod(decode_derivs)


async def _pump(websocket: WebSocket, pubsub, channels: dict[str, tuple[str | None, Any]]) -> None:
    """Forward pub/sub messages until the client goes away (a kind of None: the message's own)."""
    async def receive_until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()  # the client has nothing to say; this notices the close

    closed = asyncio.create_task(receive_until_closed())
    try:
        while not closed.done():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            kind, schema = channels.get(channel, (None, None))
            if schema is None:
                continue
            try:
                value = schema.decode(message["data"])
            except DecodeError as exc:
                logger.warning("undecodable message on %s: %s", channel, exc)
                continue
            try:
                await websocket.send_json({"type": kind or value.kind, "data": value.model_dump(mode="json")})
            except (WebSocketDisconnect, RuntimeError):
                return
    finally:
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closed
