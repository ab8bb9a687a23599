"""``sentinel gui``: a DearPyGui panel (what trade_suite is built on) — a live candle chart with alert markers, volume
and CVD, the alert feed and the trades tape — built on ``sentinel.client``'s trade_suite adapter (``TaskManager``
requirement dicts, ``SignalEmitter`` signals): history from the API, live updates from the Redis channels.

DearPyGui is driven from the asyncio loop (one frame per tick), so the client's coroutines and the GUI share one
thread and no locking is needed. Times are UTC, 24-hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer

from sentinel.client import SentinelClient, embedded_redis_url
from sentinel.trade_suite import SignalEmitter, Signals, TaskManager
from shared.errors import SentinelError
from shared.fmt import plain
from shared.schemas import Alert
from shared.timeframes import timeframe_ms

logger = logging.getLogger(__name__)

BULL = (38, 166, 154, 255)
BEAR = (239, 83, 80, 255)
SEVERITY = {"info": (79, 157, 222, 255), "warning": (240, 180, 41, 255), "critical": (255, 64, 160, 255)}
BODY = 0.7  # a candle's body spans this share of its timeframe, as on TradingView
SHOWN = 120  # bars in view while following the live bar


def _hm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%m-%d %H:%M")


@dataclass
class PanelData:
    """The panel's model: one series' candles (trade_suite's frame rows by bucket), alerts, the trades tape."""

    series: tuple[str, str, str]
    rows: dict[float, tuple] = field(default_factory=dict)  # dates (s) -> row of the frame
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=200))
    trades: deque[dict] = field(default_factory=lambda: deque(maxlen=200))
    dirty: bool = True
    received: dict[str, int] = field(default_factory=dict)  # signals taken, by name

    def _count(self, name: str) -> None:
        self.received[name] = self.received.get(name, 0) + 1

    def mine(self, exchange: str, symbol: str, timeframe: str | None = None) -> bool:
        return (exchange, symbol) == self.series[:2] and timeframe in (None, self.series[2])

    # trade_suite-style handlers (keyword payloads), registered with the SignalEmitter
    def on_new_candles(self, exchange: str, symbol: str, timeframe: str, candles: pd.DataFrame) -> None:
        if self.mine(exchange, symbol, timeframe):
            self._count("new_candles")
            self.rows = {row[0]: row for row in candles.itertuples(index=False, name=None)}
            self.dirty = True

    def on_updated_candles(self, exchange: str, symbol: str, timeframe: str, candles: pd.DataFrame) -> None:
        if self.mine(exchange, symbol, timeframe):
            self._count("updated_candles")
            for row in candles.itertuples(index=False, name=None):
                self.rows[row[0]] = row
            self.dirty = True

    def on_new_alert(self, exchange: str, symbol: str, alert: Alert) -> None:
        if self.mine(exchange, symbol) and all(a.id != alert.id for a in self.alerts):
            self._count("alerts")
            self.alerts.appendleft(alert)
            self.dirty = True

    def on_new_trade(self, exchange: str, trade_data: dict) -> None:
        if self.mine(exchange, trade_data["symbol"]):
            self._count("trades")
            self.trades.appendleft(trade_data)
            self.dirty = True

    def mark(self) -> None:
        self.dirty = True

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.rows[d] for d in sorted(self.rows)],
                            columns=["dates", "opens", "highs", "lows", "closes", "volumes", "buy_volumes",
                                     "sell_volumes"])

    def markers(self) -> dict[str, tuple[list[float], list[float]]]:
        """Per severity, the (x, y) of a marker above each bar an alert of this series fired on."""
        out: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in SEVERITY}
        if not self.rows:
            return out
        highs = [r[2] for r in self.rows.values()]
        lows = [r[3] for r in self.rows.values()]
        lift = (max(highs) - min(lows)) * 0.04 or 1.0
        for alert in self.alerts:
            bar = self.rows.get(alert.ts / 1000)
            if bar is not None and alert.timeframe in (None, self.series[2]):
                xs, ys = out[alert.severity]
                xs.append(bar[0])
                ys.append(bar[2] + lift)
        return out


def _series_theme(kind: int, colour: tuple[int, ...], marker: int | None = None, size: float = 0) -> int:
    import dearpygui.dearpygui as dpg

    with dpg.theme() as theme, dpg.theme_component(kind):
        dpg.add_theme_color(dpg.mvPlotCol_Line, colour, category=dpg.mvThemeCat_Plots)
        dpg.add_theme_color(dpg.mvPlotCol_Fill, colour, category=dpg.mvThemeCat_Plots)
        if marker is not None:
            dpg.add_theme_style(dpg.mvPlotStyleVar_Marker, marker, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_style(dpg.mvPlotStyleVar_MarkerSize, size, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_color(dpg.mvPlotCol_MarkerFill, colour, category=dpg.mvThemeCat_Plots)
            dpg.add_theme_color(dpg.mvPlotCol_MarkerOutline, colour, category=dpg.mvThemeCat_Plots)
    return theme


class GuiPanel:
    """The DearPyGui widgets over a ``PanelData``; the layout follows the viewport's size."""

    def __init__(self, data: PanelData, width: int = 1024, height: int = 768) -> None:
        self.data = data
        self.width, self.height = width, height
        self.tf_s = timeframe_ms(data.series[2]) / 1000

    def build(self) -> None:
        import dearpygui.dearpygui as dpg

        dpg.create_context()
        ex, sym, tf = self.data.series
        time_axis = {"scale": dpg.mvPlotScale_Time}
        with dpg.window(tag="main", label="sentinel", no_scrollbar=True):
            with dpg.group(horizontal=True):
                dpg.add_text(f"{ex} {sym} {tf}", tag="title")
                dpg.add_checkbox(label="follow live", tag="follow", default_value=True,
                                 callback=lambda _s, on: self.release_axes() if not on else self.data.mark())
            with dpg.group(horizontal=True):
                with dpg.group(tag="chart_col"):
                    with dpg.plot(tag="price_plot", height=400, width=600, use_24hour_clock=True,
                                  use_local_time=False, use_ISO8601=True):
                        dpg.add_plot_axis(dpg.mvXAxis, tag="x", **time_axis)
                        with dpg.plot_axis(dpg.mvYAxis, label="price", tag="y"):
                            dpg.add_candle_series([], [], [], [], [], tag="candles", label="candles", bull_color=BULL,
                                                  bear_color=BEAR, time_unit=dpg.mvTimeUnit_S, tooltip=True)
                            dpg.add_line_series([], [], tag="pad", label="##pad")  # room for the first and last bar
                            dpg.bind_item_theme("pad", _series_theme(dpg.mvLineSeries, (0, 0, 0, 0)))
                            for severity, colour in SEVERITY.items():
                                tag = f"markers_{severity}"
                                dpg.add_scatter_series([], [], tag=tag, label=f"alerts ({severity})")
                                dpg.bind_item_theme(tag, _series_theme(dpg.mvScatterSeries, colour,
                                                                       dpg.mvPlotMarker_Down, 7))
                    with dpg.plot(tag="lower_plot", height=200, width=600, use_24hour_clock=True,
                                  use_local_time=False, use_ISO8601=True):
                        dpg.add_plot_axis(dpg.mvXAxis, tag="lower_x", **time_axis)
                        with dpg.plot_axis(dpg.mvYAxis, label="volume", tag="vol_y"):
                            dpg.add_bar_series([], [], tag="volume", label="volume")
                            dpg.bind_item_theme("volume", _series_theme(dpg.mvBarSeries, (120, 130, 150, 150)))
                        with dpg.plot_axis(dpg.mvYAxis2, label="CVD", tag="cvd_y", opposite=True):
                            dpg.add_line_series([], [], tag="cvd", label="CVD")
                            dpg.bind_item_theme("cvd", _series_theme(dpg.mvLineSeries, (240, 180, 41, 255)))
                with dpg.child_window(tag="side", width=300, height=600):
                    dpg.add_text("alerts (UTC)", color=(240, 180, 41, 255))
                    dpg.add_listbox([], tag="alerts", num_items=14, width=-1)
                    dpg.add_text("trades", color=(160, 170, 185, 255))
                    dpg.add_listbox([], tag="trades", num_items=12, width=-1)
        dpg.create_viewport(title=f"sentinel — {ex} {sym} {tf}", width=self.width, height=self.height)
        dpg.setup_dearpygui()
        dpg.show_viewport()
        dpg.set_primary_window("main", True)
        dpg.set_viewport_resize_callback(lambda *_: self.layout())
        self.layout()

    def layout(self) -> None:
        """Chart column and side panel share the window's width; the price plot takes 70% of the chart's height."""
        import dearpygui.dearpygui as dpg

        width = dpg.get_viewport_client_width() or self.width
        height = dpg.get_viewport_client_height() or self.height
        side = max(240, int(width * 0.28))
        chart_w = max(200, width - side - 32)
        chart_h = max(200, height - 52)
        price_h = int(chart_h * 0.7)
        dpg.configure_item("price_plot", width=chart_w, height=price_h)
        dpg.configure_item("lower_plot", width=chart_w, height=chart_h - price_h - 6)
        dpg.configure_item("side", width=side, height=chart_h)
        dpg.configure_item("alerts", num_items=max(4, int(chart_h * 0.55 / 20)))
        dpg.configure_item("trades", num_items=max(3, int(chart_h * 0.35 / 20)))

    def refresh(self) -> None:
        import dearpygui.dearpygui as dpg

        if not self.data.dirty:
            return
        self.data.dirty = False
        frame = self.data.frame()
        dates = frame["dates"].tolist()
        # ImPlot sizes a body from the first two dates' spacing: scale it so every body is BODY of the timeframe
        spacing = dates[1] - dates[0] if len(dates) > 1 else self.tf_s
        dpg.configure_item("candles", dates=dates, opens=frame["opens"].tolist(), closes=frame["closes"].tolist(),
                           lows=frame["lows"].tolist(), highs=frame["highs"].tolist(),
                           weight=BODY / 2 * self.tf_s / spacing)
        marks = self.data.markers()
        for severity, (xs, ys) in marks.items():
            dpg.set_value(f"markers_{severity}", [xs, ys])
        if dates:
            top = max([*frame["highs"], *(y for _, ys in marks.values() for y in ys)])
            dpg.set_value("pad", [[dates[0] - self.tf_s, dates[-1] + self.tf_s], [frame["lows"].min(), top]])
        dpg.set_value("volume", [dates, frame["volumes"].tolist()])
        dpg.configure_item("volume", weight=self.tf_s * BODY)
        dpg.set_value("cvd", [dates, (frame["buy_volumes"] - frame["sell_volumes"]).cumsum().tolist()])
        if dates and dpg.get_value("follow"):
            self.follow(frame, marks)
        if dates:
            last = frame.iloc[-1]
            dpg.set_value("title", f"{' '.join(self.data.series)}   last {plain(str(last['closes']))}   "
                                   f"bars {len(dates)}   {_hm(int(last['dates'] * 1000))} UTC")
        dpg.configure_item("alerts", items=self.alert_lines())
        dpg.configure_item("trades", items=[
            f"{datetime.fromtimestamp(t['timestamp'] / 1000, UTC):%H:%M:%S} {t['side']:<4} "
            f"{plain(str(t['price']))} × {plain(str(t['amount']))}" for t in self.data.trades])

    def follow(self, frame: pd.DataFrame, marks: dict[str, tuple[list[float], list[float]]]) -> None:
        """Show the last ``SHOWN`` bars, the live one with a bar's room on its right, like a chart following the
        market; both plots share the time range. Unticking "follow live" hands the axes back to the mouse."""
        import dearpygui.dearpygui as dpg

        shown = frame.tail(SHOWN)
        x0, x1 = shown["dates"].iloc[0] - self.tf_s, shown["dates"].iloc[-1] + 1.5 * self.tf_s
        marker_tops = [y for xs, ys in marks.values() for x, y in zip(xs, ys) if x >= x0]
        low, high = shown["lows"].min(), max([shown["highs"].max(), *marker_tops])
        pad = (high - low) * 0.05 or 1.0
        cvd = (frame["buy_volumes"] - frame["sell_volumes"]).cumsum().tail(SHOWN)
        cvd_pad = (cvd.max() - cvd.min()) * 0.08 or 1.0
        for axis, lo, hi in (("x", x0, x1), ("lower_x", x0, x1), ("y", low - pad, high + pad),
                             ("vol_y", 0, shown["volumes"].max() * 1.1 or 1.0),
                             ("cvd_y", cvd.min() - cvd_pad, cvd.max() + cvd_pad)):
            dpg.set_axis_limits(axis, lo, hi)

    def release_axes(self) -> None:
        import dearpygui.dearpygui as dpg

        for axis in ("x", "lower_x", "y", "vol_y", "cvd_y"):
            dpg.set_axis_limits_auto(axis)

    def alert_lines(self) -> list[str]:
        mark = {"info": "i", "warning": "!", "critical": "!!"}
        return [f"{_hm(a.ts)} {mark[a.severity]} {a.rule} @ {plain(a.price)}"
                + (" resolved" if a.state == "resolved" else "") for a in self.data.alerts]

    def summary(self) -> dict[str, Any]:
        """What is drawn, for tests and the curious (``--summary``)."""
        import dearpygui.dearpygui as dpg

        frame = self.data.frame()
        return {"bars": len(frame), "dates": frame["dates"].tolist(), "closes": frame["closes"].tolist(),
                "opens": frame["opens"].tolist(), "alerts": [a.id for a in self.data.alerts],
                "alert_lines": self.alert_lines(), "markers": {s: xs for s, (xs, _) in self.data.markers().items()},
                "title": dpg.get_value("title"), "received": self.data.received, "trades": len(self.data.trades),
                "clock": {k: dpg.get_item_configuration("price_plot")[k]
                          for k in ("use_24hour_clock", "use_local_time")},
                "viewport": [dpg.get_viewport_client_width(), dpg.get_viewport_client_height()],
                "rects": {tag: dpg.get_item_rect_size(tag) for tag in ("price_plot", "lower_plot", "side")},
                "x_limits": dpg.get_axis_limits("x")}


async def run_gui(client: SentinelClient, series: tuple[str, str, str], *, duration: float | None = None,
                  screenshot: Path | None = None, summary: Path | None = None, history: int = 300,
                  size: tuple[int, int] = (1024, 768)) -> PanelData:
    """Show the panel until the window closes or ``duration`` passes; optionally save a PNG and a JSON summary."""
    import dearpygui.dearpygui as dpg

    data = PanelData(series)
    panel = GuiPanel(data, *size)
    panel.build()
    emitter = SignalEmitter()
    for sig, handler in ((Signals.NEW_CANDLES, data.on_new_candles), (Signals.UPDATED_CANDLES,
                         data.on_updated_candles), (Signals.NEW_ALERT, data.on_new_alert),
                         (Signals.NEW_TRADE, data.on_new_trade)):
        emitter.register(sig, handler)
    tasks = TaskManager(client, emitter, history=history)
    ex, sym, tf = series
    tasks.subscribe(panel, {"type": "candles", "exchange": ex, "symbol": sym, "timeframe": tf})
    tasks.subscribe(panel, {"type": "alerts", "exchange": ex, "symbol": sym})
    tasks.subscribe(panel, {"type": "trades", "exchange": ex, "symbol": sym})
    if client.api_url is not None:  # the alerts fired before the panel opened
        with contextlib.suppress(Exception):
            for alert in reversed(await client.alert_history(symbol=sym, limit=50)):
                data.on_new_alert(alert.exchange, alert.symbol, alert)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration if duration else None
    closing = asyncio.Event()  # SIGTERM / SIGINT: close like the window's close button (screenshot still saved)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, closing.set)
    try:
        while (dpg.is_dearpygui_running() and not closing.is_set()
               and (deadline is None or loop.time() < deadline)):
            emitter.process_signal_queue()
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
            summary.write_text(json.dumps(panel.summary()))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        tasks.unsubscribe(panel)
        await tasks.aclose()
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
    size: Annotated[str, typer.Option(help="Window size WIDTHxHEIGHT (the layout follows later resizes).")]
    = "1024x768",
) -> None:
    """DearPyGui panel: live candles with alert markers, volume and CVD, the alert feed and the trades tape (needs a
    display; Xvfb works)."""
    parts = series.split("|")
    if len(parts) != 3 or not all(parts):
        raise typer.BadParameter("expected exchange|symbol|timeframe", param_hint="--series")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # DearPyGui would abort the process in C (glfw) without a display
        raise SentinelError("sentinel gui needs a display (DISPLAY is not set): run it in a desktop session, under "
                            "xvfb-run, or use `sentinel watch` in a terminal")
    redis_url = redis_url or embedded_redis_url()
    if not redis_url:
        raise typer.BadParameter("set REDIS_URL (or --redis-url) to the Redis of the running sentinel",
                                 param_hint="--redis-url")
    chosen = (parts[0], parts[1] if "/" in parts[1] else parts[1].replace("-", "/", 1), parts[2])
    try:
        timeframe_ms(chosen[2])
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(f"unknown timeframe {chosen[2]!r}", param_hint="--series") from exc
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"{size!r}: expected WIDTHxHEIGHT, e.g. 1280x800", param_hint="--size") from exc

    async def main() -> None:
        async with SentinelClient(redis_url, api_url=api, token=token) as client:
            await run_gui(client, chosen, duration=duration, screenshot=screenshot, summary=summary,
                          size=(width, height))

    asyncio.run(main())


if __name__ == "__main__":
    typer.run(gui_command)
