"""The backtest run: one market_feed per exchange replaying its inputs, candle_builder and alert_engine, on an
embedded Redis, until every trade has been read and every consumer group is drained (no fixed settle: the streams
the rules read are named, so a consumer group that does not exist yet is seen as work left)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from sentinel import export
from sentinel.backtest.inputs import Input, resolve, trades_by_exchange
from sentinel.backtest.output import Made, write_outputs
from sentinel.pipeline import Pipeline, add_service, consumer_groups_idle, load_settings, service_classes
from services.alert_engine.core import AlertEngine
from shared import streams
from shared.bus import Bus
from shared.embedded_redis import EmbeddedRedis
from shared.errors import ConfigError
from shared.rules import RuleSet, load_rules_file
from shared.runtime import connect, install_signal_handlers
from shared.schemas import Trade

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


@dataclass
class BacktestOptions:
    inputs: list[Path]
    rules_file: Path
    out_dir: Path
    exchange: str | None = None
    symbol: str | None = None
    timeframes: list[str] | None = None
    config_file: Path | None = None
    forward_bars: int = 10
    data_dir: Path | None = None  # keep Redis's data here (default: a temporary folder)


@dataclass
class Spans:
    """First and last trade time of each (file, exchange, symbol) read: what the data covers (partial bars)."""

    seen: dict[tuple[Path, str, str], list[int]] = field(default_factory=dict)

    def track(self, path: Path, exchange: str, trades: Iterator[tuple[str, Trade]]) -> Iterator[tuple[str, Trade]]:
        """``trades`` passed through, noting the first and last trade of every run of one symbol."""
        last: tuple[str, Trade] | None = None
        for item in trades:
            if last is None or item[0] != last[0]:
                if last is not None:
                    self._note(path, exchange, last)
                self._note(path, exchange, item)
            last = item
            yield item
        if last is not None:
            self._note(path, exchange, last)

    def _note(self, path: Path, exchange: str, item: tuple[str, Trade]) -> None:
        span = self.seen.setdefault((path, exchange, item[0]), [item[1].ts, item[1].ts])
        span[0], span[1] = min(span[0], item[1].ts), max(span[1], item[1].ts)


def backtest(opts: BacktestOptions, console: Console | None = None) -> Made:
    """Run the backtest and write its files and report; returns what it made."""
    console = console or Console()
    items = resolve(opts.inputs, opts.exchange, opts.symbol)
    ruleset = load_rules_file(opts.rules_file)  # a bad rules file is refused before anything starts
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    with _data_dir(opts.data_dir) as data_dir:
        made = asyncio.run(_run(opts, items, ruleset, data_dir, console))
    write_outputs(opts, made, console)
    return made


async def _run(opts: BacktestOptions, items: list[Input], ruleset: RuleSet, data_dir: Path,
               console: Console) -> Made:
    server = EmbeddedRedis(data_dir / "redis", persist=False)
    server.start()
    redis = connect(server.url)
    started = time.monotonic()
    pipeline = Pipeline(redis)
    spans = Spans()
    try:
        pairs = sorted({pair for item in items for pair in item.symbols})
        routes = AlertEngine(ruleset).routes
        wanted = {(ex, sym, tf) for ex, sym in pairs for tf in routes.needs(ex, sym)}
        settings = _settings(opts, items, server.url, data_dir, {tf for _, _, tf in wanted})
        for name in ("candle_builder", "alert_engine"):
            add_service(pipeline, name, settings[name])
        feed_app = service_classes("market_feed")[1]
        feeds = []
        for ex, (symbols, trades) in trades_by_exchange(items, spans.track).items():
            feed = feed_app(settings["market_feed"].model_copy(update={"exchange": ex}), redis,
                            source=(symbols, trades))
            pipeline.add(f"market_feed {ex}", feed)
            feeds.append(feed)
        install_signal_handlers(pipeline.stop)
        pipeline.start()
        total = sum(item.rows for item in items)
        interrupted = await _until_drained(pipeline, redis, feeds, wanted, total, console)
        await pipeline.shutdown()
        series = await export.candle_series(redis)
        candles = {s: await export.closed_candles(redis, *s) for s in series}
        alerts = await export.alerts(redis)
        trades = sum(f.trades_published for f in feeds)
        return Made(items=items, candles=candles, alerts=alerts, trades=trades, seconds=time.monotonic() - started,
                    spans=spans.seen, interrupted=interrupted)
    finally:
        with contextlib.suppress(Exception):
            await pipeline.shutdown()
        await redis.aclose()
        server.stop()


async def _until_drained(pipeline: Pipeline, redis: Any, feeds: list[Any], wanted: set[tuple[str, str, str]],
                         total: int, console: Console) -> bool:
    """Wait (with a progress bar: trades read of the total, ETA) until the feeds have read everything and every
    consumer group has processed it; True if interrupted (Ctrl-C)."""
    candle_streams = sorted(streams.candles(*key) for key in wanted)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task("trades", total=total)
        while True:
            if failure := pipeline.failed():
                raise failure
            if pipeline.stop.is_set():
                console.print("[yellow]interrupted[/]")
                return True
            read = sum(f.trades_published + f.trades_skipped for f in feeds)
            done = all(f.done for f in feeds)
            progress.update(task, completed=read if not done else total,
                            description="trades" if not done else "candles and rules")
            builder_read = pipeline.apps["candle_builder"].trades_in >= sum(f.trades_published for f in feeds)
            if done and builder_read and await _drained(redis, candle_streams):
                return False
            await asyncio.sleep(0.05)


async def _drained(redis: Any, candle_streams: list[str]) -> bool:
    """Every consumer group has read and acked everything, and each candle stream a rule reads has alert_engine's
    group (a stream the engine has not discovered yet is work left, not an idle pipeline). The caller checks that
    candle_builder has read every trade published; consumer_groups_idle checks its offsets)."""
    if not await consumer_groups_idle(redis):
        return False
    bus = Bus(redis)
    for stream in candle_streams:
        if await redis.exists(stream) and not await bus.caught_up(stream, streams.GROUP_ALERT_ENGINE):
            return False
    return True


def _settings(opts: BacktestOptions, items: list[Input], url: str, data_dir: Path,
              rule_timeframes: set[str]) -> dict[str, Any]:
    """Each service's settings (every problem of every section in one ConfigError). candle_builder builds the
    timeframes asked for (or its configured ones) and every timeframe a rule reads."""
    common = {"redis_url": url, "data_dir": data_dir}
    overrides: dict[str, dict[str, Any]] = {
        "market_feed": {"mode": "replay", "replay_file": items[0].path, "speed": 0},
        "candle_builder": {"timeframes": opts.timeframes} if opts.timeframes else {},
        "alert_engine": {"rules_file": opts.rules_file, "clock": "exchange"},
    }
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, extra in overrides.items():
        try:
            out[name] = load_settings(name, opts.config_file, **common, **extra)
        except ConfigError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    builder = out["candle_builder"]
    from shared.timeframes import sort_timeframes

    timeframes = sort_timeframes(set(builder.timeframes) | rule_timeframes)
    # every closed candle is exported (no trimming of a temporary Redis); no in-progress candles nor timer closes
    out["candle_builder"] = builder.model_copy(update={"timeframes": timeframes, "candles_maxlen": 10**9,
                                                       "live_candles": False, "close_on_timer": False,
                                                       "discover_every_s": 0.1})
    return out


@contextlib.contextmanager
def _data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sentinel-") as tmp:
        yield Path(tmp)
