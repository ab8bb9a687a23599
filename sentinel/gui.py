"""``sentinel gui``: a DearPyGui panel (what trade_suite is built on) — a live candle chart, its CVD and the alert
feed — fed by ``sentinel.client``: history from the API, live updates from the Redis channels.

DearPyGui is driven from the asyncio loop (one frame per tick), so the client's coroutines and the GUI share one
thread and no locking is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Optional

import typer

from sentinel.client import ClientError, Event, SentinelClient, embedded_redis_url
from shared.schemas import Alert, Candle

logger = logging.getLogger(__name__)

BULL = (38, 166, 154, 255)
BEAR = (239, 83, 80, 255)


@dataclass
class PanelData:
    """The panel's model: candles of one series (closed by bucket, plus the in-progress one) and the alert feed."""

    series: tuple[str, str, str]
    closed: dict[int, Candle] = field(default_factory=dict)
    live: Candle | None = None
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=200))
    dirty: bool = True
    received: dict[str, int] = field(default_factory=dict)  # events applied, by where they came from

    def apply(self, event: Event, origin: str = "live") -> None:
        value = event.value
        if isinstance(value, Candle) and (value.exchange, value.symbol, value.timeframe) == self.series:
            key = f"{origin}_{event.kind}"
            self.received[key] = self.received.get(key, 0) + 1
            if value.closed:
                known = self.closed.get(value.ts)
                if known is None or value.revision >= known.revision:
                    self.closed[value.ts] = value
                if self.live is not None and self.live.ts <= value.ts:
                    self.live = None
            else:
                self.live = value
            self.dirty = True
        elif isinstance(value, Alert) and all(a.id != value.id for a in self.alerts):
            self.received[f"{origin}_alert"] = self.received.get(f"{origin}_alert", 0) + 1
            self.alerts.appendleft(value)
            self.dirty = True

    def bars(self) -> list[Candle]:
        out = [self.closed[ts] for ts in sorted(self.closed)]
        if self.live is not None and (not out or self.live.ts > out[-1].ts):
            out.append(self.live)
        return out


class GuiPanel:
    """The DearPyGui widgets over a ``PanelData``."""

    def __init__(self, data: PanelData, width: int = 1024, height: int = 768) -> None:
        self.data = data
        self.width, self.height = width, height

    def build(self) -> None:
        import dearpygui.dearpygui as dpg

        dpg.create_context()
        ex, sym, tf = self.data.series
        with dpg.window(tag="main", label="sentinel"):
            dpg.add_text(f"{ex} {sym} {tf}", tag="title")
            with dpg.group(horizontal=True):
                with dpg.group(width=int(self.width * 0.68)):
                    with dpg.plot(label="candles", height=int(self.height * 0.58), width=-1):
                        dpg.add_plot_axis(dpg.mvXAxis, scale=dpg.mvPlotScale_Time, tag="x")
                        with dpg.plot_axis(dpg.mvYAxis, label="price", tag="y"):
                            dpg.add_candle_series([], [], [], [], [], tag="candles", bull_color=BULL,
                                                  bear_color=BEAR, time_unit=dpg.mvTimeUnit_S)
                    with dpg.plot(label="CVD", height=int(self.height * 0.3), width=-1):
                        dpg.add_plot_axis(dpg.mvXAxis, scale=dpg.mvPlotScale_Time, tag="cvd_x")
                        with dpg.plot_axis(dpg.mvYAxis, label="cvd", tag="cvd_y"):
                            dpg.add_line_series([], [], tag="cvd")
                with dpg.child_window(width=-1, height=-1, tag="alerts_box"):
                    dpg.add_text("alerts", color=(240, 180, 41, 255))
                    dpg.add_listbox([], tag="alerts", num_items=30, width=-1)
        dpg.create_viewport(title="sentinel", width=self.width, height=self.height)
        dpg.setup_dearpygui()
        dpg.show_viewport()
        dpg.set_primary_window("main", True)

    def refresh(self) -> None:
        import dearpygui.dearpygui as dpg

        if not self.data.dirty:
            return
        self.data.dirty = False
        bars = self.data.bars()
        dates = [c.ts / 1000 for c in bars]
        dpg.configure_item("candles", dates=dates, opens=[float(c.open) for c in bars],
                           closes=[float(c.close) for c in bars], lows=[float(c.low) for c in bars],
                           highs=[float(c.high) for c in bars])
        total = Decimal(0)
        cvd = []
        for c in bars:
            total += c.delta
            cvd.append(float(total))
        dpg.set_value("cvd", [dates, cvd])
        if bars:
            for axis in ("x", "y", "cvd_x", "cvd_y"):
                dpg.fit_axis_data(axis)
            last = bars[-1]
            dpg.set_value("title", f"{' '.join(self.data.series)}   last {last.close}   bars {len(bars)}")
        dpg.configure_item("alerts", items=[
            f"{datetime.fromtimestamp(a.ts / 1000, UTC):%H:%M} {a.rule} {a.symbol} @ {a.price or '-'}"
            for a in self.data.alerts])


async def run_gui(client: SentinelClient, series: tuple[str, str, str], *, duration: float | None = None,
                  screenshot: Path | None = None, summary: Path | None = None, history: int = 300) -> PanelData:
    """Show the panel until the window closes or ``duration`` passes; optionally save a PNG and a JSON summary."""
    import dearpygui.dearpygui as dpg

    data = PanelData(series)
    panel = GuiPanel(data)
    panel.build()

    async def load_history() -> None:
        if client.api_url is None:
            return
        try:
            for candle in await client.candles(*series, limit=history, live=True):
                data.apply(Event("candle" if candle.closed else "candle_live", candle), "history")
            for alert in reversed(await client.alert_history(symbol=series[1], limit=50)):
                data.apply(Event("alert", alert), "history")
        except ClientError as exc:
            logger.warning("history unavailable: %s", exc)
        data.dirty = True

    subscribed = asyncio.Event()

    async def follow() -> None:
        async with contextlib.aclosing(client.subscribe(series=[series], alerts=True,
                                                        subscribed=subscribed)) as events:
            async for event in events:
                if event.kind == "reconnected":
                    await load_history()
                data.apply(event)

    # subscribe first, then fetch history: a candle closed in between is then in one or the other, never lost
    follower = asyncio.create_task(follow())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(subscribed.wait(), 10)
    await load_history()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration if duration else None
    closing = asyncio.Event()  # SIGTERM / SIGINT: close like the window's close button (screenshot still saved)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, closing.set)
    try:
        while (dpg.is_dearpygui_running() and not closing.is_set()
               and (deadline is None or loop.time() < deadline)):
            panel.refresh()
            dpg.render_dearpygui_frame()
            await asyncio.sleep(1 / 60)
        if screenshot is not None:
            data.dirty = True
            panel.refresh()
            for _ in range(3):  # let the last data reach a rendered frame
                dpg.render_dearpygui_frame()
            dpg.output_frame_buffer(file=str(screenshot))
            for _ in range(3):  # the buffer is written on a following frame
                dpg.render_dearpygui_frame()
                await asyncio.sleep(0.05)
        if summary is not None:
            bars = data.bars()
            summary.write_text(json.dumps({
                "bars": len(bars), "closes": [str(c.close) for c in bars], "ts": [c.ts for c in bars],
                "closed": [c.closed for c in bars], "alerts": [a.id for a in data.alerts],
                "alert_lines": dpg.get_item_configuration("alerts")["items"], "title": dpg.get_value("title"),
                "received": data.received}))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        dpg.destroy_context()
    return data


def gui_command(
    series: Annotated[str, typer.Option("--series", "-s", help="exchange|symbol|timeframe, e.g. binance|BTC/USDT|1m")],
    redis_url: Annotated[Optional[str], typer.Option(envvar="REDIS_URL", help="Redis of the running sentinel.")]
    = None,
    api: Annotated[Optional[str], typer.Option(envvar="SENTINEL_API_URL", help="API for history.")]
    = "http://127.0.0.1:8000",
    token: Annotated[Optional[str], typer.Option(envvar="SENTINEL_API_TOKEN", help="Bearer token of the API.")]
    = None,
    duration: Annotated[Optional[float], typer.Option(help="Close after this many seconds.")] = None,
    screenshot: Annotated[Optional[Path], typer.Option(help="Save a PNG of the last frame here.")] = None,
    summary: Annotated[Optional[Path], typer.Option(help="Write what was drawn as JSON here.")] = None,
) -> None:
    """DearPyGui panel: live candle chart with CVD and the alert feed (needs a display; Xvfb works)."""
    parts = series.split("|")
    if len(parts) != 3 or not all(parts):
        raise typer.BadParameter("expected exchange|symbol|timeframe", param_hint="--series")
    redis_url = redis_url or embedded_redis_url()
    if not redis_url:
        raise typer.BadParameter("set REDIS_URL (or --redis-url) to the Redis of the running sentinel",
                                 param_hint="--redis-url")
    chosen = (parts[0], parts[1] if "/" in parts[1] else parts[1].replace("-", "/", 1), parts[2])

    async def main() -> None:
        async with SentinelClient(redis_url, api_url=api, token=token) as client:
            await run_gui(client, chosen, duration=duration, screenshot=screenshot, summary=summary)

    asyncio.run(main())


if __name__ == "__main__":
    typer.run(gui_command)
