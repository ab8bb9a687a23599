"""A local exchange that speaks Binance spot's public protocol, on one aiohttp server.

Websocket ``ws://HOST:PORT/stream`` (also ``/stream/<n>`` as ccxt opens, and ``/ws``)::

    → {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@ticker"], "id": 1}
    ← {"result": null, "id": 1}
    ← {"stream": "btcusdt@trade", "data": {"e": "trade", "E": 1723161255343, "s": "BTCUSDT", "t": 3735683259,
                                            "p": "61837.63", "q": "0.02", "T": 1723161255342, "m": true, "M": true}}

Streams: ``<sym>@trade``, ``<sym>@aggTrade``, ``<sym>@ticker``, ``<sym>@bookTicker``.
REST under ``/api/v3``: ``ping``, ``time``, ``exchangeInfo``, ``trades``, ``aggTrades``, ``klines``
(``services.exchange_sim.rest``).

Trades come from a source (the simulated market or a recording) released at real time × ``speed`` of their exchange
timestamps (``speed=0``: as fast as possible). For tests and demos of failure handling the server can drop every
connection, stall (stop sending while keeping sockets open; frames of that time are lost), or send garbage frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from services.exchange_sim.rest import BinanceRest, json_reply
from services.exchange_sim.book import (SymbolBook, agg_trade_event, book_ticker_event, market_id, ticker_event,
                                        trade_event)
from shared.schemas import Trade

logger = logging.getLogger(__name__)


class _Conn:
    __slots__ = ("ws", "subs", "stalled_until", "malformed")

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.subs: set[str] = set()
        self.stalled_until = 0.0
        self.malformed = 0  # trade frames still to send malformed


#: Malformed frame kinds (``malform``): what a flaky link or a buggy gateway can deliver.
MALFORMED = {
    "truncated": lambda frame: frame[: len(frame) // 2],  # cut mid-JSON
}


class ExchangeSim:
    """The local exchange. ``await start()``, then ``ws_url`` / ``rest_url``; ``await stop()``."""

    def __init__(self, source: Iterable[tuple[str, Trade]], grids: dict[str, tuple[Decimal, Decimal]], *,
                 host: str = "127.0.0.1", port: int = 0, speed: float = 1.0, retention: int = 1_000_000,
                 ticker_every_ms: int = 1_000, start_on_subscribe: bool = False) -> None:
        self._source: Iterator[tuple[str, Trade]] = iter(source)
        self.books = {s: SymbolBook(s, tick, lot, retention) for s, (tick, lot) in grids.items()}
        self.rest = BinanceRest(self.books)
        self.host = host
        self.port = port
        self.speed = speed
        self.ticker_every_ms = ticker_every_ms
        self.start_on_subscribe = start_on_subscribe
        self._conns: set[_Conn] = set()
        self._subscribed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self._paused = asyncio.Event()
        self._paused.set()
        self._day_open: dict[str, Decimal] = {}
        self._volume: dict[str, Decimal] = {s: Decimal(0) for s in self.books}
        self._update_id = 0
        self.released = 0
        self.finished = asyncio.Event()
        self.frames_sent = 0
        self._malform_kind = "truncated"
        self.drops = 0
        self.connections_total = 0

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/stream"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v3"

    def last_ids(self) -> dict[str, int | None]:
        """Id of the last trade released per symbol."""
        return {s: (int(b.last.id) if b.last is not None else None) for s, b in self.books.items()}  # type: ignore[arg-type]

    def feed_config(self, exchange_id: str = "binance") -> dict[str, Any]:
        """The ``market_feed.exchanges`` entry that points ccxt at this server."""
        return {"id": exchange_id, "symbols": list(self.books), "ws_url": self.ws_url, "rest_url": self.rest_url}

    async def start(self) -> None:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the port bound (``port`` 0: a free one)
        self._task = asyncio.create_task(self._release_loop(), name="exchange-sim-release")
        logger.info("exchange simulator on %s (REST %s), symbols %s, speed %s", self.ws_url, self.rest_url,
                    ", ".join(self.books), self.speed or "max")

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/stream", self._ws)
        app.router.add_get("/stream/{n}", self._ws)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/ws/{n}", self._ws)
        app.router.add_get("/api/v3/ping", self.rest.ping)
        app.router.add_get("/api/v3/time", self.rest.server_time)
        app.router.add_get("/api/v3/exchangeInfo", self.rest.exchange_info)
        app.router.add_get("/api/v3/trades", self.rest.trades)
        app.router.add_get("/api/v3/aggTrades", self.rest.agg_trades)
        app.router.add_get("/api/v3/klines", self.rest.klines)
        app.router.add_post("/_sim/{command}", self._control)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.drop_connections(code=1001)
        if self._runner:
            await self._runner.cleanup()

    # ---- failure injection ---------------------------------------------------------------------------------------

    async def drop_connections(self, code: int = 1011) -> int:
        """Close every websocket (clients see 'Connection closed by remote server'). Returns how many."""
        conns = list(self._conns)
        self._conns.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=code, message=b"simulated drop")
        self.drops += 1
        return len(conns)

    def stall(self, seconds: float) -> None:
        """Stop sending on every open socket for ``seconds`` (sockets stay open; frames of that time are lost)."""
        until = time.monotonic() + seconds
        for conn in self._conns:
            conn.stalled_until = until

    async def send_garbage(self, frames: Iterable[str] = ("}{not json", "\x00\x01", '{"e":"trade","s":')) -> None:
        for conn in list(self._conns):
            for frame in frames:
                with contextlib.suppress(Exception):
                    await conn.ws.send_str(frame)

    def malform(self, count: int = 1, kind: str = "truncated") -> int:
        """Send the next ``count`` trade frames of every open connection malformed (``MALFORMED[kind]``) instead of
        whole: the trades in them never reach the client by websocket, as with a corrupted frame. Returns how many
        connections will."""
        if kind not in MALFORMED:
            raise ValueError(f"unknown malformed frame kind {kind!r}; one of {', '.join(MALFORMED)}")
        self._malform_kind = kind
        for conn in self._conns:
            conn.malformed = count
        return len(self._conns)

    def pause(self) -> None:
        self._paused.clear()

    def resume(self) -> None:
        self._paused.set()

    async def _control(self, request: web.Request) -> web.Response:
        """POST /_sim/drop | /_sim/stall?seconds=S | /_sim/garbage | /_sim/malformed?count=N&kind=truncated |
        /_sim/pause | /_sim/resume."""
        command = request.match_info["command"]
        if command == "drop":
            return json_reply({"dropped": await self.drop_connections()})
        if command == "stall":
            self.stall(float(request.query.get("seconds", "5")))
        elif command == "garbage":
            await self.send_garbage()
        elif command == "malformed":
            try:
                self.malform(int(request.query.get("count", "1")), request.query.get("kind", "truncated"))
            except ValueError as exc:
                return json_reply({"error": str(exc)}, status=400)
        elif command == "pause":
            self.pause()
        elif command == "resume":
            self.resume()
        else:
            return json_reply({"error": f"unknown command {command!r}"}, status=404)
        return json_reply({"ok": command, "released": self.released})

    async def wait_released(self, n: int, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.released < n and not self.finished.is_set():
            if loop.time() > deadline:
                raise TimeoutError(f"only {self.released} of {n} trades released")
            await asyncio.sleep(0.005)

    # ---- release -------------------------------------------------------------------------------------------------

    async def _release_loop(self) -> None:
        if self.start_on_subscribe:
            await self._subscribed.wait()
        loop = asyncio.get_running_loop()
        first_ts: int | None = None
        wall0 = 0.0
        next_ticker: int | None = None
        for n, (symbol, trade) in enumerate(self._source):
            await self._paused.wait()
            if first_ts is None:
                first_ts, wall0 = trade.ts, loop.time()
            if self.speed > 0:
                delay = wall0 + (trade.ts - first_ts) / 1000 / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif n % 200 == 0:
                await asyncio.sleep(0)
            if next_ticker is None:
                next_ticker = trade.ts - trade.ts % self.ticker_every_ms + self.ticker_every_ms
            elif trade.ts >= next_ticker:
                await self._send_tickers(next_ticker)
                next_ticker = trade.ts - trade.ts % self.ticker_every_ms + self.ticker_every_ms
            book = self.books[symbol]
            book.add(trade)
            self._day_open.setdefault(symbol, trade.price)
            self._volume[symbol] += trade.amount
            self.released += 1
            await self._publish_trade(symbol, trade)
        self.finished.set()
        logger.info("exchange simulator: source ended after %d trades", self.released)

    async def _publish_trade(self, symbol: str, trade: Trade) -> None:
        mid = market_id(symbol)
        lower = mid.lower()
        event_ms = trade.ts + 1
        await self._broadcast(f"{lower}@trade", trade_event(mid, trade, event_ms))
        await self._broadcast(f"{lower}@aggTrade", agg_trade_event(mid, trade, event_ms))

    async def _send_tickers(self, ts: int) -> None:
        for symbol, book in self.books.items():
            if book.last is None:
                continue
            mid = market_id(symbol)
            self._update_id += 1
            await self._broadcast(f"{mid.lower()}@ticker",
                                  ticker_event(mid, book, ts, self._day_open[symbol], self._volume[symbol]))
            await self._broadcast(f"{mid.lower()}@bookTicker", book_ticker_event(mid, book, self._update_id))

    async def _broadcast(self, stream: str, data: dict[str, Any], wrap: bool = True) -> None:
        """Send ``data`` to every connection subscribed to ``stream`` (as Binance's combined-stream wrapper)."""
        frame: str | None = None
        now = 0.0
        for conn in list(self._conns):
            if stream not in conn.subs:
                continue
            if conn.stalled_until:
                now = now or time.monotonic()
                if now < conn.stalled_until:
                    continue
                conn.stalled_until = 0.0
            if frame is None:
                frame = json.dumps({"stream": stream, "data": data} if wrap else data, separators=(",", ":"))
            try:
                if conn.malformed and "trade" in stream.lower():
                    conn.malformed -= 1
                    await conn.ws.send_str(MALFORMED[self._malform_kind](frame))
                    continue
                await conn.ws.send_str(frame)
                self.frames_sent += 1
            except Exception:  # the client went away mid-send
                self._conns.discard(conn)

    # ---- websocket -----------------------------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Conn(ws)
        self._conns.add(conn)
        self.connections_total += 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                reply = self._command(conn, msg.data)
                if reply is not None:
                    await ws.send_str(json.dumps(reply))
        finally:
            self._conns.discard(conn)
        return ws

    def _command(self, conn: _Conn, text: str) -> dict[str, Any] | None:
        try:
            msg = json.loads(text)
            method, req_id = msg.get("method"), msg.get("id")
        except (ValueError, AttributeError):
            return {"error": {"code": 3, "msg": "Invalid JSON"}}
        params = msg.get("params") or []
        if method == "SUBSCRIBE":
            conn.subs.update(params)
            self._subscribed.set()
            return {"result": None, "id": req_id}
        if method == "UNSUBSCRIBE":
            conn.subs.difference_update(params)
            return {"result": None, "id": req_id}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(conn.subs), "id": req_id}
        return {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": req_id}
