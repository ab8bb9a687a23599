"""``sentinel watch``: a live terminal view (rich) through ``sentinel.client`` — last price, in-progress candle, rule
states and the alert feed. For servers where no desktop is at hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sentinel.client import ClientError, Event, SentinelClient, embedded_redis_url
from shared import streams
from shared.fmt import plain
from shared.runtime import connect
from shared.schemas import Alert, Candle, Ticker

Series = tuple[str, str, str]

#: The pipeline strip (the dashboard's shows the same, from the same ``GET /status``): totals shown with their rate,
#: then levels.
RATES = (("trades_in", "trades"), ("candles_closed", "candles"), ("alerts_fired", "alerts"),
         ("notifications_sent", "sent"))
LEVELS = (("lag", "lag"), ("pending", "pending"), ("notifications_dead", "undelivered"),
          ("dead_letters", "dead letters"))


@dataclass
class PipelineFigures:
    """The last ``GET /status`` reading and the rates since the one before (a total that went down — a process
    restarted — counts as 0/s, as Prometheus' ``rate`` treats a reset)."""

    last: dict[str, Any] | None = None
    rates: dict[str, float] = field(default_factory=dict)

    def update(self, status: dict[str, Any]) -> None:
        prev = self.last
        if prev is not None and status["ts"] > prev["ts"]:
            seconds = (status["ts"] - prev["ts"]) / 1000
            self.rates = {k: max(0, status["figures"].get(k, 0) - prev["figures"].get(k, 0)) / seconds
                          for k, _ in RATES}
        self.last = status

    def line(self) -> str:
        if self.last is None:
            return "pipeline: –"
        figures = self.last["figures"]
        parts = [f"{label} {figures.get(k, 0):,}" + (f" ({self.rates[k]:,.1f}/s)" if k in self.rates else "")
                 for k, label in RATES]
        parts += [f"{label} {figures.get(k, 0):,}" for k, label in LEVELS]
        replicas = self.last.get("services", {})
        parts.append("replicas " + (" ".join(f"{s} {n}" for s, n in sorted(replicas.items())) or "none"))
        return " · ".join(parts)


def _utc(ms: int | None) -> str:
    return "–" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class WatchView:
    """What the terminal shows; ``apply`` folds live events in, ``render`` draws it."""

    series: list[Series]
    live: dict[Series, Candle] = field(default_factory=dict)
    closed: dict[Series, Candle] = field(default_factory=dict)
    cvd: dict[Series, Decimal] = field(default_factory=dict)
    tickers: dict[tuple[str, str], Ticker] = field(default_factory=dict)
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=15))
    rules: list[dict[str, Any]] = field(default_factory=list)
    status: str = "connecting"
    reconnects: int = 0
    pipeline: PipelineFigures = field(default_factory=PipelineFigures)

    def apply(self, event: Event) -> None:
        value = event.value
        if event.kind == "reconnected":
            self.reconnects += 1
        elif isinstance(value, Candle):
            key = (value.exchange, value.symbol, value.timeframe)
            if event.kind == "candle":
                known = self.closed.get(key)
                if known is None or value.ts > known.ts:
                    self.cvd[key] = self.cvd.get(key, Decimal(0)) + value.delta
                    self.closed[key] = value
            else:
                self.live[key] = value
        elif isinstance(value, Ticker):
            self.tickers[(value.exchange, value.symbol)] = value
        elif isinstance(value, Alert):
            self.alerts.appendleft(value)

    def last_price(self, key: Series) -> Decimal | None:
        ticker = self.tickers.get(key[:2])
        if ticker is not None and ticker.last is not None:
            return ticker.last
        for candle in (self.live.get(key), self.closed.get(key)):
            if candle is not None:
                return candle.close
        return None

    def render(self) -> Group:
        market = Table(title="market", expand=True)
        for col in ("series", "last", "bar start", "open", "high", "low", "close", "volume", "delta", "CVD (watch)"):
            market.add_column(col, justify="left" if col in ("series", "bar start") else "right")
        for key in self.series:
            c = self.live.get(key) or self.closed.get(key)
            last = self.last_price(key)
            cells = [f"{key[0]} {key[1]} {key[2]}", plain(last, "–")]
            if c is None:
                cells += ["–"] * 7 + [plain(self.cvd.get(key), "–")]
            else:
                delta = c.delta
                cells += [_utc(c.ts), plain(c.open), plain(c.high), plain(c.low), plain(c.close), plain(c.volume),
                          Text(plain(delta), style="green" if delta >= 0 else "red"),
                          plain(self.cvd.get(key, Decimal(0)) + (delta if c is self.live.get(key) else 0))]
            market.add_row(*cells)
        rules = Table(title="rules", expand=True)
        for col in ("rule", "series", "state", "last fired", "cooldown left"):
            rules.add_column(col)
        for r in self.rules:
            style = {"firing": "bold red", "pending": "yellow"}.get(r.get("state", ""), "")
            cooldown = "forever" if r.get("cooldown_forever") else f"{r.get('cooldown_left_s', 0):.0f}s"
            rules.add_row(r.get("rule", "?"), f"{r.get('symbol') or ''} {r.get('timeframe') or ''}",
                          Text(str(r.get("state")), style=style), _utc(r.get("last_fired")), cooldown)
        feed = Table(title="alerts", expand=True)
        for col in ("candle", "rule", "series", "price", "message"):
            feed.add_column(col)
        for a in self.alerts:
            feed.add_row(_utc(a.ts), Text(a.rule, style={"critical": "bold red", "warning": "yellow"}.get(
                a.severity, "")), f"{a.symbol} {a.timeframe or ''}", plain(a.price, "–"), a.message)
        strip = Text(self.pipeline.line())
        footer = Text(f"{self.status} · reconnects {self.reconnects} · Ctrl-C quits", style="dim")
        return Group(strip, market, rules, feed, footer)


def parse_series(values: list[str]) -> list[Series]:
    out = []
    for value in values:
        parts = value.split("|")
        if len(parts) != 3 or not all(parts):
            raise typer.BadParameter(f"{value!r}: expected exchange|symbol|timeframe, e.g. binance|BTC/USDT|1m")
        out.append((parts[0], parts[1] if "/" in parts[1] else parts[1].replace("-", "/", 1), parts[2]))
    return out


async def discover_series(redis_url: str, timeframe: str = "1m", most: int = 6) -> list[Series]:
    """Series candle_builder publishes (``streams.CANDLE_REGISTRY``) of one timeframe."""
    redis = connect(redis_url)
    try:
        members = await redis.smembers(streams.CANDLE_REGISTRY)
    finally:
        await redis.aclose()
    found = sorted(tuple(streams.split_registry_member(m)) for m in members)
    return [s for s in found if len(s) == 3 and s[2] == timeframe][:most]  # type: ignore[misc]


async def run_watch(client: SentinelClient, view: WatchView, stop: asyncio.Event, *, console: Console | None = None,
                    refresh_s: float = 0.5, rules_every_s: float = 2.0) -> None:
    """Follow the live events and refresh the rule states until ``stop`` is set."""
    async def follow() -> None:
        async with contextlib.aclosing(client.subscribe(series=view.series, alerts=True,
                                                        tickers=sorted({s[:2] for s in view.series}))) as events:
            view.status = "live"
            async for event in events:
                view.apply(event)

    async def poll_rules() -> None:
        while True:
            if client.api_url:
                try:
                    view.rules = await client.rule_states()
                    view.pipeline.update(await client.pipeline_status())
                    if not view.alerts:
                        for a in reversed(await client.alert_history(limit=view.alerts.maxlen or 15)):
                            view.alerts.appendleft(a)
                except ClientError as exc:
                    view.status = f"API: {exc}"[:120]
            await asyncio.sleep(rules_every_s)

    tasks = [asyncio.create_task(follow()), asyncio.create_task(poll_rules())]
    try:
        if console is None:
            await stop.wait()
        else:
            with Live(view.render(), console=console, refresh_per_second=4, screen=False) as live:
                while not stop.is_set():
                    live.update(view.render())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), refresh_s)
                live.update(view.render())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def watch_command(
    series: Annotated[Optional[list[str]], typer.Option(
        "--series", "-s", help="exchange|symbol|timeframe, repeatable (default: every 1m series found).")] = None,
    redis_url: Annotated[Optional[str], typer.Option(envvar="REDIS_URL", help="Redis of the running sentinel.")]
    = None,
    api: Annotated[Optional[str], typer.Option(envvar="SENTINEL_API_URL", help="API for rule states and history.")]
    = "http://127.0.0.1:8000",
    token: Annotated[Optional[str], typer.Option(envvar="SENTINEL_API_TOKEN", help="Bearer token of the API.")]
    = None,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")]
    = None,
) -> None:
    """Live terminal view: last price, in-progress candle, rule states and the alert feed."""
    redis_url = redis_url or embedded_redis_url()
    if not redis_url:
        raise typer.BadParameter("set REDIS_URL (or --redis-url) to the Redis of the running sentinel",
                                 param_hint="--redis-url")
    console = Console()

    async def main() -> None:
        chosen = parse_series(series) if series else await discover_series(redis_url)
        if not chosen:
            console.print("[yellow]no series yet (nothing in the candle registry); give --series[/]")
            return
        stop = asyncio.Event()
        from shared.runtime import install_signal_handlers
        install_signal_handlers(stop)
        if duration:
            asyncio.get_running_loop().call_later(duration, stop.set)
        async with SentinelClient(redis_url, api_url=api, token=token) as client:
            await run_watch(client, WatchView(chosen), stop, console=console)

    asyncio.run(main())
