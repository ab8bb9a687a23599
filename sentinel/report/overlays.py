"""The rules' indicators over each chart, computed by the engine's own incremental indicators (talipp).

For one series (exchange, symbol, timeframe): every indicator operand of the rules that read it — moving averages
and bands drawn over the price, ``volume_sma`` over the volume, oscillators (RSI, MACD, ATR, CVD) in a pane of their
own — and the constant levels a rule compares a price with (a channel's bounds, ``close > 62000``).
VWAP needs the candles' quote volume, which ``candles_<tf>.csv`` does not hold: it is left out, and said so.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.alert_engine.core import CandleWindow
from shared import rules as r
from shared.schemas import Candle

PRICE_FIELDS = ("open", "high", "low", "close", "price", "vwap", "last", "bid", "ask", "mid")
_PRICE_PANE = (r.SMA, r.EMA, r.BBands)
_VOLUME_PANE = (r.VolumeSMA,)


@dataclass
class Line:
    label: str
    pane: str  # price | volume | oscillator
    points: list[tuple[int, float]]  # (bar start ms, value)


def leaves(cond: Any) -> list[Any]:
    """The comparisons inside ``all:`` / ``any:`` groups (a leaf is its own)."""
    parts = cond.all if isinstance(cond, r.All) else cond.any if isinstance(cond, r.AnyOf) else None
    return [cond] if parts is None else [x for part in parts for x in leaves(part)]


def reads(rule: r.Rule, exchange: str, symbol: str, timeframe: str) -> list[Any]:
    """The leaf conditions of ``rule`` evaluated on this series."""
    own = rule.matches(exchange, symbol)
    return [c for c in leaves(rule.condition)
            if (c.symbol == symbol if c.symbol else own) and (c.timeframe or rule.timeframe) == timeframe]


def series_lines(rules: list[r.Rule], exchange: str, symbol: str, timeframe: str,
                 candles: list[Candle]) -> tuple[list[Line], list[tuple[str, float]], list[str]]:
    """(indicator lines, constant price levels, notes) for one series."""
    specs: dict[tuple, Any] = {}
    levels: dict[str, float] = {}
    notes: list[str] = []
    for rule in rules:
        for cond in reads(rule, exchange, symbol, timeframe):
            operands = [getattr(cond, n) for n in ("left", "right", "lower", "upper") if hasattr(cond, n)]
            for op in operands:
                for spec in _expand(op):
                    specs.setdefault(spec.spec(), spec)
            if _compares_a_price(operands):
                for op in operands:
                    if isinstance(op, Decimal):
                        levels[f"{rule.name}: {op}"] = float(op)
            if isinstance(cond, r.VolumeSpike):
                specs.setdefault(r.VolumeSMA(period=cond.period).spec(), r.VolumeSMA(period=cond.period))
    lines = []
    for spec in specs.values():
        if isinstance(spec, r.VWAP):
            notes.append(f"{spec.label()} not drawn: the candles files hold no quote volume")
            continue
        label = spec.label() if not isinstance(spec, (r.BBands, r.MACD)) else _band_label(spec)
        points = values(spec, candles)
        if points:
            lines.append(Line(label, _pane(spec), points))
        else:
            notes.append(f"{label}: no value on these {len(candles)} bars (still warming up)")
    return lines, sorted(levels.items(), key=lambda kv: kv[1]), notes


def values(spec: Any, candles: list[Candle]) -> list[tuple[int, float]]:
    """The indicator after each closed candle, as the engine computes it (bars still warming up are left out)."""
    window = CandleWindow(("x", "x", "1m"), keep=max(600, len(candles)))
    window.indicator(spec)
    out = []
    for c in candles:
        window.push(c, None)
        v = window.value(spec)
        if v is not None:
            out.append((c.ts, float(v)))
    return out


def _expand(op: Any) -> list[Any]:
    """Bands and MACD are drawn whole (all three lines), whichever output the rule reads."""
    if isinstance(op, r.BBands):
        return [op.model_copy(update={"output": o}) for o in ("upper", "middle", "lower")]
    if isinstance(op, r.MACD):
        return [op.model_copy(update={"output": o}) for o in ("line", "signal")]
    return [op] if isinstance(op, tuple(r.INDICATORS.values())) else []


def _compares_a_price(operands: list[Any]) -> bool:
    return any(isinstance(o, str) and o in PRICE_FIELDS for o in operands) or \
        any(isinstance(o, _PRICE_PANE) for o in operands)


def _pane(spec: Any) -> str:
    if isinstance(spec, _PRICE_PANE):
        return "price"
    if isinstance(spec, _VOLUME_PANE):
        return "volume"
    return "oscillator"


def _band_label(spec: Any) -> str:
    return f"{spec.key}({','.join(str(v) for k, v in spec.model_dump().items() if k not in ('output', 'source'))})" \
        f" {spec.output}"
