"""The backtest run: the feed process (``feed.py``: one market_feed per exchange replaying its inputs) beside
candle_builder and alert_engine in this process, on an embedded Redis, until every trade has been read and every
consumer group is drained (no fixed settle: the streams the rules read are named, so a consumer group that does not
exist yet is seen as work left)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from sentinel.backtest.feed import FeedProcess
from sentinel.backtest.inputs import Input, resolve
from sentinel.pipeline import (Pipeline, add_service, builder_caught_up, data_dir_or_temp, load_all_settings,
                               work_streams)
from shared.bus import as_str
from shared.embedded_redis import EmbeddedRedis
from shared.runtime import connect, install_signal_handlers
from shared.timeframes import sort_timeframes

if TYPE_CHECKING:
    from sentinel.backtest.output import Made

logger = logging.getLogger(__name__)

#: BLOCK (ms) of candle_builder's and alert_engine's reads in a backtest.
BLOCK_MS = 20


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
    keep_partial_alerts: bool = False  # write the bar-close alerts of partial bars too


def backtest(opts: BacktestOptions, console: Console | None = None) -> Made:
    """Run the backtest and write its files and report; returns what it made."""
    console = console or Console()
    items = resolve(opts.inputs, opts.exchange, opts.symbol)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    pairs = sorted({pair for item in items for pair in item.symbols})
    with data_dir_or_temp(opts.data_dir) as data_dir:
        server = EmbeddedRedis(data_dir / "redis", persist=False)
        server.start()
        feed: FeedProcess | None = None
        try:
            started = time.monotonic()
            settings = _settings(opts, items, server.url, data_dir)  # (every section checked before anything runs)
            # Forked before any event loop or Redis connection exists here (a fork inherits neither), and before the
            # alert engine's and the report's modules are imported (talib, numpy, pandas: ~1 s of a core): the feed
            # reads and publishes meanwhile, and candle_builder starts from the stream's first entry.
            # The rules are read after the fork (their models' imports, ~0.2-0.3 s, run beside the feed's first reads):
            # a bad rules file stops the feed it started, before any service, with the same message.
            feed = FeedProcess(server.url, items, settings["market_feed"])
            feed.start()
            from services.alert_engine.core import AlertEngine
            from shared.rules import load_rules_file

            ruleset = load_rules_file(opts.rules_file)
            routes = AlertEngine(ruleset).routes
            wanted = {(ex, sym, tf) for ex, sym in pairs for tf in routes.needs(ex, sym)}
            live = any(routes.needs_live(key) for key in wanted)  # a rule evaluates in-progress candles
            _tune_builder(settings, {tf for _, _, tf in wanted}, live)
            made = asyncio.run(_run(items, settings, server.url, feed, wanted, console))
            made.seconds = time.monotonic() - started
        finally:
            try:
                if feed is not None:
                    feed.stop()
            finally:
                server.stop()
    from sentinel.backtest.output import write_outputs

    write_outputs(opts, made, console)
    return made


async def _run(items: list[Input], settings: dict[str, Any], url: str, feed: FeedProcess,
               wanted: set[tuple[str, str, str]], console: Console) -> Made:
    """candle_builder and alert_engine on this loop until the feed's trades are all processed; what they made."""
    from sentinel import export
    from sentinel.backtest.output import Made

    redis = connect(url)
    pipeline = Pipeline(redis)
    try:
        for name in ("candle_builder", "alert_engine"):
            add_service(pipeline, name, settings[name])
        install_signal_handlers(pipeline.stop)
        pipeline.start()
        total = sum(item.rows for item in items)
        interrupted = await _until_drained(pipeline, redis, feed, wanted, total, console)
        feed.stop()
        await pipeline.shutdown()
        partitions = settings["candle_builder"].partitions
        series = await export.candle_series(redis, partitions)
        candles = await export.closed_candles_of(redis, series, partitions=partitions)
        alerts = await export.alerts(redis)
        return Made(items=items, candles=candles, alerts=alerts, trades=feed.published, seconds=0.0,
                    spans=feed.result() if not interrupted else {}, interrupted=interrupted)
    finally:
        with contextlib.suppress(Exception):
            await pipeline.shutdown()
        await redis.aclose()


async def _until_drained(pipeline: Pipeline, redis: Any, feed: FeedProcess, wanted: set[tuple[str, str, str]],
                         total: int, console: Console) -> bool:
    """Wait (with a progress bar: trades read of the total, ETA) until the feed has read everything and every
    consumer group has processed it; True if interrupted (Ctrl-C)."""
    builder, engine = pipeline.apps["candle_builder"], pipeline.apps["alert_engine"]
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
            done = feed.done  # (raises the feed's error)
            progress.update(task, completed=feed.read if not done else total,
                            description="trades" if not done else "candles and rules")
            if done and builder.trades_in >= feed.published:
                checked = time.monotonic()
                if await _drained(redis) and await engine.caught_up():
                    return False
                # (a market's thousands of streams: the check takes at most a fifth of this process's time)
                await asyncio.sleep(max(0.02, 4 * (time.monotonic() - checked)))
            await asyncio.sleep(0.02)


async def _drained(redis: Any) -> bool:
    """Every consumer group of every stream has read and acked everything. The caller checks that candle_builder has
    read every trade published and alert_engine every entry of the streams it reads (``AlertEngineApp.caught_up``);
    the builder's offsets must have reached every partition's trades (neither keeps a consumer group). Two pipelined
    round trips whatever the number of streams (a market has thousands), and one read per partition."""
    if not await builder_caught_up(redis):
        return False
    names = await work_streams(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xinfo_stream(name)
            pipe.xinfo_groups(name)
        replies = await pipe.execute(raise_on_error=False)
    for info, groups in zip(replies[::2], replies[1::2]):
        if isinstance(info, Exception) or isinstance(groups, Exception):
            return False
        last = as_str(info.get("last-generated-id") or info.get(b"last-generated-id"))
        for g in groups:
            if g["pending"] or as_str(g["last-delivered-id"]) != last:
                return False
    # A stream created between the SCAN and the group replies is work the replies did not see: scan again.
    return set(await work_streams(redis)) <= set(names)


def _settings(opts: BacktestOptions, items: list[Input], url: str, data_dir: Path) -> dict[str, Any]:
    """Each service's settings (every problem of every section in one ConfigError); candle_builder's timeframes are
    completed by ``_tune_builder`` once the rules' needs are known."""
    common = {"redis_url": url, "data_dir": data_dir, "redis_wait_replicas": 0}  # (its own Redis: no replica)
    overrides: dict[str, dict[str, Any]] = {
        # big entries: a backtest has no latency to keep, and watermarks only need to close bars of quiet symbols
        "market_feed": {"mode": "replay", "replay_file": items[0].path, "speed": 0, "batch_size": 1000,
                        "batch_window_ms": 3_600_000, "watermark_every_ms": 60_000},
        # short blocking reads: the end of the run waits for the builder's and engine's reads to return (200 ms each
        # by default); a read returns at once when there is data, so this costs nothing while trades flow
        "candle_builder": {"block_ms": BLOCK_MS, **({"timeframes": opts.timeframes} if opts.timeframes else {})},
        "alert_engine": {"rules_file": opts.rules_file, "clock": "exchange", "block_ms": BLOCK_MS},
    }
    return load_all_settings(overrides, opts.config_file, **common)


def _tune_builder(settings: dict[str, Any], rule_timeframes: set[str], live: bool) -> None:
    """candle_builder builds the timeframes asked for (or its configured ones) and every timeframe a rule reads;
    in-progress candles only when a rule reads them (``live``), throttled in exchange time
    (``live_throttle_clock: exchange``) and never trimmed, so what such a rule sees does not depend on the
    backtest's speed."""
    builder = settings["candle_builder"]
    timeframes = sort_timeframes(set(builder.timeframes) | rule_timeframes)
    # every closed candle is exported (no trimming of a temporary Redis); no timer closes (exchange time only)
    settings["candle_builder"] = builder.model_copy(update={
        "timeframes": timeframes, "candles_maxlen": 10**9, "candle_retention": {}, "part_candles_maxlen": 10**9,
        "live_candles": live, "live_throttle_clock": "exchange", "live_maxlen": 10**9, "close_on_timer": False,
        "discover_every_s": 0.5})
