"""Conditions, compiled once per rule into functions of a view (docs/rules.md defines them; the tests evaluate the
same definitions independently with pandas).

- ``greater_than``/``less_than``: strict, on the bar.
- ``crosses_up``: previous bar ``left <= right`` and this bar ``left > right``; ``crosses_down`` mirrored;
  ``crossing``: either.
- channel ``inside``: ``lower <= left <= upper``; ``outside``: not inside; ``entering``: outside on the previous bar,
  inside now; ``exiting``: the reverse.
- ``moving_up`` by ``amount`` within ``bars``: ``left - left[bars ago] >= amount`` (``_pct``: relative, in percent);
  ``moving_down`` mirrored. Within a ``window``: against the last bar that started at least that long before.
- ``volume_spike``: ``volume > factor × mean(volume of the `period` bars before this one)``.
- ``all``/``any``: every / some leaf holds; the value is the first leaf's (``any``: the first that holds).

A compiled condition is called with a view (``window.CandleWindow``, ``WindowAsOf`` or ``TickView``) and the exchange
time of the evaluation, and returns ``(holds, value)``: ``value`` is the left operand's, for the message. A leaf that
names another series reads the window of that series as of that time (``CandleWindow.as_of``): never later data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from services.alert_engine.core.window import CandleWindow, SeriesKey, View
from shared import rules as r

Result = tuple[bool, Any]
Evaluator = Callable[[View, int | None], Result]
Getter = Callable[[View, int], Any]
_HUNDRED = Decimal(100)


def compile_condition(cond: Any, windows: Mapping[SeriesKey, CandleWindow]) -> Evaluator:
    """``cond`` as a function of (view, exchange time of the evaluation); ``windows``: every series' window, for the
    leaves that read another series."""
    if isinstance(cond, r.All):
        parts = [compile_condition(c, windows) for c in cond.all]
        return lambda view, now: _all(parts, view, now)
    if isinstance(cond, r.AnyOf):
        parts = [compile_condition(c, windows) for c in cond.any]
        return lambda view, now: _any(parts, view, now)
    leaf = _leaf(cond)
    if cond.timeframe is None and cond.symbol is None:
        return lambda view, now: leaf(view)
    tf, sym = cond.timeframe, cond.symbol

    def elsewhere(view: View, now: int | None) -> Result:
        ex, own_sym, own_tf = view.key
        other = windows.get((ex, sym or own_sym, tf or own_tf))
        if other is None:
            return False, None
        return leaf(other if now is None else other.as_of(now))

    return elsewhere


def _all(parts: list[Evaluator], view: View, now: int | None) -> Result:
    results = [p(view, now) for p in parts]
    return all(ok for ok, _ in results), results[0][1]


def _any(parts: list[Evaluator], view: View, now: int | None) -> Result:
    results = [p(view, now) for p in parts]
    return next((x for x in results if x[0]), results[0])


def getter(operand: Any) -> Getter:
    """A function (view, bars back) -> the operand's value there, None if unknown."""
    if isinstance(operand, Decimal):
        return lambda view, offset: operand
    if isinstance(operand, r.IndicatorSpec):
        return lambda view, offset: view.indicator_value(operand, offset)
    if operand in r.TICKER_FIELDS:
        return lambda view, offset: view.ticker_field(operand, offset)
    return lambda view, offset: view.field(operand, offset)


def _leaf(cond: Any) -> Callable[[View], Result]:
    if isinstance(cond, r.Compare):
        return _compare(cond.op, getter(cond.left), getter(cond.right))
    if isinstance(cond, r.Channel):
        return _channel(cond.op, getter(cond.left), getter(cond.lower), getter(cond.upper))
    if isinstance(cond, r.Moving):
        return _moving(cond)
    if isinstance(cond, r.VolumeSpike):
        return _spike(cond)
    raise TypeError(f"unknown condition {cond!r}")


def _compare(op: str, left: Getter, right: Getter) -> Callable[[View], Result]:
    if op in ("greater_than", "less_than"):
        above = op == "greater_than"

        def level(view: View) -> Result:
            a, b = left(view, 0), right(view, 0)
            if a is None or b is None:
                return False, a
            return (a > b if above else a < b), a

        return level
    want_up, want_down = op in ("crosses_up", "crossing"), op in ("crosses_down", "crossing")

    def cross(view: View) -> Result:
        a, b = left(view, 0), right(view, 0)
        if a is None or b is None:
            return False, a
        pa, pb = left(view, 1), right(view, 1)
        if pa is None or pb is None:
            return False, a
        return (want_up and pa <= pb and a > b) or (want_down and pa >= pb and a < b), a

    return cross


def _channel(op: str, left: Getter, lower: Getter, upper: Getter) -> Callable[[View], Result]:
    def inside(view: View, offset: int) -> bool | None:
        x, lo, hi = left(view, offset), lower(view, offset), upper(view, offset)
        if x is None or lo is None or hi is None:
            return None
        return bool(lo <= x <= hi)

    def channel(view: View) -> Result:
        value = left(view, 0)
        now = inside(view, 0)
        if now is None:
            return False, value
        if op == "inside_channel":
            return now, value
        if op == "outside_channel":
            return not now, value
        before = inside(view, 1)
        if before is None:
            return False, value
        return ((not before and now) if op == "entering_channel" else (before and not now)), value

    return channel


def _moving(cond: r.Moving) -> Callable[[View], Result]:
    left = getter(cond.left)
    pct, up = cond.op.endswith("_pct"), cond.op.startswith("moving_up")
    by = cond.percent if pct else cond.amount
    if by is None:  # (the model requires it)
        raise TypeError(f"{cond.op} without its threshold")
    window_ms, bars = cond.window_ms, cond.bars

    def moving(view: View) -> Result:
        a = left(view, 0)
        back = bars
        if window_ms is not None:  # the last bar that started at least ``window`` before this one
            last = view.bar_ts(0) if view.field("close", 0) is not None else None
            found = view.offset_at(last - window_ms) if last is not None else None
            if found is None:
                return False, a
            back = found
        b = left(view, back)
        if a is None or b is None:
            return False, a
        is_float = isinstance(a, float) or isinstance(b, float)
        change = float(a) - float(b) if is_float else a - b
        if pct:
            if not b:
                return False, a
            change = change / b * (100.0 if is_float else _HUNDRED)
        threshold = float(by) if is_float else by
        return (change >= threshold if up else -change >= threshold), a

    return moving


def _spike(cond: r.VolumeSpike) -> Callable[[View], Result]:
    mean_of = r.VolumeSMA(period=cond.period)
    factor = float(cond.factor)

    def spike(view: View) -> Result:
        volume = view.field("volume", 0)
        mean = view.indicator_value(mean_of, 1)
        if volume is None or mean is None:
            return False, volume
        return volume > factor * mean, volume

    return spike
