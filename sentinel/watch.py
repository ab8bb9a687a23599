"""``sentinel watch``: a live terminal view (rich) through ``sentinel.client`` — last price, in-progress candle, rule
states and the alert feed, and where market_feed publishes them the pairs' order books (top levels, imbalance per
band) and their perpetuals' futures figures. For servers where no desktop is at hand.
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
from shared.book_messages import BookSnapshot
from shared.candle_series import all_series, partition_count
from shared.derivs_messages import FundingRate, Liquidation, OpenInterest
from shared.fmt import plain
from shared.runtime import connect
from shared.schemas import Alert, Candle, Ticker

Series = tuple[str, str, str]
Pair = tuple[str, str]
BOOK_LEVELS = 5
LIQUIDATION_WINDOW_MS = 5 * 60_000

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
    perps: list[Pair] = field(default_factory=list)  # perpetuals of the series' pairs with futures data
    books: dict[Pair, BookSnapshot] = field(default_factory=dict)
    futures: dict[Pair, dict[str, Any]] = field(default_factory=dict)  # funding, open_interest, liquidations

    def apply(self, event: Event) -> None:
        value = event.value
        if event.kind == "reconnected":
            self.reconnects += 1
        elif isinstance(value, BookSnapshot):
            shown = self.books.get((value.exchange, value.symbol))
            if shown is None or value.ts >= shown.ts:
                self.books[(value.exchange, value.symbol)] = value
        elif isinstance(value, (FundingRate, OpenInterest, Liquidation)):
            f = self.futures.setdefault((value.exchange, value.symbol), {"liquidations": deque(maxlen=500)})
            if isinstance(value, Liquidation):
                f["liquidations"].append(value)
            else:
                f[value.kind] = value
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
        extra = ([self.render_books()] if self.books else []) + ([self.render_futures()] if self.futures else [])
        return Group(strip, market, *extra, rules, feed, footer)

    def render_books(self) -> Table:
        """Per pair: the best levels, mid / spread / microprice, the imbalance of each band as a gauge."""
        table = Table(title="order books", expand=True)
        for col in ("pair", f"bids (top {BOOK_LEVELS})", f"asks (top {BOOK_LEVELS})", "mid · spread bps · microprice",
                    "imbalance (bid - ask) / (bid + ask)"):
            table.add_column(col, justify="right" if col.startswith("bids") else "left")
        for (ex, sym), b in sorted(self.books.items()):
            bids = "\n".join(f"{plain(s)} @ {plain(p)}" for p, s in b.bids[:BOOK_LEVELS])
            asks = "\n".join(f"{plain(p)} x {plain(s)}" for p, s in b.asks[:BOOK_LEVELS])
            figures = f"{plain(b.mid, '–')}\n{_short(b.spread_bps)} bps\n{_short(b.microprice, 10)}"
            gauges = Text()
            for band in b.bands:
                gauges.append(f"±{plain(band.bps)} bps ")
                gauges.append_text(_gauge(band.imbalance))
                gauges.append(f" {_short(band.imbalance, 3)}\n")
            table.add_row(f"{ex} {sym}\n{_utc(b.ts)}", Text(bids, style="green"), Text(asks, style="red"), figures,
                          gauges)
        return table

    def render_futures(self) -> Table:
        """Per perpetual: mark, index, basis, funding, open interest, liquidations of the last 5 minutes."""
        table = Table(title="futures", expand=True)
        for col in ("contract", "mark", "index", "basis bps", "funding", "next funding", "open interest",
                    "liquidations 5m (longs / shorts)"):
            table.add_column(col, justify="left" if col == "contract" else "right")
        for (ex, sym), f in sorted(self.futures.items()):
            fr, oi = f.get("funding"), f.get("open_interest")
            now = max([x.ts for x in (fr, oi) if x is not None] + [x.ts for x in f["liquidations"]] or [0])
            recent = [x for x in f["liquidations"] if x.ts > now - LIQUIDATION_WINDOW_MS]
            longs = sum((x.amount for x in recent if x.side == "sell"), Decimal(0))
            shorts = sum((x.amount for x in recent if x.side == "buy"), Decimal(0))
            table.add_row(f"{ex} {sym}", plain(fr.mark_price) if fr else "–",
                          plain(fr.index_price, "–") if fr else "–", _short(fr.basis_bps, 4) if fr else "–",
                          plain(fr.funding_rate, "–") if fr else "–", _utc(fr.next_funding_ts) if fr else "–",
                          plain(oi.amount) if oi else "–", f"{len(recent)}: {plain(longs)} / {plain(shorts)}")
        return table


def _short(x: Decimal | None, digits: int = 6) -> str:
    """A computed quotient (28 digits) to ``digits`` significant digits, for the eye; exact figures stay ``plain``."""
    return "–" if x is None else f"{x:.{digits}g}"


def _gauge(x: Decimal | None, width: int = 21) -> Text:
    """An imbalance in [-1, 1] as a bar from the centre: right (green) when bids outweigh asks."""
    if x is None:
        return Text("·" * width, style="dim")
    half = width // 2
    n = min(half, round(abs(float(x)) * half))
    cells = ["·"] * width
    cells[half] = "|"
    for i in range(1, n + 1):
        cells[half + i if x > 0 else half - i] = "█"
    return Text("".join(cells), style="green" if x > 0 else "red" if x < 0 else "")


def parse_series(values: list[str]) -> list[Series]:
    out = []
    for value in values:
        parts = value.split("|")
        if len(parts) != 3 or not all(parts):
            raise typer.BadParameter(f"{value!r}: expected exchange|symbol|timeframe, e.g. binance|BTC/USDT|1m")
        out.append((parts[0], parts[1] if "/" in parts[1] else parts[1].replace("-", "/", 1), parts[2]))
    return out


async def discover_series(redis_url: str, timeframe: str = "1m", most: int = 6) -> list[Series]:
    """Series candle_builder publishes (every partition's ``streams.part_candle_registry``) of one timeframe."""
    redis = connect(redis_url)
    try:
        found = await all_series(redis, await partition_count(redis))
    finally:
        await redis.aclose()
    return [s for s in found if s[2] == timeframe][:most]


async def discover_perpetuals(redis_url: str, pairs: list[Pair]) -> list[Pair]:
    """(exchange, contract) with futures data (``streams.BOOK_REGISTRY``) whose contract is one of the pairs' symbols
    or ``symbol:SETTLE``."""
    redis = connect(redis_url)
    try:
        members = await redis.smembers(streams.BOOK_REGISTRY)
    finally:
        await redis.aclose()
    symbols = {sym for _, sym in pairs}
    out = set()
    for member in members:
        parts = streams.split_registry_member(member)
        if len(parts) == 3 and parts[2] == "derivs" and parts[1].split(":", 1)[0] in symbols:
            out.add((parts[0], parts[1]))
    return sorted(out)


async def run_watch(client: SentinelClient, view: WatchView, stop: asyncio.Event, *, console: Console | None = None,
                    refresh_s: float = 0.5, rules_every_s: float = 2.0) -> None:
    """Follow the live events and refresh the rule states until ``stop`` is set."""
    async def follow() -> None:
        pairs = sorted({s[:2] for s in view.series})
        async with contextlib.aclosing(client.subscribe(series=view.series, alerts=True, tickers=pairs, books=pairs,
                                                        derivs=view.perps)) as events:
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
        perps = await discover_perpetuals(redis_url, sorted({s[:2] for s in chosen}))
        async with SentinelClient(redis_url, api_url=api, token=token) as client:
            await run_watch(client, WatchView(chosen, perps=perps), stop, console=console)

    asyncio.run(main())
