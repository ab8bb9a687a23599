"""The local exchange with order books and USD-M perpetuals: ``ExchangeSim`` plus Binance's depth and futures APIs.

Spot, beside what ``ExchangeSim`` serves (same websocket paths ``/stream/<n>``)::

    → {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}
    ← {"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate", "E": 1723161255408, "s": "BTCUSDT",
                                                  "U": 50093239208, "u": 50093239224, "b": [[p, q], ...], "a": [...]}}
    GET /api/v3/depth?symbol=BTCUSDT&limit=1000 → {"lastUpdateId": 50093239218, "bids": [...], "asks": [...]}

USD-M futures (ccxt ``binanceusdm``: websocket base ``ws://HOST:PORT/ws``, which ccxt turns into
``/market/ws/<n>`` and ``/public/ws/<n>``; REST base ``http://HOST:PORT/fapi/v1``): streams
``<sym>@markPrice@1s`` (mark, index, funding rate, next funding time; one event per second of exchange time)
and ``<sym>@forceOrder`` (liquidations); ``GET /fapi/v1/exchangeInfo``, ``premiumIndex``, ``openInterest``.

Depth comes from a recording of Binance's real diffs (``depth="recorded"``: the capture's snapshot, then its diffs
released at their event times × ``speed``, from the first depth subscription on) or a seeded synthetic book
around the last trade price (``depth="synthetic"``, one diff per ``depth_every_ms``). ``POST /_sim/gap`` withholds
the next diff(s) of a symbol from the stream (the exchange's book still applies them), so a client sees a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from services.exchange_sim.rest import error_reply, json_reply, limit_param
from services.exchange_sim.book import BinanceApiError, market_id
from services.exchange_sim.depth import RecordedDepth, SimDepth, SyntheticDepth, recorded_depth
from services.exchange_sim.futures import Perpetual, futures_exchange_info
from services.exchange_sim.server import ExchangeSim
from shared.errors import ConfigError
from shared.orderbook.book import parse_levels
from shared.schemas import Trade

logger = logging.getLogger(__name__)

DepthSource = Literal["off", "synthetic", "recorded"]


class BookExchangeSim(ExchangeSim):
    """``ExchangeSim`` plus depth (spot) and perpetuals (USD-M). ``depth[symbol]`` is the exchange's own book."""

    def __init__(self, source: Iterable[tuple[str, Trade]], grids: dict[str, tuple[Decimal, Decimal]], *,
                 depth: DepthSource = "synthetic", depth_files: list[Path] | None = None,
                 depth_symbol: str | None = None, depth_every_ms: int = 100, futures: bool = True, seed: int = 42,
                 liquidation_rate: float = 0.002, **kwargs: Any) -> None:
        super().__init__(source, grids, **kwargs)
        self.depth_source = depth
        self.depth_every_ms = depth_every_ms
        self.depth: dict[str, SimDepth] = {s: SimDepth(market_id(s)) for s in self.books}
        self._recorded: RecordedDepth | None = None
        self._recorded_symbol: str | None = None
        if depth == "recorded":
            if not depth_files:
                raise ConfigError("exchange_sim.depth_files — depth: recorded needs the capture file(s)")
            self._recorded_symbol = depth_symbol or next(iter(self.books))
            if self._recorded_symbol not in self.books:
                raise ConfigError(f"exchange_sim.depth_symbol — {self._recorded_symbol!r} is not one of "
                                  f"{', '.join(self.books)}")
            self._recorded = recorded_depth(depth_files, market_id(self._recorded_symbol))
            self.depth[self._recorded_symbol].load(self._recorded.last_update_id,
                                                   parse_levels(self._recorded.bids), parse_levels(self._recorded.asks))
        self._synthetic = {s: SyntheticDepth(market_id(s), tick, lot, lot * 100, seed)
                           for s, (tick, lot) in grids.items()}
        self.perps: dict[str, Perpetual] = (
            {market_id(s): Perpetual(market_id(s), tick, lot, seed, liquidation_rate=liquidation_rate)
             for s, (tick, lot) in grids.items()} if futures else {})
        self._next_mark: dict[str, int] = {}
        self._depth_wanted = asyncio.Event()
        self._depth_task: asyncio.Task | None = None
        self.depth_finished = asyncio.Event()
        self.diffs_sent = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def futures_ws_url(self) -> str:
        """Base for ccxt binanceusdm's ``urls['api']['ws']['linear']`` (ccxt appends ``/market/ws/<n>`` etc.)."""
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def futures_rest_url(self) -> str:
        """Base for ccxt binanceusdm's ``urls['api']['fapiPublic']``."""
        return f"http://{self.host}:{self.port}/fapi/v1"

    async def start(self) -> None:
        await super().start()
        if self.depth_source != "off":
            self._depth_task = asyncio.create_task(self._depth_loop(), name="exchange-sim-depth")
            self._depth_task.add_done_callback(self._depth_done)

    @staticmethod
    def _depth_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("exchange simulator: depth stopped: %s", task.exception())

    async def stop(self) -> None:
        if self._depth_task:
            self._depth_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._depth_task
        await super().stop()

    def _routes(self, app: web.Application) -> None:
        super()._routes(app)
        for path in ("/market/ws", "/market/ws/{n}", "/public/ws", "/public/ws/{n}"):
            app.router.add_get(path, self._ws)
        app.router.add_get("/api/v3/depth", self._depth_rest)
        app.router.add_get("/fapi/v1/ping", self.rest.ping)
        app.router.add_get("/fapi/v1/time", self.rest.server_time)
        app.router.add_get("/fapi/v1/exchangeInfo", self._futures_info)
        app.router.add_get("/fapi/v1/premiumIndex", self._premium_index)
        app.router.add_get("/fapi/v1/openInterest", self._open_interest)

    def _command(self, conn: Any, text: str) -> dict[str, Any] | None:
        reply = super()._command(conn, text)
        if any("@depth" in s for s in conn.subs):
            self._depth_wanted.set()
        return reply

    # ---- gap mode ----------------------------------------------------------------------------------------------------

    def make_gap(self, symbol: str, count: int = 1) -> None:
        """Withhold the next ``count`` diffs of ``symbol`` from the stream (the book here still applies them)."""
        self.depth[symbol].drop_next += count

    async def _control(self, request: web.Request) -> web.Response:
        """Beside ExchangeSim's commands: POST /_sim/gap?symbol=BTC/USDT&count=1."""
        if request.match_info["command"] != "gap":
            return await super()._control(request)
        symbol = request.query.get("symbol") or next(iter(self.books))
        if symbol not in self.depth:
            return json_reply({"error": f"unknown symbol {symbol!r}"}, status=404)
        self.make_gap(symbol, int(request.query.get("count", "1")))
        return json_reply({"ok": "gap", "symbol": symbol, "pending": self.depth[symbol].drop_next})

    # ---- depth -----------------------------------------------------------------------------------------------------

    async def _depth_loop(self) -> None:
        await self._depth_wanted.wait()
        if self._recorded is not None and self._recorded_symbol is not None:
            await self._release_recorded(self._recorded_symbol, self._recorded)
            return
        while True:
            await self._paused.wait()
            for symbol in self.books:
                await self._send_diff(symbol, self._synthetic_step(symbol))
            await asyncio.sleep(self.depth_every_ms / 1000 / (self.speed or 10.0))

    async def _release_recorded(self, symbol: str, recorded: RecordedDepth) -> None:
        loop = asyncio.get_running_loop()
        first_ms: int | None = None
        wall0 = 0.0
        for n, event in enumerate(recorded.diffs):
            await self._paused.wait()
            if first_ms is None:
                first_ms, wall0 = event["E"], loop.time()
            if self.speed > 0:
                delay = wall0 + (event["E"] - first_ms) / 1000 / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif n % 20 == 0:
                await asyncio.sleep(0)
            await self._send_diff(symbol, self.depth[symbol].apply(event))
        self.depth_finished.set()
        logger.info("exchange simulator: depth recording ended after %d diffs", len(recorded.diffs))

    def _synthetic_step(self, symbol: str) -> dict[str, Any] | None:
        """One synthetic diff around the last trade price, applied here; the event to send (None: no trade yet, or
        withheld by the gap mode)."""
        last = self.books[symbol].last
        if last is None:
            return None
        state = self.depth[symbol]
        return state.apply(self._synthetic[symbol].diff(last.price, state.update_id + 1, last.ts))

    async def _send_diff(self, symbol: str, event: dict[str, Any] | None) -> None:
        if event is None:
            return
        lower = market_id(symbol).lower()
        await self._broadcast(f"{lower}@depth@100ms", event)
        await self._broadcast(f"{lower}@depth", event)
        self.diffs_sent += 1

    async def _depth_rest(self, request: web.Request) -> web.Response:
        try:
            book = self.rest.book(request)
            limit = limit_param(request, 100, 5000)
        except BinanceApiError as exc:
            return error_reply(exc)
        self._depth_wanted.set()
        state = self.depth[book.symbol]
        if self.depth_source == "synthetic" and not len(state.book.bids):
            self._synthetic_step(book.symbol)
        return json_reply(state.snapshot(limit))

    # ---- perpetuals --------------------------------------------------------------------------------------------------

    async def _publish_trade(self, symbol: str, trade: Trade) -> None:
        await super()._publish_trade(symbol, trade)
        mid = market_id(symbol)
        perp = self.perps.get(mid)
        if perp is None:
            return
        lower = mid.lower()
        # a markPriceUpdate at each whole second E of exchange time, holding the state after every trade with ts <= E:
        # sent when the first trade past E arrives, before that trade moves the state
        due = self._next_mark.get(mid)
        if due is not None and trade.ts > due:
            event = perp.mark_price_event((trade.ts - 1) - (trade.ts - 1) % 1000)
            if event is not None:
                await self._broadcast(f"{lower}@markPrice@1s", event)
                await self._broadcast(f"{lower}@markPrice", event)
        if due is None or trade.ts > due:
            self._next_mark[mid] = -(-trade.ts // 1000) * 1000  # the first whole second at or after this trade
        liquidation = perp.on_trade(trade)
        if liquidation is not None:
            await self._broadcast(f"{lower}@forceOrder", liquidation)
            await self._broadcast("!forceOrder@arr", liquidation)

    def _perp(self, request: web.Request) -> Perpetual:
        perp = self.perps.get(request.query.get("symbol", "").upper())
        if perp is None:
            raise BinanceApiError(400, -1121, "Invalid symbol.")
        return perp

    @staticmethod
    def _now(perp: Perpetual) -> int:
        return perp.ts or int(time.time() * 1000)  # exchange time of the last trade (a replay's own clock)

    async def _futures_info(self, request: web.Request) -> web.Response:
        names = {market_id(s): s for s in self.books}
        return json_reply(futures_exchange_info(self.perps, names, int(time.time() * 1000)))

    def _perp_json(self, request: web.Request, view: str) -> web.Response:
        try:
            perp = self._perp(request)
        except BinanceApiError as exc:
            return error_reply(exc)
        return json_reply(getattr(perp, view)(self._now(perp)))

    async def _premium_index(self, request: web.Request) -> web.Response:
        return self._perp_json(request, "premium_index")

    async def _open_interest(self, request: web.Request) -> web.Response:
        return self._perp_json(request, "open_interest_row")
