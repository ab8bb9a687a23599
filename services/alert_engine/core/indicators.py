"""Incremental indicators of one candle series: O(1) per new or revised candle.

Every indicator here supports ``add(candle)`` (a new bar), ``replace(candle)`` (the last bar was revised),
``add_provisional(candle)`` / ``drop_provisional()`` (an in-progress bar on top for one evaluation, then taken off)
and ``get(offset)`` (0 = the last bar, 1 = the one before, ...; None while warming up). Moving averages, RSI, MACD, Bollinger bands and
ATR come from talipp (floats, as TA libraries compute them); CVD and VWAP are exact ``Decimal`` sums of the candles'
taker buy/sell and quote volumes, which the trade feed gives us (no typical-price approximation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from talipp.indicators import ATR as _ATR
from talipp.indicators import BB as _BB
from talipp.indicators import EMA as _EMA
from talipp.indicators import MACD as _MACD
from talipp.indicators import RSI as _RSI
from talipp.indicators import SMA as _SMA
from talipp.ohlcv import OHLCV

from shared import rules as r
from shared.schemas import Candle
from shared.timeframes import bucket_start, timeframe_ms

_TWO, _THREE, _FOUR = Decimal(2), Decimal(3), Decimal(4)


def source_value(candle: Candle, source: str) -> Decimal:
    if source == "hl2":
        return (candle.high + candle.low) / _TWO
    if source == "hlc3":
        return (candle.high + candle.low + candle.close) / _THREE
    if source == "ohlc4":
        return (candle.open + candle.high + candle.low + candle.close) / _FOUR
    return getattr(candle, source)


class Indicator:
    def add(self, candle: Candle) -> None:
        raise NotImplementedError

    def replace(self, candle: Candle) -> None:
        self.remove()
        self.add(candle)

    def add_provisional(self, candle: Candle) -> None:
        self.add(candle)

    def drop_provisional(self) -> None:
        self.remove()

    def remove(self) -> None:
        raise NotImplementedError

    def get(self, offset: int = 0) -> Any:
        raise NotImplementedError


class _Talipp(Indicator):
    """Wraps a talipp indicator fed from one candle source, keeping its lists bounded."""

    def __init__(self, indicator: Any, to_input: Callable[[Candle], Any], pick: Callable[[Any], float | None],
                 keep: int) -> None:
        self.ind = indicator
        self.to_input = to_input
        self.pick = pick
        self.keep = keep

    def add(self, candle: Candle) -> None:
        self.ind.add(self.to_input(candle))
        if len(self.ind.input_values) > 2 * self.keep:
            self.ind.purge_oldest(len(self.ind.input_values) - self.keep)

    def replace(self, candle: Candle) -> None:
        self.ind.update(self.to_input(candle))

    def remove(self) -> None:
        self.ind.remove()

    def get(self, offset: int = 0) -> float | None:
        out = self.ind.output_values
        if offset >= len(out):
            return None
        value = out[-1 - offset]
        return None if value is None else self.pick(value)


class _RollingSum(Indicator):
    """Exact sum of the last ``n`` values of ``fn(candle)`` (rolling CVD)."""

    def __init__(self, n: int, fn: Callable[[Candle], Decimal], keep: int) -> None:
        self.n, self.fn = n, fn
        self.values: deque[Decimal] = deque(maxlen=n + keep)
        self.sums: deque[Decimal | None] = deque(maxlen=keep)
        self.total = Decimal(0)

    def add(self, candle: Candle) -> None:
        v = self.fn(candle)
        self.values.append(v)
        self.total += v
        if len(self.values) > self.n:
            self.total -= self.values[-1 - self.n]
        self.sums.append(self.total if len(self.values) >= self.n else None)

    def remove(self) -> None:
        v = self.values.pop()
        self.total -= v
        if len(self.values) >= self.n:
            self.total += self.values[-self.n]
        self.sums.pop()

    def get(self, offset: int = 0) -> Decimal | None:
        return self.sums[-1 - offset] if offset < len(self.sums) else None


class _Anchored(Indicator):
    """Exact cumulative sums since the last ``anchor`` boundary (UTC): CVD and VWAP per session."""

    def __init__(self, anchor: str, fn: Callable[[Candle], tuple[Decimal, Decimal]],
                 out: Callable[[Decimal, Decimal], Decimal | None], keep: int) -> None:
        self.anchor_ms = timeframe_ms(anchor)
        self.fn, self.out = fn, out
        self.states: deque[tuple[int, Decimal, Decimal]] = deque(maxlen=keep)  # (session, a, b) after each bar

    def add(self, candle: Candle) -> None:
        session = bucket_start(candle.ts, self.anchor_ms)
        a, b = self.fn(candle)
        if self.states and self.states[-1][0] == session:
            _, pa, pb = self.states[-1]
            a, b = pa + a, pb + b
        self.states.append((session, a, b))

    def remove(self) -> None:
        self.states.pop()

    def get(self, offset: int = 0) -> Decimal | None:
        if offset >= len(self.states):
            return None
        _, a, b = self.states[-1 - offset]
        return self.out(a, b)


def _ohlcv(c: Candle) -> OHLCV:
    return OHLCV(float(c.open), float(c.high), float(c.low), float(c.close), float(c.volume))


def make(spec: r.IndicatorSpec, keep: int = 600, candles: list[Candle] | None = None) -> Indicator:
    """The indicator ``spec``, warmed up over ``candles`` (closed, oldest first)."""
    ind = _make(spec, keep)
    for candle in candles or ():
        ind.add(candle)
    return ind


def _make(spec: r.IndicatorSpec, keep: int) -> Indicator:
    keep = max(keep, 4 * max(getattr(spec, "period", 0) or 0, getattr(spec, "slow", 0) or 0,
                             getattr(spec, "bars", 0) or 0, 1))
    src = getattr(spec, "source", "close")

    def value_of(c: Candle) -> float:
        return float(source_value(c, src))

    if isinstance(spec, r.SMA):
        return _Talipp(_SMA(spec.period), value_of, float, keep)
    if isinstance(spec, r.EMA):
        return _Talipp(_EMA(spec.period), value_of, float, keep)
    if isinstance(spec, r.RSI):
        return _Talipp(_RSI(spec.period), value_of, float, keep)
    if isinstance(spec, r.MACD):
        attr = {"line": "macd", "signal": "signal", "histogram": "histogram"}[spec.output]
        return _Talipp(_MACD(spec.fast, spec.slow, spec.signal), value_of, lambda v: getattr(v, attr), keep)
    if isinstance(spec, r.BBands):
        attr = {"upper": "ub", "middle": "cb", "lower": "lb"}[spec.output]
        return _Talipp(_BB(spec.period, float(spec.k)), value_of, lambda v: getattr(v, attr), keep)
    if isinstance(spec, r.ATR):
        return _Talipp(_ATR(spec.period), _ohlcv, float, keep)
    if isinstance(spec, r.VolumeSMA):
        return _Talipp(_SMA(spec.period), lambda c: float(c.volume), float, keep)
    if isinstance(spec, r.CVD):
        if spec.bars is not None:
            return _RollingSum(spec.bars, lambda c: c.buy_volume - c.sell_volume, keep)
        return _Anchored(spec.anchor, lambda c: (c.buy_volume - c.sell_volume, Decimal(0)), lambda a, b: a, keep)
    if isinstance(spec, r.VWAP):
        return _Anchored(spec.anchor, lambda c: (c.quote_volume, c.volume),
                         lambda q, v: q / v if v else None, keep)
    raise TypeError(f"no incremental implementation for {spec!r}")
