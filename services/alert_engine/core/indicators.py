"""Incremental indicators of one series' window: O(1) per closed candle, and per in-progress candle.

Moving averages, RSI, MACD, Bollinger bands and ATR are TA-Lib's streaming objects (``talib.stream``, the C library
shipped in the ``ta-lib`` wheel): floats, as TA libraries compute them, held to pandas within 1e-9 by the tests.
MACD is made of three EMA streams (the signal an EMA of the line, each seeded by its own first values, as
``ema(fast) - ema(slow)`` reads); ATR is Wilder's moving average (``RMA``) of the true range, the first bar's being
its high - low. CVD and VWAP are exact ``Decimal`` sums of the candles' taker buy/sell and quote volumes, which the
trade feed gives us (no typical-price approximation).

An ``Indicator`` is one computation with one or more outputs (Bollinger bands: upper, middle, lower; MACD: line,
signal, histogram): the specs that differ only by ``output`` share it (``computation``). It takes ``add`` (a new
closed bar), ``add_provisional`` / ``drop_provisional`` (an in-progress bar on top for one evaluation: TA-Lib's
``peek``, no state change); each output is a sequence of values per bar, newest last, None while warming up. A
revised last bar rebuilds the window's indicators (``make`` over its candles): TA-Lib's streams cannot step back, and
revisions are rare (late trades).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from decimal import Decimal
from types import ModuleType
from typing import Any

import numpy as np

from shared import rules as r
from shared.schemas import Candle
from shared.timeframes import bucket_start, timeframe_ms


def _talib_stream() -> ModuleType:
    """``talib.stream``, imported without pandas and polars: talib's package ``__init__`` imports them when they are
    installed, only to wrap its functions for their Series (pandas alone ~0.35 s of a core, at every start of the
    engine and of a backtest, which import nothing else of pandas). The streams here take numpy arrays. A ``None``
    entry in ``sys.modules`` is the import system's "not installed" (``ModuleNotFoundError``), which talib expects;
    the entries are removed again at once, so a later ``import pandas`` works as ever. Already imported (by someone
    else first): nothing changes."""
    masked = [name for name in ("pandas", "polars") if name not in sys.modules]
    for name in masked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        from talib import stream
    finally:
        for name in masked:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    return stream


ta = _talib_stream()

#: a candle's prices and volume as floats, converted once per bar for every indicator: open, high, low, close, volume
Floats = tuple[float, float, float, float, float]
_SOURCE_INDEX = {"open": 0, "high": 1, "low": 2, "close": 3, "volume": 4}
_BANDS = {"upper": 0, "middle": 1, "lower": 2}
_MACD_OUTPUTS = {"line": 0, "signal": 1, "histogram": 2}
_TWO, _THREE, _FOUR = Decimal(2), Decimal(3), Decimal(4)


def floats(candle: Candle) -> Floats:
    return (float(candle.open), float(candle.high), float(candle.low), float(candle.close), float(candle.volume))


def _source(name: str) -> Callable[[Candle, Floats], float]:
    """A price source as a float: a candle field, or hl2/hlc3/ohlc4 computed exactly, then converted."""
    index = _SOURCE_INDEX.get(name)
    if index is not None:
        return lambda candle, f: f[index]
    if name == "hl2":
        return lambda c, f: float((c.high + c.low) / _TWO)
    if name == "hlc3":
        return lambda c, f: float((c.high + c.low + c.close) / _THREE)
    return lambda c, f: float((c.open + c.high + c.low + c.close) / _FOUR)  # ohlc4


_numbers: dict[r.IndicatorSpec, int] = {}


def number(spec: r.IndicatorSpec) -> int:
    """A small int standing for ``spec`` (equal specs, one number): what windows key the values of their indicators
    by on the hot path (a frozen pydantic model hashes every field each time it is looked up)."""
    n = _numbers.get(spec)
    if n is None:
        n = _numbers[spec] = len(_numbers)
    return n


def computation(spec: r.IndicatorSpec) -> tuple[Hashable, int]:
    """The computation ``spec`` reads (specs that differ only by ``output`` share one) and which of its outputs."""
    if isinstance(spec, r.BBands):
        return ("bbands", spec.period, spec.k, spec.source), _BANDS[spec.output]
    if isinstance(spec, r.MACD):
        return ("macd", spec.fast, spec.slow, spec.signal, spec.source), _MACD_OUTPUTS[spec.output]
    return number(spec), 0


class Indicator:
    """One computation's values per bar (``outs``: one sequence per output), newest last (``keep`` at most)."""

    def __init__(self, keep: int, outputs: int = 1) -> None:
        # (+1: an in-progress bar on top of a full window)
        self.outs: list[deque[Any]] = [deque(maxlen=keep + 1) for _ in range(outputs)]

    def add(self, candle: Candle, f: Floats) -> None:
        self._append(self._next(candle, f))

    def add_provisional(self, candle: Candle, f: Floats) -> None:
        self._append(self._peek(candle, f))

    def drop_provisional(self) -> None:
        for out in self.outs:
            out.pop()

    def _append(self, value: Any) -> None:
        self.outs[0].append(value)

    def _next(self, candle: Candle, f: Floats) -> Any:
        raise NotImplementedError

    def _peek(self, candle: Candle, f: Floats) -> Any:
        raise NotImplementedError


class _Stream:
    """One TA-Lib stream fed one float per bar: None until it has the history it opens with (``need`` inputs);
    ``ta``, the open stream, for callers that take the hot path themselves. Outputs are TA-Lib's (NaN: not yet)."""

    __slots__ = ("open_and_fill", "need", "pending", "ta")

    def __init__(self, open_and_fill: Callable[[Any], tuple[Any, Any]], need: int) -> None:
        self.open_and_fill, self.need = open_and_fill, need
        self.pending: list[float] = []
        self.ta: Any = None

    def update(self, x: float) -> Any:
        if self.ta is not None:
            return self.ta.update(x)
        self.pending.append(x)
        if len(self.pending) < self.need:
            return None
        self.ta, outs = self.open_and_fill(np.array(self.pending))
        self.pending = []
        return _last(outs)

    def peek(self, x: float) -> Any:
        if self.ta is not None:
            return self.ta.peek(x)
        if len(self.pending) + 1 < self.need:
            return None
        return _last(self.open_and_fill(np.array([*self.pending, x]))[1])


def _last(outs: Any) -> Any:
    return tuple(float(o[-1]) for o in outs) if isinstance(outs, tuple) else float(outs[-1])


def _known(v: float | None) -> float | None:
    return None if v is None or v != v else v  # (v != v: NaN)


class _Single(Indicator):
    """One stream over one source: SMA, EMA, RSI, volume SMA."""

    def __init__(self, stream: _Stream, source: str, keep: int) -> None:
        super().__init__(keep)
        self.stream, self.source = stream, _source(source)
        self.index = _SOURCE_INDEX.get(source, -1)
        self.out = self.outs[0]

    def add(self, candle: Candle, f: Floats) -> None:  # (the hot path: one call into TA-Lib once the stream is open)
        i = self.index
        x = f[i] if i >= 0 else self.source(candle, f)
        s = self.stream.ta
        v = s.update(x) if s is not None else self.stream.update(x)
        self.out.append(None if v is None or v != v else v)

    def _peek(self, candle: Candle, f: Floats) -> float | None:
        return _known(self.stream.peek(self.source(candle, f)))


class _Bands(_Single):
    """Bollinger bands: SMA(period) ± k population standard deviations (outputs upper, middle, lower)."""

    def __init__(self, spec: r.BBands, keep: int) -> None:
        k, period = float(spec.k), spec.period
        super().__init__(_Stream(lambda xs: ta.BBANDS.open_and_fill(xs, period, k, k, 0), period), spec.source, keep)
        self.outs = [deque(maxlen=keep + 1) for _ in range(3)]

    def add(self, candle: Candle, f: Floats) -> None:
        i = self.index
        x = f[i] if i >= 0 else self.source(candle, f)
        s = self.stream.ta
        if s is None:
            self._append(self.stream.update(x))
            return
        upper, middle, lower = s.update(x)  # (open: never NaN)
        outs = self.outs
        outs[0].append(upper)
        outs[1].append(middle)
        outs[2].append(lower)

    def _peek(self, candle: Candle, f: Floats) -> Any:
        return self.stream.peek(self.source(candle, f))

    def _append(self, value: Any) -> None:
        for out, v in zip(self.outs, value or (None, None, None), strict=True):
            out.append(_known(v))


class _MACD(Indicator):
    """EMA(fast) - EMA(slow) (the line), an EMA(signal) of the line, and their difference (the histogram)."""

    def __init__(self, spec: r.MACD, keep: int) -> None:
        super().__init__(keep, 3)
        self.fast, self.slow, self.signal = _ema(spec.fast), _ema(spec.slow), _ema(spec.signal)
        self.source = _source(spec.source)

    def add(self, candle: Candle, f: Floats) -> None:
        signal = self.signal.ta
        if signal is None:  # warming up (the signal's EMA opens last)
            self._append(self._next(candle, f))
            return
        x = self.source(candle, f)
        line = self.fast.ta.update(x) - self.slow.ta.update(x)  # (open: never NaN)
        s = signal.update(line)
        outs = self.outs
        outs[0].append(line)
        outs[1].append(s)
        outs[2].append(line - s)

    def _next(self, candle: Candle, f: Floats) -> tuple[float | None, float | None]:
        x = self.source(candle, f)
        fast, slow = _known(self.fast.update(x)), _known(self.slow.update(x))
        line = None if fast is None or slow is None else fast - slow
        return line, None if line is None else _known(self.signal.update(line))

    def _peek(self, candle: Candle, f: Floats) -> tuple[float | None, float | None]:
        x = self.source(candle, f)
        fast, slow = _known(self.fast.peek(x)), _known(self.slow.peek(x))
        line = None if fast is None or slow is None else fast - slow
        return line, None if line is None else _known(self.signal.peek(line))

    def _append(self, value: tuple[float | None, float | None]) -> None:
        line, signal = value
        self.outs[0].append(line)
        self.outs[1].append(signal)
        self.outs[2].append(None if line is None or signal is None else line - signal)


class _ATR(Indicator):
    """Wilder's average true range: RMA(period) of max(high - low, |high - previous close|, |low - previous close|),
    the first bar's true range being its high - low."""

    def __init__(self, spec: r.ATR, keep: int) -> None:
        super().__init__(keep)
        period = spec.period
        self.rma = _Stream(lambda xs: ta.RMA.open_and_fill(xs, period), period)
        self.prev_close: float | None = None

    def _true_range(self, f: Floats) -> float:
        high, low, prev = f[1], f[2], self.prev_close
        return high - low if prev is None else max(high - low, abs(high - prev), abs(low - prev))

    def _next(self, candle: Candle, f: Floats) -> float | None:
        tr = self._true_range(f)
        self.prev_close = f[3]
        return _known(self.rma.update(tr))

    def _peek(self, candle: Candle, f: Floats) -> float | None:
        return _known(self.rma.peek(self._true_range(f)))


class _Exact(Indicator):
    """A Decimal indicator that can step back (``remove``): its in-progress value is an add then a remove."""

    def add_provisional(self, candle: Candle, f: Floats) -> None:
        self.add(candle, f)

    def drop_provisional(self) -> None:
        self.remove()
        self.outs[0].pop()

    def remove(self) -> None:
        raise NotImplementedError


class _RollingSum(_Exact):
    """Exact sum of the last ``n`` values of ``fn(candle)`` (rolling CVD)."""

    def __init__(self, n: int, fn: Callable[[Candle], Decimal], keep: int) -> None:
        super().__init__(keep)
        self.n, self.fn = n, fn
        self.values: deque[Decimal] = deque(maxlen=n + keep + 1)
        self.total = Decimal(0)

    def _next(self, candle: Candle, f: Floats) -> Decimal | None:
        v = self.fn(candle)
        self.values.append(v)
        self.total += v
        if len(self.values) > self.n:
            self.total -= self.values[-1 - self.n]
        return self.total if len(self.values) >= self.n else None

    def remove(self) -> None:
        v = self.values.pop()
        self.total -= v
        if len(self.values) >= self.n:
            self.total += self.values[-self.n]


class _Anchored(_Exact):
    """Exact cumulative sums since the last ``anchor`` boundary (UTC): CVD and VWAP per session."""

    def __init__(self, anchor: str, fn: Callable[[Candle], tuple[Decimal, Decimal]],
                 result: Callable[[Decimal, Decimal], Decimal | None], keep: int) -> None:
        super().__init__(keep)
        self.anchor_ms = timeframe_ms(anchor)
        self.fn, self.result = fn, result
        self.states: deque[tuple[int, Decimal, Decimal]] = deque(maxlen=keep + 1)  # (session, a, b) after each bar

    def _next(self, candle: Candle, f: Floats) -> Decimal | None:
        session = bucket_start(candle.ts, self.anchor_ms)
        a, b = self.fn(candle)
        if self.states and self.states[-1][0] == session:
            _, pa, pb = self.states[-1]
            a, b = pa + a, pb + b
        self.states.append((session, a, b))
        return self.result(a, b)

    def remove(self) -> None:
        self.states.pop()


def _ema(period: int) -> _Stream:
    return _Stream(lambda xs: ta.EMA.open_and_fill(xs, period), period)


def _delta(c: Candle) -> Decimal:
    return c.buy_volume - c.sell_volume


def make(spec: r.IndicatorSpec, keep: int = 600, candles: Sequence[Candle] = ()) -> Indicator:
    """The computation ``spec`` reads, warmed up over ``candles`` (closed, oldest first)."""
    ind = _make(spec, keep)
    for candle in candles:
        ind.add(candle, floats(candle))
    return ind


def _make(spec: r.IndicatorSpec, keep: int) -> Indicator:
    if isinstance(spec, r.SMA):
        period = spec.period
        return _Single(_Stream(lambda xs: ta.SMA.open_and_fill(xs, period), period), spec.source, keep)
    if isinstance(spec, r.EMA):
        return _Single(_ema(spec.period), spec.source, keep)
    if isinstance(spec, r.RSI):
        period = spec.period
        return _Single(_Stream(lambda xs: ta.RSI.open_and_fill(xs, period), period + 1), spec.source, keep)
    if isinstance(spec, r.VolumeSMA):
        period = spec.period
        return _Single(_Stream(lambda xs: ta.SMA.open_and_fill(xs, period), period), "volume", keep)
    if isinstance(spec, r.MACD):
        return _MACD(spec, keep)
    if isinstance(spec, r.BBands):
        return _Bands(spec, keep)
    if isinstance(spec, r.ATR):
        return _ATR(spec, keep)
    if isinstance(spec, r.CVD):
        if spec.bars is not None:
            return _RollingSum(spec.bars, _delta, keep)
        return _Anchored(spec.anchor or "1d", lambda c: (_delta(c), Decimal(0)), lambda a, b: a, keep)
    if isinstance(spec, r.VWAP):
        return _Anchored(spec.anchor, lambda c: (c.quote_volume, c.volume), lambda q, v: q / v if v else None, keep)
    raise TypeError(f"no incremental implementation for {spec!r}")
