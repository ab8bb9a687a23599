"""The alerts a rule sends: deterministic ids, the message from the rule's template, the ``Fire`` handed to the app.

An alert id is a hash of (rule, exchange, symbol, timeframe, bar ts, state, extra): the same data and rule give the
same id in a replay, so the app's commit (``alert_fired`` SET NX) publishes it once. ``once_per_bar`` intrabar and
tick alerts share the bar's id (one alert per bar); ``every_time`` ones add what they fired on (``extra``).
"""

from __future__ import annotations

import functools
import hashlib
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.alert_engine.core.firing import Verdict, cooldown_of
from shared.rules import CVD, Rule, describe
from shared.schemas import Alert, Candle

SeriesKey = tuple[str, str, str]
_CVD_1D = CVD(anchor="1d")  # the message field ``cvd``
_TEMPLATE_ALL = frozenset(("delta", "cvd", "time"))


@dataclass(slots=True)
class Fire:
    """An alert the rule wants to send; the app's commit applies the cooldown and publishes it."""

    alert: Alert
    fingerprint: str
    cooldown_ms: int  # FOREVER for ``once``; resolved alerts are never cooled down (0)
    now_ms: int


def alert_id(rule: str, exchange: str, symbol: str, timeframe: str, ts: int, state: str, extra: str = "") -> str:
    """Deterministic alert id: the same data and rule give the same id in a replay."""
    raw = "\x1f".join((rule, exchange, symbol, timeframe, str(ts), state, extra))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=65_536)
def fingerprint(rule: str, exchange: str, symbol: str, timeframe: str) -> str:
    """Identity of one rule on one series: the cooldown and firing state are kept per fingerprint."""
    return hashlib.sha256("\x1f".join((rule, exchange, symbol, timeframe)).encode()).hexdigest()[:24]


def bar_fire(rule: Rule, fp: str, key: SeriesKey, candle: Candle, now: int, value: Any, state: Verdict,
             cvd: Any, extra: str = "") -> Fire:
    """The alert of a bar (closed, or in progress with ``extra``) evaluated at exchange time ``now``; ``cvd()`` gives
    the CVD since 00:00 UTC when the template names it."""
    ex, sym, tf = key
    condition = _describe_cached(rule.condition)
    need = _template_fields(rule.message)
    fields = {
        "rule": rule.name, "exchange": ex, "symbol": sym, "timeframe": tf, "price": candle.close,
        "value": _fmt(value), "open": candle.open, "high": candle.high, "low": candle.low,
        "close": candle.close, "volume": candle.volume, "buy_volume": candle.buy_volume,
        "sell_volume": candle.sell_volume, "ts": candle.ts, "condition": condition, "severity": rule.severity,
        "state": state,
    }
    # what costs something only when the template names it
    if "delta" in need:
        fields["delta"] = candle.delta
    if "cvd" in need:
        fields["cvd"] = cvd()
    if "time" in need:
        fields["time"] = _time(now)
    if isinstance(value, float):
        value = Decimal(repr(value))
    kwargs = dict(
        id=alert_id(rule.name, ex, sym, tf, candle.ts, str(state), extra), rule=rule.name, exchange=ex, symbol=sym,
        timeframe=tf, ts=candle.ts, fired_at=now, price=candle.close, value=value, condition=condition,
        message=rule.message.format(**fields), severity=rule.severity, labels=dict(rule.labels),
        channels=list(rule.channels), state=state,
    )
    # every field already has its model type (validated rule, candle, str/int/Decimal): no second validation
    alert = (Alert.trusted(**kwargs) if (value is None or type(value) is Decimal)
             and type(candle.close) is Decimal and type(candle.ts) is int and type(now) is int
             else Alert(**kwargs))
    return Fire(alert, fp, cooldown_of(rule, state), now)


def tick_fire(rule: Rule, fp: str, key: SeriesKey, bar: int, ts: int, price: Decimal | None, value: Any, cvd: Any,
              extra: str) -> Fire:
    """The alert of a trade or ticker at exchange time ``ts`` in bar ``bar`` (``extra`` "": the bar's own id)."""
    ex, sym, tf = key
    condition = _describe_cached(rule.condition)
    fields: dict[str, Any] = {
        "rule": rule.name, "exchange": ex, "symbol": sym, "timeframe": tf, "price": price,
        "value": _fmt(value), "open": "n/a", "high": "n/a", "low": "n/a", "close": price, "volume": "n/a",
        "buy_volume": "n/a", "sell_volume": "n/a", "delta": "n/a", "ts": ts, "time": _time(ts),
        "condition": condition, "severity": rule.severity, "state": "firing",
    }
    if "cvd" in _template_fields(rule.message):
        fields["cvd"] = cvd()
    alert = Alert(
        id=alert_id(rule.name, ex, sym, tf, bar, "firing", extra), rule=rule.name, exchange=ex, symbol=sym,
        timeframe=tf, ts=ts, fired_at=ts, price=price,
        value=Decimal(repr(value)) if isinstance(value, float) else value,
        condition=condition, message=rule.message.format(**fields), severity=rule.severity,
        labels=dict(rule.labels), channels=list(rule.channels), state="firing",
    )
    return Fire(alert, fp, cooldown_of(rule, "firing"), ts)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_described: dict[int, tuple[Any, str]] = {}


def _describe_cached(cond: Any) -> str:
    """``describe(cond)``, once per condition object (rules are immutable; a reload brings new objects)."""
    hit = _described.get(id(cond))
    if hit is not None and hit[0] is cond:
        return hit[1]
    if len(_described) > 4096:
        _described.clear()
    text = describe(cond)
    _described[id(cond)] = (cond, text)
    return text


@functools.lru_cache(maxsize=4096)
def _template_fields(message: str) -> frozenset[str]:
    """The field names a message template uses (``{cvd}``, ``{time:...}``, ``{price.x}`` -> price)."""
    try:
        names = {name.split(".", 1)[0].split("[", 1)[0]
                 for _, name, _, _ in string.Formatter().parse(message) if name}
    except ValueError:  # not a valid template: every field, and format() reports it as before
        return _TEMPLATE_ALL
    return frozenset(names)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
