"""sentinel's data in the shape trade_suite's widgets use: a ``TaskManager`` that widgets ``subscribe(widget,
requirements)`` to and ``unsubscribe(widget)`` from (reference-counted per resource), and a ``SignalEmitter`` that
calls them back with trade_suite's signals and keyword payloads. Fed by ``SentinelClient``: live data from the Redis
channels (docs/channels.md), history from the API. Importable from ``sentinel.client``.

::

    emitter = SignalEmitter()
    tasks = TaskManager(client, emitter)
    emitter.register(Signals.NEW_CANDLES, chart.on_new_candles)        # (exchange, symbol, timeframe, candles)
    emitter.register(Signals.UPDATED_CANDLES, chart.on_updated_candles)
    tasks.subscribe(chart, {"type": "candles", "exchange": "binance", "symbol": "BTC/USDT", "timeframe": "3m"})
    ...
    tasks.unsubscribe(chart)   # the last widget of a series releases it (candle_builder may stop building it)

Requirements: ``{"type": "candles", exchange, symbol, timeframe}`` → ``NEW_CANDLES`` (the whole history as a
DataFrame, on subscribe and after a reconnect) and ``UPDATED_CANDLES`` (a one-row DataFrame of the candle that
changed); ``{"type": "trades", exchange, symbol}`` → ``NEW_TRADE`` (``trade_data``: a ccxt-style trade dict) per
trade of the throttled trades channel; ``{"type": "ticker", exchange, symbol}`` → ``NEW_TICKER_DATA``
(``ticker_data``); ``{"type": "alerts"}`` (optionally with exchange/symbol) → ``NEW_ALERT`` (``alert``: the
``Alert``). Candle frames have trade_suite's columns: ``dates`` (seconds since the epoch, the bucket start), ``opens``,
``highs``, ``lows``, ``closes``, ``volumes``, then ``buy_volumes``, ``sell_volumes`` (floats, for plotting; the exact
decimals are on the channels and the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import Enum, auto
from typing import Any

import pandas as pd

from sentinel.client import ClientError, Event, SentinelClient
from shared.schemas import Alert, Candle, Ticker, TradeBatch

logger = logging.getLogger(__name__)

COLUMNS = ["dates", "opens", "highs", "lows", "closes", "volumes"]  # trade_suite's, in its order
EXTRA = ["buy_volumes", "sell_volumes"]  # after them: taker buy / sell volume (CVD = cumulative buy − sell)


class Signals(Enum):
    NEW_CANDLES = auto()  # exchange, symbol, timeframe, candles (DataFrame: the history)
    UPDATED_CANDLES = auto()  # exchange, symbol, timeframe, candles (DataFrame: the candle that changed)
    NEW_TRADE = auto()  # exchange, trade_data (dict)
    NEW_TICKER_DATA = auto()  # exchange, symbol, ticker_data (dict)
    NEW_ALERT = auto()  # exchange, symbol, alert (Alert)


class SignalEmitter:
    """trade_suite's emitter: callbacks per signal, called at once on the thread that made the emitter, queued
    from any other thread until ``process_signal_queue()`` (call it every frame)."""

    def __init__(self) -> None:
        self._callbacks: dict[Signals, list[Callable[..., Any]]] = defaultdict(list)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.get_ident()

    def register(self, signal: Signals, callback: Callable[..., Any]) -> None:
        self._callbacks[signal].append(callback)

    def unregister(self, signal: Signals, callback: Callable[..., Any]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks[signal].remove(callback)

    def emit(self, signal: Signals, **payload: Any) -> None:
        if threading.get_ident() != self._thread:
            self._queue.put((signal, payload))
            return
        for callback in list(self._callbacks[signal]):
            try:
                callback(**payload)
            except Exception:  # one widget's bug must not starve the others
                logger.exception("callback %r for %s failed", callback, signal.name)

    def process_signal_queue(self) -> None:
        while True:
            try:
                signal, payload = self._queue.get_nowait()
            except queue.Empty:
                return
            self.emit(signal, **payload)


def candles_frame(candles: Iterable[Candle]) -> pd.DataFrame:
    """Candles (ascending) as trade_suite's DataFrame."""
    rows = [(c.ts / 1000, float(c.open), float(c.high), float(c.low), float(c.close), float(c.volume),
             float(c.buy_volume), float(c.sell_volume)) for c in candles]
    return pd.DataFrame(rows, columns=COLUMNS + EXTRA, dtype=float)


def trade_dict(exchange: str, symbol: str, trade: Any) -> dict[str, Any]:
    """A trade as ccxt (and so trade_suite) shapes it."""
    return {"exchange": exchange, "symbol": symbol, "id": None if trade.id is None else str(trade.id),
            "timestamp": trade.ts, "datetime": datetime.fromtimestamp(trade.ts / 1000, UTC).isoformat(),
            "side": "buy" if trade.is_buy else "sell", "price": float(trade.price), "amount": float(trade.amount)}


Key = tuple[str, ...]


def resource_of(requirements: dict[str, Any]) -> Key:
    """The shared resource a requirement dict asks for; ValueError naming what is missing."""
    kind = requirements.get("type")
    exchange, symbol, timeframe = (requirements.get(k) for k in ("exchange", "symbol", "timeframe"))
    if kind == "alerts":
        return ("alerts", exchange or "", symbol or "")
    if kind not in ("candles", "trades", "ticker"):
        raise ValueError(f"requirement type {kind!r}: expected candles, trades, ticker or alerts")
    if not exchange or not symbol:
        raise ValueError(f"a {kind} requirement needs exchange and symbol: {requirements}")
    if kind == "candles":
        if not timeframe:
            raise ValueError(f"a candles requirement needs timeframe: {requirements}")
        return ("candles", exchange, symbol, timeframe)
    return (kind, exchange, symbol)


class TaskManager:
    """Reference-counted live resources for widgets. Call from the thread running the asyncio loop (the GUI's)."""

    def __init__(self, client: SentinelClient, emitter: SignalEmitter, *, history: int = 500) -> None:
        self.client = client
        self.emitter = emitter
        self.history = history
        self.widgets: dict[int, set[Key]] = defaultdict(set)  # widget id -> resources it holds
        self.holders: dict[Key, set[int]] = defaultdict(set)  # resource -> widget ids
        self.tasks: dict[Key, asyncio.Task] = {}
        self.frames: dict[Key, dict[int, Candle]] = {}  # candles resource -> candles by bucket
        self.ready: dict[Key, asyncio.Event] = {}  # set once the resource's first data was emitted

    def subscribe(self, widget: object, requirements: dict[str, Any]) -> None:
        key = resource_of(requirements)
        self.widgets[id(widget)].add(key)
        first = not self.holders[key]
        self.holders[key].add(id(widget))
        if first:
            self.ready[key] = asyncio.Event()
            self.tasks[key] = asyncio.get_running_loop().create_task(self._follow(key), name=f"suite:{key}")
        elif key[0] == "candles" and key in self.frames and self.ready[key].is_set():
            self._emit_history(key)  # a later widget gets the history the first one got

    def unsubscribe(self, widget: object) -> None:
        for key in self.widgets.pop(id(widget), set()):
            self.holders[key].discard(id(widget))
            if not self.holders[key]:
                self._release(key)

    def _release(self, key: Key) -> None:
        del self.holders[key]
        self.frames.pop(key, None)
        self.ready.pop(key, None)
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()  # closing the subscription releases the series (sentinel.client: HeldSeries.close)

    async def aclose(self) -> None:
        for key in list(self.holders):
            self._release(key)
        await asyncio.sleep(0)

    async def wait_ready(self, requirements: dict[str, Any], timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.ready[resource_of(requirements)].wait(), timeout)

    # ---- one task per resource -------------------------------------------------------------------------------------

    async def _follow(self, key: Key) -> None:
        kind, *where = key
        subscribed = asyncio.Event()
        options: dict[str, Any] = {"alerts": kind == "alerts", "subscribed": subscribed}
        if kind == "candles":
            options["series"] = [tuple(where)]
        elif kind == "trades":
            options["trades"] = [tuple(where)]
        elif kind == "ticker":
            options["tickers"] = [tuple(where)]
        async with contextlib.aclosing(self.client.subscribe(**options)) as events:
            history = asyncio.create_task(self._history_after(subscribed, key))
            try:
                async for event in events:
                    if event.kind == "reconnected" and kind == "candles":
                        await self._load_history(key)
                    else:
                        self._deliver(key, event)
            finally:
                history.cancel()

    async def _history_after(self, subscribed: asyncio.Event, key: Key) -> None:
        """Subscribed first, then history: a candle closed in between is in one or the other (docs/channels.md)."""
        await subscribed.wait()
        if key[0] == "candles":
            await self._load_history(key)
        self.ready[key].set()

    async def _load_history(self, key: Key) -> None:
        _, exchange, symbol, timeframe = key
        try:
            candles = await self.client.candles(exchange, symbol, timeframe, limit=self.history, live=True)
        except ClientError as exc:
            logger.warning("history of %s unavailable: %s", "|".join(key[1:]), exc)
            candles = []
        frame = self.frames.setdefault(key, {})
        for candle in candles:
            _merge(frame, candle)
        self._emit_history(key)

    def _emit_history(self, key: Key) -> None:
        _, exchange, symbol, timeframe = key
        frame = self.frames[key]
        self.emitter.emit(Signals.NEW_CANDLES, exchange=exchange, symbol=symbol, timeframe=timeframe,
                          candles=candles_frame(frame[ts] for ts in sorted(frame)))

    def _deliver(self, key: Key, event: Event) -> None:
        value = event.value
        if isinstance(value, Candle) and key[0] == "candles":
            frame = self.frames.setdefault(key, {})
            if _merge(frame, value):
                self.emitter.emit(Signals.UPDATED_CANDLES, exchange=value.exchange, symbol=value.symbol,
                                  timeframe=value.timeframe, candles=candles_frame([frame[value.ts]]))
        elif isinstance(value, TradeBatch):
            for trade in value.trades:
                self.emitter.emit(Signals.NEW_TRADE, exchange=value.exchange,
                                  trade_data=trade_dict(value.exchange, value.symbol, trade))
        elif isinstance(value, Ticker):
            self.emitter.emit(Signals.NEW_TICKER_DATA, exchange=value.exchange, symbol=value.symbol,
                              ticker_data=value.model_dump(mode="json"))
        elif isinstance(value, Alert) and key[1] in ("", value.exchange) and key[2] in ("", value.symbol):
            self.emitter.emit(Signals.NEW_ALERT, exchange=value.exchange, symbol=value.symbol, alert=value)


def _merge(frame: dict[int, Candle], candle: Candle) -> bool:
    """Keep the latest revision per bucket, a closed candle over an in-progress one; True if ``candle`` was taken."""
    known = frame.get(candle.ts)
    if known is not None and (known.closed and not candle.closed or
                              known.closed and candle.closed and candle.revision < known.revision):
        return False
    frame[candle.ts] = candle
    return True
