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

from services.alert_engine.core import indicators
from services.alert_engine.core.window import CANDLE_FIELDS, CandleWindow, SeriesKey, View, ticker_value
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
        return leaf
    tf, sym = cond.timeframe, cond.symbol

    def elsewhere(view: View, now: int | None) -> Result:
        ex, own_sym, own_tf = view.key
        other = windows.get((ex, sym or own_sym, tf or own_tf))
        if other is None:
            return False, None
        return leaf(other if now is None else other.as_of(now), now)

    return elsewhere


def _all(parts: list[Evaluator], view: View, now: int | None) -> Result:
    results = [p(view, now) for p in parts]
    return all(ok for ok, _ in results), results[0][1]


def _any(parts: list[Evaluator], view: View, now: int | None) -> Result:
    results = [p(view, now) for p in parts]
    return next((x for x in results if x[0]), results[0])


def getter(operand: Any) -> Getter:
    """A function (view, bars back) -> the operand's value there, None if unknown: one call that reads the view's
    sequences itself (the hot path of every evaluation)."""
    if isinstance(operand, Decimal):
        return lambda view, offset: operand
    if r.feed_kind(operand):
        feed_operand = operand

        def feed(view: View, offset: int) -> Any:
            feeds = view.feeds
            return None if feeds is None else feeds.value(feed_operand, offset)

        return feed
    if isinstance(operand, r.IndicatorSpec):
        n, spec = indicators.number(operand), operand

        def indicator(view: View, offset: int) -> Any:
            out = view.outs.get(n)
            if out is None:  # made on first use, warmed up over the kept candles
                view.window.indicator(spec)
                out = view.outs.get(n)
            i = offset + view.shift
            return out[-1 - i] if out is not None and i < len(out) else None

        return indicator
    if operand in r.TICKER_FIELDS:
        name = operand

        def ticker(view: View, offset: int) -> Any:
            tickers, i = view.tickers, offset + view.shift
            return ticker_value(tickers[-1 - i], name) if i < len(tickers) else None

        return ticker
    of = CANDLE_FIELDS[operand]

    def field(view: View, offset: int) -> Any:
        candles, i = view.candles, offset + view.shift
        return of(candles[-1 - i]) if i < len(candles) else None

    return field


Pair = Callable[[View], tuple[Any, Any]]


def pair_getter(operand: Any) -> Pair:
    """A function view -> the operand's (value, value one bar back): what crossings and channels read, in one call."""
    if isinstance(operand, Decimal):
        both = (operand, operand)
        return lambda view: both
    if isinstance(operand, r.IndicatorSpec):
        n, spec = indicators.number(operand), operand

        def indicator(view: View) -> tuple[Any, Any]:
            out = view.outs.get(n)
            if out is None:  # made on first use, warmed up over the kept candles
                view.window.indicator(spec)
                out = view.outs.get(n)
            i, have = view.shift, len(out) if out is not None else 0
            return (out[-1 - i] if i < have else None, out[-2 - i] if i + 1 < have else None)  # type: ignore[index]

        return indicator
    if operand in r.TICKER_FIELDS or r.feed_kind(operand):
        one = getter(operand)
        return lambda view: (one(view, 0), one(view, 1))
    of = CANDLE_FIELDS[operand]

    def field(view: View) -> tuple[Any, Any]:
        candles, i = view.candles, view.shift
        have = len(candles)
        return (of(candles[-1 - i]) if i < have else None, of(candles[-2 - i]) if i + 1 < have else None)

    return field


def _bar_ts(view: View) -> int | None:
    candles, i = view.candles, view.shift
    return candles[-1 - i].ts if i < len(candles) else None


def _offset_at(view: View, ts_limit: int) -> int | None:
    """Bars back to the last bar that started at or before ``ts_limit``; None if none is kept."""
    candles, s = view.candles, view.shift
    for off in range(len(candles) - s):
        ts = candles[-1 - s - off].ts
        if ts is None or ts <= ts_limit:
            return None if ts is None else off
    return None


def _leaf(cond: Any) -> Evaluator:
    if isinstance(cond, r.Compare):
        return _compare(cond, _floats(cond.left) == _floats(cond.right))
    if isinstance(cond, r.Channel):
        return _channel(cond)
    if isinstance(cond, r.Moving):
        return _moving(cond)
    if isinstance(cond, r.VolumeSpike):
        return _spike(cond)
    raise TypeError(f"unknown condition {cond!r}")


def order(a: Any, b: Any) -> int:
    """-1, 0 or 1 as ``a`` is below, equal to or above ``b``, exactly: a Decimal (candle field, threshold, CVD, VWAP)
    against a float (a TA indicator) too. They are compared as floats first, and exactly only when the floats are
    equal: rounding to the nearest float is monotone, so unequal floats never reverse the exact order, and
    ``Decimal(float)`` (exact, but a 50-digit number) is made only for the rare tie."""
    if type(a) is not type(b):
        fa, fb = float(a), float(b)
        if fa != fb:
            return 1 if fa > fb else -1
        a, b = Decimal(a), Decimal(b)
    return 1 if a > b else -1 if a < b else 0


def _floats(operand: Any) -> bool:
    """The operand's values are floats (a TA indicator); else Decimals (numbers, fields, CVD, VWAP)."""
    return isinstance(operand, r.IndicatorSpec) and not isinstance(operand, (r.CVD, r.VWAP))


def _against(c: Decimal) -> Callable[[Any], int]:
    """``order(x, c)`` for a float ``x`` and a constant: against the constant's float, exactly only on a tie (a float
    above or below the nearest float to ``c`` is above or below ``c`` itself)."""
    cf = float(c)
    return lambda x: 1 if x > cf else -1 if x < cf else order(x, c)


def _compare(cond: r.Compare, same_type: bool) -> Evaluator:
    """``same_type``: both sides are floats, or both Decimals: Python's own comparison is exact."""
    op = cond.op
    if not same_type and isinstance(cond.right, Decimal):  # an indicator against a number (RSI above 70)
        return _compare_number(op, pair_getter(cond.left), _against(cond.right))
    if op in ("greater_than", "less_than"):
        left, right = getter(cond.left), getter(cond.right)
        sign = 1 if op == "greater_than" else -1
        if same_type:
            def level(view: View, now: int | None) -> Result:
                a, b = left(view, 0), right(view, 0)
                if a is None or b is None:
                    return False, a
                return (a > b if sign > 0 else a < b), a
        else:
            def level(view: View, now: int | None) -> Result:
                a, b = left(view, 0), right(view, 0)
                if a is None or b is None:
                    return False, a
                return order(a, b) == sign, a

        return level
    want_up, want_down = op in ("crosses_up", "crossing"), op in ("crosses_down", "crossing")
    left2, right2 = pair_getter(cond.left), pair_getter(cond.right)

    def cross(view: View, now: int | None) -> Result:
        a, pa = left2(view)
        b, pb = right2(view)
        if a is None or b is None:
            return False, a
        if pa is None or pb is None:
            return False, a
        if same_type:
            return (want_up and pa <= pb and a > b) or (want_down and pa >= pb and a < b), a
        o = order(a, b)
        if o == 0:
            return False, a
        before = order(pa, pb)
        return (want_up and before <= 0 and o > 0) or (want_down and before >= 0 and o < 0), a

    return cross


def _compare_number(op: str, left2: Pair, against: Callable[[Any], int]) -> Evaluator:
    """``_compare`` of a float operand with a number: ``against(x)`` is ``order(x, number)``."""
    if op in ("greater_than", "less_than"):
        sign = 1 if op == "greater_than" else -1

        def level(view: View, now: int | None) -> Result:
            a = left2(view)[0]
            return (False if a is None else against(a) == sign), a

        return level
    want_up, want_down = op in ("crosses_up", "crossing"), op in ("crosses_down", "crossing")

    def cross(view: View, now: int | None) -> Result:
        a, pa = left2(view)
        if a is None or pa is None:
            return False, a
        o = against(a)
        if o == 0:
            return False, a
        before = against(pa)
        return (want_up and before <= 0 and o > 0) or (want_down and before >= 0 and o < 0), a

    return cross


def _inside(x: Any, lo: Any, hi: Any) -> bool | None:
    if x is None or lo is None or hi is None:
        return None
    return order(lo, x) <= 0 and order(x, hi) <= 0


def _channel(cond: r.Channel) -> Evaluator:
    op = cond.op
    left2, lower2, upper2 = pair_getter(cond.left), pair_getter(cond.lower), pair_getter(cond.upper)

    def channel(view: View, now: int | None) -> Result:
        (value, x1), (lo, lo1), (hi, hi1) = left2(view), lower2(view), upper2(view)
        inside = _inside(value, lo, hi)
        if inside is None:
            return False, value
        if op == "inside_channel":
            return inside, value
        if op == "outside_channel":
            return not inside, value
        before = _inside(x1, lo1, hi1)
        if before is None:
            return False, value
        return ((not before and inside) if op == "entering_channel" else (before and not inside)), value

    return channel


def _moving(cond: r.Moving) -> Evaluator:
    left, close = getter(cond.left), getter("close")
    pct, up = cond.op.endswith("_pct"), cond.op.startswith("moving_up")
    by = cond.percent if pct else cond.amount
    if by is None:  # (the model requires it)
        raise TypeError(f"{cond.op} without its threshold")
    window_ms, bars = cond.window_ms, cond.bars

    def moving(view: View, now: int | None) -> Result:
        a = left(view, 0)
        back = bars
        if window_ms is not None:  # the last bar that started at least ``window`` before this one
            last = _bar_ts(view) if close(view, 0) is not None else None
            found = _offset_at(view, last - window_ms) if last is not None else None
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


def _spike(cond: r.VolumeSpike) -> Evaluator:
    volume_of, mean_of = getter("volume"), getter(r.VolumeSMA(period=cond.period))
    factor = float(cond.factor)

    def spike(view: View, now: int | None) -> Result:
        volume = volume_of(view, 0)
        mean = mean_of(view, 1)
        if volume is None or mean is None:
            return False, volume
        return order(volume, factor * mean) > 0, volume

    return spike
