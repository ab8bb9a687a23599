"""``sentinel demo`` and ``sentinel up``: the services together on one Redis (``sentinel backtest``: sentinel/backtest)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sentinel import export
from sentinel.pipeline import (APP_CLASSES, Pipeline, add_service, data_dir_or_temp, load_all_settings, service_classes,
                               wait_drained)
from shared.embedded_redis import EmbeddedRedis
from shared.errors import ConfigError
from shared.fmt import plain
from shared.logs import redact
from shared.runtime import connect, install_signal_handlers

logger = logging.getLogger(__name__)
console = Console()


@dataclass
class RunOptions:
    """What demo and backtest have in common."""

    trades_file: Path | None = None
    rules_file: Path | None = None
    exchange: str | None = None
    symbol: str | None = None
    timeframes: list[str] | None = None
    data_dir: Path | None = None
    config_file: Path | None = None
    minutes: int = 180
    seed: int = 7
    notify_console: bool = True
    jsonl_path: Path | None = None
    live: bool = False  # through the local exchange and ccxt.pro instead of publishing the simulation directly
    live_speed: float = 60.0
    exchange_clock: bool = False  # alert_engine compares snoozes with exchange time (a deterministic backtest)


def _service_settings(opts: RunOptions, redis_url: str, data_dir: Path) -> dict:
    common = {"redis_url": redis_url, "data_dir": data_dir, "redis_wait_replicas": 0}  # (embedded: no replica)
    feed: dict = {}
    if opts.trades_file is not None:
        feed.update(mode="replay", replay_file=opts.trades_file, speed=0)
        if opts.exchange:
            feed["exchange"] = opts.exchange
        if opts.symbol:
            feed["symbol"] = opts.symbol
    else:
        feed.update(mode="simulated", speed=0, sim_seed=opts.seed, sim_minutes=opts.minutes,
                    exchange=opts.exchange or "sim")
    builder: dict = {}
    if opts.timeframes:
        builder["timeframes"] = opts.timeframes
    engine: dict = {}
    if opts.rules_file is not None:
        engine["rules_file"] = opts.rules_file
    if opts.exchange_clock:
        engine["clock"] = "exchange"
    notifier: dict = {"console": opts.notify_console,
                      "jsonl_path": opts.jsonl_path or data_dir / "alerts.jsonl"}
    overrides = {"market_feed": feed, "candle_builder": builder, "alert_engine": engine, "notifier": notifier}
    out = load_all_settings(overrides, opts.config_file, **common)
    out["market_feed"] = _simulated_label(out["market_feed"])
    if opts.trades_file is not None and not opts.symbol:
        try:
            out["market_feed"].resolved_symbol()
        except ConfigError:  # said in the words of the command line, before anything starts
            raise ConfigError(f"{opts.trades_file}: cannot tell the symbol from the file name; give it with --symbol, "
                              "e.g. --symbol BTC/USDT") from None
    return out


def _build_pipeline(redis, settings: dict, with_notifier: bool = True, with_feed: bool = True) -> Pipeline:
    pipeline = Pipeline(redis)
    names = ["candle_builder", "alert_engine"] + ["notifier"] * with_notifier + ["market_feed"] * with_feed
    for name in names:
        add_service(pipeline, name, settings[name])
    return pipeline


# The local exchange speaks Binance's protocols (ccxt ids binance, binanceusdm) but what it serves is simulated:
# published under these names (see _simulated_label), never a real exchange's.
SIM_SPOT, SIM_FUTURES = "sim", "sim-usdm"


class _LiveSource:
    """The true live path offline: the local exchange (Binance's protocol, fed by the simulated market) and
    market_feed in live mode reading it through ccxt.pro — reconnects, backfill and dedup included."""

    def __init__(self, opts: RunOptions, feed_settings, redis) -> None:
        self.opts, self.feed_settings, self.redis = opts, feed_settings, redis
        self.stop = asyncio.Event()

    async def start(self) -> None:
        from services.exchange_sim.app import build
        from services.exchange_sim.settings import Settings as SimSettings

        self.sim = build(SimSettings(port=0, seed=self.opts.seed, duration_s=self.opts.minutes * 60,
                                     speed=self.opts.live_speed, wait_for_client=True))
        await self.sim.start()
        from services.market_feed.settings import ExchangeFeed

        settings = self.feed_settings.model_copy(update={
            "mode": "live", "exchanges": [ExchangeFeed(**self.sim.feed_config(), name=SIM_SPOT)],
            # ccxt hands trades over only when the next frame arrives: a short silence timeout makes the feed
            # fetch the last trades of the finite simulation by REST instead of waiting for a frame that never comes.
            "silence_timeout_s": 2.0, **_book_feeds(self.sim)})
        self.app = service_classes("market_feed")[1](settings, self.redis)
        self.task = asyncio.create_task(self.app.run(self.stop), name="market_feed")

    def caught_up(self) -> bool:
        if self.task.done():
            self.task.result()  # surface the error
            return True
        if not self.sim.finished.is_set():
            return False
        # The finite market has ended: the feed's silence timeouts and ticker time-outs that follow are expected
        # (they fetch the last trades by REST), not news for the user.
        logging.getLogger("services.market_feed.adapters").setLevel(logging.ERROR)
        want = {(SIM_SPOT, sym): last for sym, last in self.sim.last_ids().items()}
        return self.app.live is not None and self.app.live.last_ids() == want

    async def finish(self) -> None:
        self.stop.set()
        await self.task
        await self.app.live.publish_final_watermarks()
        await self.sim.stop()

    @property
    def published(self) -> int:
        return getattr(self.app, "published_trades", 0) if hasattr(self, "app") else 0


def _book_feeds(sim: Any) -> dict[str, Any]:
    """market_feed's ``books`` and ``derivatives`` sections pointing at the local exchange's order books and USD-M
    perpetuals (when it serves them: Binance's protocol)."""
    if not getattr(sim, "perps", None):
        return {}
    from services.market_feed.book_settings import BookFeedSettings, DerivsFeedSettings

    symbols = list(sim.books)
    return {"books": [BookFeedSettings(name=SIM_SPOT, symbols=symbols, ws_url=sim.ws_url, rest_url=sim.rest_url,
                                       publish_every_ms=250)],
            "derivatives": [DerivsFeedSettings(name=SIM_FUTURES, symbols=[f"{s}:{s.split('/')[1]}" for s in symbols],
                                               ws_url=sim.futures_ws_url, rest_url=sim.futures_rest_url,
                                               open_interest_every_s=2.0)]}


async def _run_to_end(opts: RunOptions, data_dir: Path, *, with_notifier: bool, progress: bool):
    """Start an embedded Redis in ``data_dir``, run the pipeline over the finite source, return what it made."""
    server = EmbeddedRedis(data_dir / "redis", persist=True)
    server.start()
    redis = connect(server.url)
    started = time.monotonic()
    live_source: _LiveSource | None = None
    pipeline: Pipeline | None = None
    try:
        settings = _service_settings(opts, server.url, data_dir)
        pipeline = _build_pipeline(redis, settings, with_notifier=with_notifier, with_feed=not opts.live)
        install_signal_handlers(pipeline.stop)
        pipeline.start()
        if opts.live:
            live_source = _LiveSource(opts, settings["market_feed"], redis)
            await live_source.start()
            published = lambda: live_source.published  # noqa: E731
            source_done = live_source.caught_up
        else:
            feed = pipeline.apps["market_feed"]
            published = lambda: getattr(feed, "published_trades", 0)  # noqa: E731
            source_done = lambda: bool(getattr(feed, "done", False))  # noqa: E731
        status = console.status("starting…") if progress else contextlib.nullcontext()
        with status as live:
            def tick() -> None:
                if live is not None:
                    state = "published" if source_done() else "publishing"
                    via = " via ccxt.pro" if opts.live else ""
                    live.update(f"{state} {published():,} trades{via} · building candles · evaluating rules "
                                f"({time.monotonic() - started:.0f}s)")

            async def run_source_then_drain() -> None:
                if live_source is not None:
                    await wait_drained(redis, source_done, pipeline, on_tick=tick, settle=0.0)
                    await live_source.finish()
                await wait_drained(redis, source_done if live_source is None else (lambda: True), pipeline,
                                   on_tick=tick)

            stopper = asyncio.ensure_future(pipeline.stop.wait())
            drained = asyncio.ensure_future(run_source_then_drain())
            done, _ = await asyncio.wait({stopper, drained}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if drained in done:
                drained.result()
            else:
                drained.cancel()
                console.print("[yellow]interrupted[/]")
        await pipeline.shutdown()
        series = await export.candle_series(redis)
        candles = {s: await export.closed_candles(redis, *s) for s in series}
        alerts = await export.alerts(redis)
        return {"trades": published(), "candles": candles, "alerts": alerts,
                "seconds": time.monotonic() - started}
    finally:
        if live_source is not None and hasattr(live_source, "task"):
            live_source.stop.set()
            live_source.task.cancel()
            with contextlib.suppress(BaseException):
                await live_source.task
            with contextlib.suppress(Exception):
                await live_source.sim.stop()
        if pipeline is not None:  # stopped before Redis, not left retrying against a server that went away
            with contextlib.suppress(Exception):
                await pipeline.shutdown()
        await redis.aclose()
        server.stop()


def _summary(stats: dict) -> None:
    table = Table(title="candles made", show_edge=False)
    for col in ("exchange", "symbol", "tf", "candles", "first (UTC)", "last close"):
        table.add_column(col)
    for (ex, sym, tf), candles in stats["candles"].items():
        if candles:
            first = time.strftime("%m-%d %H:%M", time.gmtime(candles[0].ts / 1000))
            table.add_row(ex, sym, tf, str(len(candles)), first, plain(candles[-1].close))
    console.print(table)
    alerts = stats["alerts"]
    by_rule = Counter((a.rule, a.symbol, a.timeframe or "-") for a in alerts)
    table = Table(title=f"alerts fired: {len(alerts)}", show_edge=False)
    for col in ("rule", "symbol", "timeframe", "count"):
        table.add_column(col)
    for (rule, sym, tf), n in sorted(by_rule.items()):
        table.add_row(rule, sym, tf, str(n))
    console.print(table)
    rate = stats["trades"] / stats["seconds"] if stats["seconds"] else 0
    console.print(f"{stats['trades']:,} trades in {stats['seconds']:.1f}s ({rate:,.0f} trades/s end to end)")


def demo(opts: RunOptions) -> None:
    """The whole pipeline offline on the simulated market (or a recording), then a summary."""
    with data_dir_or_temp(opts.data_dir) as data_dir:
        if opts.trades_file:
            source = f"[green]replay of {opts.trades_file}[/]"
        else:
            source = f"[yellow]simulated market ({opts.minutes} min, seed {opts.seed}; not real prices)[/]"
        if opts.live:
            source += f" → local exchange (Binance protocol, ×{opts.live_speed:g}) → ccxt.pro"
        console.print(f"[bold]sentinel demo[/]: {source} → market_feed → candle_builder → alert_engine → notifier",
                      highlight=False)
        console.print("  the dashboard is served by `sentinel up` (http://127.0.0.1:8000); the demo ends with its "
                      "data", style="dim", highlight=False)
        stats = asyncio.run(_run_to_end(opts, data_dir, with_notifier=True, progress=True))
        _summary(stats)
        jsonl = opts.jsonl_path or data_dir / "alerts.jsonl"
        if opts.data_dir:
            console.print(f"alerts written to {jsonl}; Redis data (AOF) in {data_dir / 'redis'}")


def describe_feed(feed: Any) -> str:
    """What market data a run watches, in words: "simulated market: …", "live: binance BTC/USDT, …", "replay of …"."""
    if feed.mode == "live":
        return "live: " + "; ".join(f"{e.name} {', '.join(e.symbols)}" for e in feed.exchanges)
    pace = "as fast as it can" if not feed.speed else ("real time" if feed.speed == 1 else f"{feed.speed:g}× real time")
    if feed.mode == "replay":
        return f"replay of {feed.replay_file} as {feed.resolved_exchange()} {feed.resolved_symbol()} ({pace})"
    length = f"{feed.sim_duration_s / 60:g} simulated minutes" if feed.sim_duration_s else "until stopped"
    return (f"simulated market: {', '.join(feed.sim_symbols)} on exchange {feed.resolved_exchange()!r} "
            f"({pace}, {length}) — not real prices")


def _check_config(config_file: Path | None) -> None:
    """A settings file that configures services but has no ``market_feed`` section is a mistake (it used to run the
    simulator, looking live): ConfigError naming the file and the section."""
    from shared.yamlfile import load_yaml_file

    if config_file is None or "SENTINEL_MODE" in os.environ:
        return
    data, _ = load_yaml_file(config_file)
    if isinstance(data, dict) and "market_feed" not in data:
        raise ConfigError(f"{config_file}: no market_feed section — say which market data to watch, e.g.\n"
                          "market_feed:\n  mode: live\n  exchanges:\n    - {id: binance, symbols: [BTC/USDT]}\n"
                          "(or mode: replay with replay_file, or mode: simulated for made-up prices)")


def _simulated_label(feed: Any) -> Any:
    """Simulated data is labelled ``sim`` unless named otherwise, and never with a real exchange's id."""
    if feed.mode != "simulated":
        return feed
    if feed.exchange is None:
        return feed.model_copy(update={"exchange": "sim"})
    if not feed.exchange.startswith("sim"):
        raise ConfigError(f"market_feed.exchange — {feed.exchange!r} labels simulated prices with what reads as a "
                          "real exchange id; leave it out (labelled 'sim') or choose a name starting with 'sim'")
    return feed


def up_settings(config_file: Path | None, redis_url: str) -> dict[str, Any]:
    """Every service's settings for ``sentinel up`` (ConfigError listing every problem of every section)."""
    _check_config(config_file)
    overrides: dict[str, dict[str, Any]] = {name: {} for name in APP_CLASSES}
    if config_file is None and "SENTINEL_MODE" not in os.environ:
        # Without a settings file, `up` runs the simulated market in real time until stopped.
        overrides["market_feed"] = {"mode": "simulated", "speed": 1.0, "sim_duration_s": None}
    out = load_all_settings(overrides, config_file, redis_url=redis_url)
    out["market_feed"] = _simulated_label(out["market_feed"])
    return out


def _banner(settings: dict[str, Any], config_file: Path | None, redis_url: str, embedded: bool, api_url: str) -> None:
    feed = settings["market_feed"]
    source = describe_feed(feed)
    colour = "green" if feed.mode == "live" else "yellow"
    console.print(f"[bold]sentinel up[/] — [{colour}]{source}[/]", highlight=False, soft_wrap=True)
    if config_file is None:
        console.print("  no settings file: give --config sentinel.yaml for live market data (README, Live market "
                      "data)", style="dim", highlight=False, soft_wrap=True)
    rows = [("dashboard", api_url), ("API docs", f"{api_url}/docs"),
            ("rules", str(settings["alert_engine"].rules_file)),
            ("redis", f"embedded, data in {Path(settings['market_feed'].data_dir) / 'redis'}" if embedded
             else redact(redis_url))]
    for label, value in rows:
        console.print(f"  {label:<10} {value}", highlight=False, soft_wrap=True)
    console.print("  Ctrl-C stops", style="dim")


async def _up(settings: dict[str, Any], config_file: Path | None, redis_url: str, embedded: bool) -> None:
    redis = connect(redis_url)
    pipeline = Pipeline(redis)
    for name, service_settings in settings.items():
        add_service(pipeline, name, service_settings)
    install_signal_handlers(pipeline.stop)
    pipeline.start()
    try:
        api = pipeline.apps["api"]
        while not api.started.is_set():  # the banner names the dashboard's URL once it listens
            if failure := pipeline.failed():
                raise failure
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(api.started.wait(), timeout=0.1)
        _banner(settings, config_file, redis_url, embedded, api.url)
        while not pipeline.stop.is_set():
            if failure := pipeline.failed():
                raise failure
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pipeline.stop.wait(), timeout=0.5)
    finally:
        await pipeline.shutdown()
        await redis.aclose()


def up(config_file: Path | None) -> None:
    """Every service and the API in one process; an embedded Redis unless REDIS_URL is set."""
    from shared import metrics
    from shared.config import ServiceSettings
    from shared.logs import setup_logging
    from shared.runtime import redis_url_or_embedded

    from shared.embedded_redis import running_url

    common = ServiceSettings.load(config_file)
    setup_logging(common.log_level)
    if not common.redis_url and (running := running_url(Path(common.data_dir) / "redis")):
        raise ConfigError(f"another sentinel runs with its data in {common.data_dir} (its Redis answers at {running}): "
                          "stop it first, or give this one another data_dir (SENTINEL_DATA_DIR)")
    from services.api.app import check_port

    check_port(up_settings(config_file, common.redis_url or "redis://check-only")["api"])  # before anything starts
    metrics.serve(common)  # one endpoint for the whole process (metrics_port)
    with redis_url_or_embedded(common.redis_url, common.data_dir) as url:
        asyncio.run(_up(up_settings(config_file, url), config_file, url, embedded=not common.redis_url))
