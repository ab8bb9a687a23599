"""Honest backtest output (issue 22, point 4), as pure functions ``sentinel backtest`` can call.

- ``order_alerts``: alerts in time order (bar start, then evaluation time), not grouped by rule.
- ``coverage`` / ``partial_bars`` / ``drop_partial_bar_alerts``: a bar the data does not cover from its start to its
  end is partial (a recording that starts at 23:54:15 does not cover the 23:54 1m bar; one that ends at 00:00:46 does
  not cover the 00:00 5m bar); a bar-close alert on such a bar is an artefact of where the file was cut.
- ``explain_silence``: why a rule fired nothing — disabled, expired or snoozed, a pattern or exchange that matched no
  symbol of the data, a timeframe that was not built, fewer bars than its first evaluation needs (counted with the
  engine's own indicators, talipp, and beside the engine's full warm-up), or a condition that simply never held.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.alert_engine.core import AlertEngine, CandleWindow
from shared import rules as r
from shared.schemas import Alert, Candle
from shared.timeframes import bucket_start, timeframe_ms

SeriesKey = tuple[str, str, str]
_DAY = re.compile(r"-(\d{4}-\d{2}-\d{2})\.(csv|zip)(\.gz)?$")
_MONTH = re.compile(r"-(\d{4}-\d{2})\.(csv|zip)(\.gz)?$")
_INDICATORS = tuple(r.INDICATORS.values())
_CROSS_OPS = ("crossing", "crosses_up", "crosses_down", "entering_channel", "exiting_channel")


# ---- time order -----------------------------------------------------------------------------------------------------


def order_alerts(alerts: Iterable[Alert]) -> list[Alert]:
    """Alerts by the start of their bar, then their evaluation time, rule and symbol (stable otherwise)."""
    return sorted(alerts, key=lambda a: (a.ts, a.fired_at, a.rule, a.exchange, a.symbol))


# ---- partial bars ---------------------------------------------------------------------------------------------------


def coverage(path: Path, first_ts: int, last_ts: int) -> tuple[int, int]:
    """The time [start, end) a trades file covers: a Binance archive's whole day or month when its name says so
    (``BTCUSDT-trades-2024-08-08.csv``: a quiet last minute is still covered), else its first to its last trade."""
    if m := _DAY.search(path.name):
        start = int(datetime.fromisoformat(m[1]).replace(tzinfo=UTC).timestamp() * 1000)
        if start <= first_ts and last_ts < start + 86_400_000:
            return start, start + 86_400_000
    if m := _MONTH.search(path.name):
        begin = datetime.fromisoformat(m[1] + "-01").replace(tzinfo=UTC)
        after = begin.replace(year=begin.year + begin.month // 12, month=begin.month % 12 + 1)
        start, end = int(begin.timestamp() * 1000), int(after.timestamp() * 1000)
        if start <= first_ts and last_ts < end:
            return start, end
    return first_ts, last_ts + 1


def partial_bars(bar_starts: Iterable[int], timeframe: str, covered: tuple[int, int]) -> set[int]:
    """Starts of the bars that the covered time ``[start, end)`` does not hold from their start to their end."""
    tf = timeframe_ms(timeframe)
    start, end = covered
    return {ts for ts in bar_starts if ts < start or ts + tf > end or bucket_start(ts, tf) != ts}


def data_coverage(candles: dict[SeriesKey, list[Candle]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(exchange, symbol) → the time its candles show data for, from its shortest timeframe: its first bar's start
    to its last bar's end (candles alone cannot say more; ``coverage`` of the trades file is exact)."""
    out: dict[tuple[str, str], tuple[int, int, int]] = {}
    for (ex, sym, tf), series in candles.items():
        if not series:
            continue
        tf_ms = timeframe_ms(tf)
        if (ex, sym) not in out or tf_ms < out[(ex, sym)][2]:
            out[(ex, sym)] = (series[0].ts, series[-1].ts + tf_ms, tf_ms)
    return {pair: (start, end) for pair, (start, end, _) in out.items()}


def drop_partial_bar_alerts(alerts: Iterable[Alert], partial: dict[SeriesKey, set[int]]) -> tuple[list[Alert],
                                                                                                   list[Alert]]:
    """(kept, dropped): alerts fired at the close of a partial bar of their series are dropped."""
    kept, dropped = [], []
    for a in alerts:
        bars = partial.get((a.exchange, a.symbol, a.timeframe or ""), set())
        closes_bar = a.timeframe is not None and a.fired_at == a.ts + timeframe_ms(a.timeframe)
        (dropped if closes_bar and a.ts in bars else kept).append(a)
    return kept, dropped


# ---- why nothing fired -----------------------------------------------------------------------------------------------


def explain_silence(ruleset: r.RuleSet, candles: dict[SeriesKey, list[Candle]],
                    alerts: Iterable[Alert]) -> dict[str, str]:
    """rule name → why it fired nothing, for every rule of ``ruleset`` without a firing alert."""
    fired = {a.rule for a in alerts if a.state == "firing"}
    pairs = sorted({(ex, sym) for ex, sym, _ in candles})
    spans = [c.ts for series in candles.values() for c in (series[:1] + series[-1:])]
    data_from, data_to = (min(spans), max(spans)) if spans else (None, None)
    engine = AlertEngine(ruleset)
    out: dict[str, str] = {}
    for rule in ruleset.rules:
        if rule.name not in fired:
            out[rule.name] = _why(rule, candles, pairs, data_from, data_to, engine)
    return out


def _why(rule: r.Rule, candles: dict[SeriesKey, list[Candle]], pairs: list[tuple[str, str]], data_from: int | None,
         data_to: int | None, engine: AlertEngine) -> str:
    if not rule.enabled:
        return "disabled (enabled: false)"
    expires = rule.expires_ms()
    if expires is not None and data_from is not None and expires <= data_from:
        return f"expired at {_iso(expires)}, before the data begins ({_iso(data_from)})"
    matched = [p for p in pairs if rule.matches(*p)]
    if not matched:
        where = f" on exchange {rule.exchange}" if rule.exchange else ""
        have = ", ".join(f"{ex} {sym}" for ex, sym in pairs) or "none"
        return f"symbols {rule.symbols}{where} matched no symbol of the data (it has: {have})"
    built = [(ex, sym) for ex, sym in matched if (ex, sym, rule.timeframe) in candles]
    if not built:
        have = sorted({tf for ex, sym, tf in candles if (ex, sym) in matched})
        return f"its timeframe {rule.timeframe} was not built (built: {', '.join(have)}); add it to --timeframes"
    need = first_evaluation_bars(rule.condition, rule.timeframe_ms)
    have_bars = max(len(candles[(ex, sym, rule.timeframe)]) for ex, sym in built)
    if have_bars < need:
        full = max(max(engine.routes.lookbacks(ex, sym, rule.timeframe).values(), default=0) for ex, sym in built)
        return (f"warm-up: its condition needs {need} closed {rule.timeframe} bars before it can first be evaluated "
                f"(the engine's full warm-up is {full}); the data has {have_bars}")
    note = ""
    if expires is not None and data_to is not None and expires <= data_to:
        note = f"; it expired at {_iso(expires)}, before the data ends"
    if rule.snooze_until is not None:
        note += f"; snoozed until {rule.snooze_until.isoformat()}"
    return (f"its condition never held on the {have_bars - need + 1} {rule.timeframe} bars it could be evaluated "
            f"on{note}")


def first_evaluation_bars(cond: Any, tf_ms: int) -> int:
    """Closed bars a condition needs before it has every value it compares (``all``: each part; ``any``: the
    quickest). An indicator's first value is counted by feeding the engine's own implementation."""
    if isinstance(cond, r.All):
        return max(first_evaluation_bars(c, tf_ms) for c in cond.all)
    if isinstance(cond, r.AnyOf):
        return min(first_evaluation_bars(c, tf_ms) for c in cond.any)
    if isinstance(cond, r.VolumeSpike):
        return cond.period + 1  # the mean of the `period` bars before this one
    back = 1 if getattr(cond, "op", "") in _CROSS_OPS else 0
    if isinstance(cond, r.Moving):
        back = cond.bars if cond.window_ms is None else -(-cond.window_ms // tf_ms)
    operands = [getattr(cond, n) for n in ("left", "right", "lower", "upper") if hasattr(cond, n)]
    first = max([1] + [first_value_bar(o) for o in operands if isinstance(o, _INDICATORS)])
    return first + back


@lru_cache(maxsize=256)
def first_value_bar(spec: Any) -> int:
    """The number of bars after which the engine's incremental ``spec`` first has a value."""
    window = CandleWindow(("x", "x", "1m"), keep=600)
    window.indicator(spec)
    for n in range(1, 200_000):
        price = 100 + (n * 7919) % 13  # moving prices and volumes: no indicator is undefined on them
        window.push(Candle(exchange="x", symbol="x", timeframe="1m", ts=n * 60_000, open=price, high=price + 1,
                           low=price - 1, close=price, volume=1 + n % 5, buy_volume=1, sell_volume=n % 5,
                           quote_volume=price, trades=1), None)
        if window.value(spec) is not None:
            return n
    return 200_000


def _iso(ms: int | None) -> str:
    return "?" if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
