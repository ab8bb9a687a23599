"""The backtest's market_feed in a process of its own: reading and parsing the files takes about as long as building
candles and evaluating rules, so the two halves run on two cores. One ``MarketFeedApp`` per exchange replays that
exchange's files merged in time order (``inputs.trades_by_exchange``), publishing to the backtest's Redis.

The parent sees progress (trades read), the end, the time each file covers (``Spans``) and any error through
multiprocessing primitives; a user's mistake found mid-file (a bad row) comes back as its message.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import signal
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.backtest.inputs import Input, InputError, Item, trades_by_exchange
from shared.errors import SentinelError
from shared.feed_codec import TextColumns


@dataclass
class Spans:
    """First and last trade time of each (file, exchange, symbol) read: what the data covers (partial bars)."""

    seen: dict[tuple[Path, str, str], list[int]] = field(default_factory=dict)

    def track(self, path: Path, exchange: str, trades: Iterator[Item]) -> Iterator[Item]:
        """``trades`` (trades or blocks of trades) passed through, noting the first and last trade of every run of one
        symbol."""
        symbol: str | None = None
        last_ts = 0
        for item in trades:
            trade = item[1]
            if type(trade) is TextColumns:
                first, last = trade.tss[0], trade.tss[-1]
            else:
                first = last = trade.ts  # type: ignore[union-attr]
            if item[0] != symbol:
                if symbol is not None:
                    self._note(path, exchange, symbol, last_ts)
                symbol = item[0]
                self._note(path, exchange, symbol, first)
            last_ts = last
            yield item
        if symbol is not None:
            self._note(path, exchange, symbol, last_ts)

    def _note(self, path: Path, exchange: str, symbol: str, ts: int) -> None:
        span = self.seen.setdefault((path, exchange, symbol), [ts, ts])
        span[0], span[1] = min(span[0], ts), max(span[1], ts)


class FeedProcess:
    """The feed process seen from the backtest: ``read`` (trades read so far), ``published``, ``done``, and
    ``result()`` (the spans, once done; raises the feed's error)."""

    def __init__(self, url: str, items: list[Input], settings: Any) -> None:
        # fork where there is one (no start-up: it has every module already; the caller starts it before any event
        # loop or Redis connection exists), else a fresh interpreter
        ctx: Any = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._read = ctx.Value("q", 0, lock=False)
        self._published = ctx.Value("q", 0, lock=False)
        self._results = ctx.Queue()
        self._outcome: tuple[Any, ...] | None = None
        self.process = ctx.Process(target=_main, args=(url, items, settings, self._read, self._published,
                                                       self._results), name="sentinel-backtest-feed", daemon=True)

    def start(self) -> None:
        self.process.start()

    @property
    def read(self) -> int:
        return int(self._read.value)

    @property
    def published(self) -> int:
        return int(self._published.value)

    @property
    def done(self) -> bool:
        if self._outcome is None and not self._results.empty():
            self._outcome = self._results.get()
        if self._outcome is None and not self.process.is_alive():
            try:  # (it may have put its outcome just before it ended)
                self._outcome = self._results.get(timeout=1.0)
            except queue.Empty:
                self._outcome = ("bug", f"the feed process ended with exit code {self.process.exitcode}")
        if self._outcome is not None and self._outcome[0] != "ok":
            kind, message = self._outcome[:2]
            raise InputError(message) if kind == "error" else SentinelError(f"market_feed stopped: {message}")
        return self._outcome is not None

    def result(self) -> dict[tuple[Path, str, str], list[int]]:
        if not self.done or self._outcome is None:
            raise RuntimeError("the feed has not finished")
        spans: dict[tuple[Path, str, str], list[int]] = self._outcome[1]
        return spans

    def stop(self) -> None:
        if self.process.pid is None:  # never started
            return
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)


def _main(url: str, items: list[Input], settings: Any, read: Any, published: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops this process)
    try:
        spans = Spans()
        asyncio.run(_feed(url, items, settings, spans, read, published))
        results.put(("ok", spans.seen))
    except SentinelError as exc:  # a bad row: the message names the file, line and field
        results.put(("error", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("bug", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


async def _feed(url: str, items: list[Input], settings: Any, spans: Spans, read: Any, published: Any) -> None:
    from services.market_feed.app import MarketFeedApp
    from shared.runtime import connect, quiet_gc

    # What this process inherited and imported, out of the cyclic collector's sight, and young collections every 20k
    # allocations: each trade read allocates a tuple, and at the default threshold (700) the collector ran ~9,500
    # young and ~80 full collections over ~50k objects per 1M trades, ~20% of this process' CPU (as the builder
    # and the engine do at their start)
    quiet_gc()
    redis = connect(url)
    stop = asyncio.Event()
    try:
        apps = [MarketFeedApp(settings.model_copy(update={"exchange": ex}), redis, source=source)
                for ex, source in trades_by_exchange(items, spans.track).items()]
        tasks = [asyncio.create_task(app.run(stop)) for app in apps]

        def count() -> None:
            read.value = sum(a.trades_published + a.trades_skipped for a in apps)
            published.value = sum(a.trades_published for a in apps)

        while not all(t.done() for t in tasks):
            count()
            await asyncio.wait(tasks, timeout=0.1)
            if failed := [t for t in tasks if t.done() and t.exception() is not None]:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                failed[0].result()  # raise the first error
        count()
    finally:
        await redis.aclose()
