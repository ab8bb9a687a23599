"""In-progress candles (``live_candles``): when a series' candles in progress are published, and the commands that
publish them in the read's fenced commit.

Throttled per series, in exchange time (``live_throttle_clock: exchange``, what ``sentinel backtest`` sets: the same
in-progress candles whatever the read size, written between the closed candles in the order the builder made them) or
in wall time (live views: at most one snapshot per ``live_throttle_ms``). Each goes to ``part_live(p)`` (what
alert_engine reads); the live views get a PUBLISH and the newest of each series in ``part_live_latest(p)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import chain
from typing import Any

from services.candle_builder.core import Emitted
from services.candle_builder.core.in_progress import in_progress, last_closed
from services.candle_builder.held import HeldPartitions
from services.candle_builder.series import Series, encode_candle
from services.candle_builder.settings import Settings
from shared import streams
from shared.feed_codec import TradeColumns

__all__ = ["LiveCandles"]


class LiveCandles:
    """The throttle points and snapshots of the series' candles in progress, and their commands."""

    def __init__(self, settings: Settings, held: HeldPartitions) -> None:
        self.settings = settings
        self.held = held  # (closed candles go between in-progress ones: ``queue_in_order``)

    def exchange_throttle(self, series: Series) -> bool:
        """Whether ``series``' in-progress candles are throttled in exchange time (``live_throttle_clock: exchange``,
        what ``sentinel backtest`` sets): the same in-progress candles, and intrabar rules fire the same alerts,
        however fast the input comes and however the stream is read. Else in wall time (live views)."""
        return self.settings.live_throttle_clock == "exchange"

    def cut(self, series: Series, trades: Any) -> Iterator[tuple[Any, bool]]:
        """A batch of trades in parts, each ending with a throttle point (True) but the last: a trade is a point
        when it is the first one (in stream order) of a new ``live_throttle_ms`` window of exchange time, i.e. its
        ``ts // live_throttle_ms`` is above that of the series' last point (``series.live_ts``); every trade with
        ``live_throttle_ms`` 0. Decided by the trades' timestamps alone."""
        step = self.settings.live_throttle_ms
        tss = trades.tss if type(trades) is TradeColumns else [t[1] for t in trades]
        if not tss:
            return
        mark = series.live_ts
        if step == 0:
            points = range(len(tss))
        elif mark is not None and max(tss) // step <= mark // step:
            points = range(0)  # (the common case at a high trade rate: no point in this batch)
        else:
            window = -1 if mark is None else mark // step
            found: list[int] = []
            for i, ts in enumerate(tss):
                if ts // step > window:
                    window = ts // step
                    found.append(i)
            points = range(0) if not found else found  # type: ignore[assignment]
        start = 0
        for i in points:
            series.live_ts = tss[i]
            yield _slice(trades, start, i + 1), True
            start = i + 1
        if start < len(tss):
            yield _slice(trades, start, len(tss)), False

    def snapshot(self, series: Series) -> list[tuple[str, bytes]]:
        """The series' in-progress candles now, encoded (each names the last closed bar of its timeframe and, in
        ``as_of``, the exchange time of the newest trade in it)."""
        ex, sym, builder = series.exchange, series.symbol, series.builder
        return [(tf, encode_candle(ex, sym, tf, bar, closed=False, prev_ts=last_closed(builder, tf), as_of=bar.last_ts))
                for tf, bar in in_progress(builder)]

    def wall_snapshots(self, series_list: list[Series]) -> list[tuple[Series, list[tuple[str, bytes]]]]:
        """Wall-time throttle (a live feed): each series' in-progress candles after the read, if not published within
        ``live_throttle_ms`` of wall time: a live view gets the newest state at most that often, and a backlog read
        at once is one snapshot, not one per throttle window."""
        now = time.monotonic()
        throttle = self.settings.live_throttle_ms / 1000
        out = []
        for series in series_list:
            if now - series.last_live < throttle:
                continue
            series.last_live = now
            snaps = self.snapshot(series)
            if snaps:
                out.append((series, snaps))
        return out

    def queue_in_order(self, commands: list[Any], series: Series, emitted: list[Emitted],
                       snaps: list[tuple[int, str, bytes]]) -> None:
        """Exchange-time throttle: the closed candles' commands and the XADDs of the in-progress candles to
        ``part_live``, interleaved in the order the builder made them. Entry ids grow with the order of the XADDs
        across both streams (a script's commands run in order; Redis' clock only goes forward), which is what lets
        alert_engine evaluate both streams in one order whatever it reads at once (``PartitionEngine.step``)."""
        done = 0
        for pos, _, data in snaps:
            if pos > done:
                self.held.queue_candles(commands, series, emitted[done:pos])
                done = pos
            self.queue_entries(commands, series, [data])
        if done < len(emitted):
            self.held.queue_candles(commands, series, emitted[done:])

    def queue_entries(self, commands: list[Any], series: Series, datas: list[bytes]) -> None:
        """XADDs of in-progress candles to the series' partition's ``part_live`` (what alert_engine reads)."""
        stream, maxlen = streams.part_live(series.partition), self.settings.live_maxlen
        commands.extend(("XADD", stream, "MAXLEN", "~", maxlen, "*", streams.FIELD, data) for data in datas)

    def announce(self, commands: list[Any], partition: int,
                 live: list[tuple[Series, list[tuple[str, bytes]]]]) -> None:
        """In-progress candles already queued to ``part_live``, for the live views: PUBLISH, and the newest of each
        series into its field of ``part_live_latest``, in the read's fenced commit (one round trip, one slot)."""
        latest: dict[str, bytes] = {}
        for series, snaps in live:
            ex, sym = series.exchange, series.symbol
            for tf, data in snaps:
                commands.append(("PUBLISH", streams.channel_candles_live(ex, sym, tf), data))
                latest[streams.registry_member(ex, sym, tf)] = data
        if latest:
            commands.append(("HSET", streams.part_live_latest(partition), *chain.from_iterable(latest.items())))


def _slice(trades: Any, start: int, end: int) -> Any:
    """Trades ``start:end`` of a batch (a list, or ``TradeColumns`` cut column by column)."""
    if type(trades) is TradeColumns:
        if start == 0 and end == len(trades):
            return trades
        return TradeColumns(trades.ids[start:end], trades.tss[start:end], trades.prices[start:end],
                            trades.amounts[start:end], trades.sides[start:end])
    return trades if start == 0 and end == len(trades) else trades[start:end]
