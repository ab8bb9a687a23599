"""Pure rule evaluation: candles and tickers in, alerts to fire out. No Redis, no clock, no asyncio.

Time is exchange time: a closed candle is evaluated "at" its close (``ts + timeframe``), so a replay of a recording
behaves exactly like the live market did. ``AlertEngine.on_candle`` returns ``Fire`` records; the app gates each
through the cooldown (atomically in Redis, keyed by ``Fire.fingerprint``) and the alert-id record, then publishes.

Definitions (the tests evaluate the same ones independently with pandas):

- ``greater_than``/``less_than``: strict, on the bar.
- ``crosses_up``: previous bar ``left <= right`` and this bar ``left > right``; ``crosses_down`` mirrored;
  ``crossing``: either.
- channel ``inside``: ``lower <= left <= upper``; ``outside``: not inside; ``entering``: outside on the previous bar,
  inside now; ``exiting``: the reverse.
- ``moving_up`` by ``amount`` within ``bars``: ``left - left[bars ago] >= amount`` (``_pct``: relative, in percent);
  ``moving_down`` mirrored.
- ``volume_spike``: ``volume > factor × mean(volume of the `period` bars before this one)``.
- A rule is "firing" from the first bar its condition holds for ``for`` (exchange time since the first true bar's
  close; 0 = at once); it fires on each such bar (``every_time``, ``once_per_bar``, ``once_per_bar_close`` — on
  closed candles they coincide) or only the first time ever (``once``), subject to the cooldown; when the condition
  stops holding it resolves (an alert with state ``resolved`` if ``notify_on_resolve``).
- Intrabar (in-progress candles, ``on_live_candle``): only ``every_time`` and ``once_per_bar`` rules, which TradingView
  also evaluates on every tick; ``once_per_bar_close`` and ``once`` never see in-progress data, so they never repaint.
"""

from __future__ import annotations

import functools
import hashlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.alert_engine import indicators
from services.alert_engine import rules as r
from shared.schemas import Alert, Candle, Ticker
from shared.timeframes import timeframe_ms

SeriesKey = tuple[str, str, str]  # exchange, symbol, timeframe

#: Cooldown value meaning "never again" (frequency ``once``).
FOREVER = -1
_BPS = Decimal(10_000)
_HUNDRED = Decimal(100)


def alert_id(rule: str, exchange: str, symbol: str, timeframe: str, ts: int, state: str, extra: str = "") -> str:
    """Deterministic alert id: the same data and rule give the same id in a replay."""
    raw = "\x1f".join((rule, exchange, symbol, timeframe, str(ts), state, extra))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=65_536)
def fingerprint(rule: str, exchange: str, symbol: str, timeframe: str) -> str:
    """Identity of one rule on one series: the cooldown and firing state are kept per fingerprint."""
    return hashlib.sha256("\x1f".join((rule, exchange, symbol, timeframe)).encode()).hexdigest()[:24]


@dataclass(slots=True)
class Fire:
    """An alert the rule wants to send; the app applies the cooldown and publishes it."""

    alert: Alert
    fingerprint: str
    cooldown_ms: int  # FOREVER for ``once``; resolved alerts are never cooled down (0)
    now_ms: int


@dataclass(slots=True)
class RuleStatus:
    """Per fingerprint: what the API shows, and what the `for:` debounce and resolve logic need."""

    rule: str
    exchange: str
    symbol: str
    timeframe: str
    state: str = "inactive"  # inactive | pending | firing
    since_ms: int | None = None  # close time of the first bar of the current true run
    last_eval_ms: int | None = None
    last_fired_ms: int | None = None
    last_value: Any = None
    fired_in_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "exchange": self.exchange, "symbol": self.symbol, "timeframe": self.timeframe,
                "state": self.state, "since": self.since_ms, "last_eval": self.last_eval_ms,
                "last_fired": self.last_fired_ms,
                "last_value": None if self.last_value is None else str(self.last_value)}


class Series:
    """The recent closed candles of one (exchange, symbol, timeframe) and its incremental indicators."""

    def __init__(self, key: SeriesKey, keep: int = 600) -> None:
        self.key = key
        self.tf_ms = timeframe_ms(key[2])
        self.keep = keep
        self.candles: deque[Candle] = deque(maxlen=keep)
        self.tickers: deque[Ticker | None] = deque(maxlen=keep)  # latest ticker as of each bar's evaluation
        self.ind: dict[r._Indicator, indicators.Incremental] = {}
        self.provisional = False  # the last bar is an in-progress candle pushed for intrabar evaluation

    def indicator(self, spec: r._Indicator) -> indicators.Incremental:
        ind = self.ind.get(spec)  # frozen models hash and compare by value: equal specs share one indicator
        if ind is None:  # created late (e.g. after a reload): warm it up from the candles kept
            ind = self.ind[spec] = indicators.make(spec, self.keep)
            for candle in self.candles:
                ind.add(candle)
        return ind

    def push(self, candle: Candle, ticker: Ticker | None) -> bool:
        """Add a closed candle, or replace the last one (revision). False when it is older than the last bar."""
        if self.provisional:
            self.pop_provisional()
        if self.candles and candle.ts < self.candles[-1].ts:
            return False
        if self.candles and candle.ts == self.candles[-1].ts:
            if candle.revision < self.candles[-1].revision:
                return False
            self.candles[-1] = candle
            self.tickers[-1] = ticker
            for ind in self.ind.values():
                ind.replace(candle)
            return True
        self.candles.append(candle)
        self.tickers.append(ticker)
        for ind in self.ind.values():
            ind.add(candle)
        return True

    def push_provisional(self, candle: Candle, ticker: Ticker | None) -> bool:
        """Put an in-progress candle on top for one evaluation (undone by ``pop_provisional``)."""
        if self.provisional:
            self.pop_provisional()
        if self.candles and candle.ts <= self.candles[-1].ts:
            return False
        self.candles.append(candle)
        self.tickers.append(ticker)
        for ind in self.ind.values():
            ind.add(candle)
        self.provisional = True
        return True

    def pop_provisional(self) -> None:
        self.candles.pop()
        self.tickers.pop()
        for ind in self.ind.values():
            ind.remove()
        self.provisional = False

    # ---- operand values ---------------------------------------------------------------------------------------------

    def value(self, operand: Any, offset: int = 0) -> Any:
        """Value of ``operand`` ``offset`` bars back (0 = last bar); None if not available (yet)."""
        if isinstance(operand, Decimal):
            return operand
        if offset >= len(self.candles):
            return None
        if isinstance(operand, str):
            if operand in r.TICKER_FIELDS:
                return _ticker_value(self.tickers[-1 - offset], operand)
            candle = self.candles[-1 - offset]
            if operand == "price":
                return candle.close
            if operand == "delta":
                return candle.delta
            if operand == "trades":
                return Decimal(candle.trades)
            return getattr(candle, operand)
        return self.indicator(operand).get(offset)


def _ticker_value(t: Ticker | None, name: str) -> Decimal | None:
    if t is None:
        return None
    if name == "last":
        return t.last
    if name in ("bid", "ask"):
        return getattr(t, name)
    if t.bid is None or t.ask is None:
        return None
    if name == "mid":
        return (t.bid + t.ask) / 2
    if name == "spread":
        return t.ask - t.bid
    mid = (t.bid + t.ask) / 2
    return (t.ask - t.bid) / mid * _BPS if mid else None  # spread_bps


def _sub(a: Any, b: Any) -> Any:
    if isinstance(a, float) or isinstance(b, float):
        return float(a) - float(b)
    return a - b


def _scale(x: Decimal, like: Any) -> Any:
    return float(x) if isinstance(like, float) else x


@dataclass(slots=True)
class _Eval:
    ok: bool
    value: Any = None  # the left operand's value, for the message


class AlertEngine:
    """Evaluates a rule set on candles (and tickers). Feed it in exchange order per series."""

    def __init__(self, ruleset: r.RuleSet | None = None, *, keep: int = 600) -> None:
        self.keep = keep
        self.series: dict[SeriesKey, Series] = {}
        self.tickers: dict[tuple[str, str], Ticker] = {}
        self.status: dict[str, RuleStatus] = {}
        self.rules: list[r.Rule] = []
        self.set_rules(ruleset or r.RuleSet())

    # ---- rules and what they need -----------------------------------------------------------------------------------

    def set_rules(self, ruleset: r.RuleSet) -> None:
        """Swap the rule set; series data (and its indicators) are kept, state of removed rules dropped."""
        self.rules = ruleset.enabled
        self._routes: dict[SeriesKey, list[r.Rule]] = {}
        names = {rule.name for rule in self.rules}
        self.status = {fp: s for fp, s in self.status.items() if s.rule in names}

    def needs(self, exchange: str, symbol: str) -> set[str]:
        """Timeframes of (exchange, symbol) some rule reads (its own, and those its conditions name)."""
        out: set[str] = set()
        for rule in self.rules:
            if rule.exchange is not None and rule.exchange != exchange:
                continue
            if rule.matches(exchange, symbol):
                out.add(rule.timeframe)
                out.update(tf for tf, sym in _wheres(rule.condition) if sym is None and tf)
            for tf, sym in _wheres(rule.condition):
                if sym == symbol:
                    out.add(tf or rule.timeframe)
        return out

    def needs_tickers(self, exchange: str, symbol: str) -> bool:
        return any(rule.matches(exchange, symbol) and _uses_tickers(rule.condition) for rule in self.rules)

    # ---- input --------------------------------------------------------------------------------------------------

    def on_ticker(self, ticker: Ticker) -> None:
        key = (ticker.exchange, ticker.symbol)
        last = self.tickers.get(key)
        if last is None or ticker.ts >= last.ts:
            self.tickers[key] = ticker

    def _rules_for(self, key: SeriesKey) -> list[r.Rule]:
        rules = self._routes.get(key)
        if rules is None:
            rules = self._routes[key] = [rule for rule in self.rules
                                         if rule.timeframe == key[2] and rule.matches(key[0], key[1])]
        return rules

    def _series(self, key: SeriesKey) -> Series:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series(key, self.keep)
        return s

    def on_candle(self, candle: Candle, *, fire: bool = True) -> list[Fire]:
        """A closed (or revised) candle. ``fire=False`` warms state up without producing alerts."""
        if not candle.closed:
            return self.on_live_candle(candle, fire=fire)
        key = (candle.exchange, candle.symbol, candle.timeframe)
        series = self._series(key)
        if not series.push(candle, self.tickers.get(key[:2])):
            return []
        now = candle.ts + series.tf_ms
        out: list[Fire] = []
        for rule in self._rules_for(key):
            fired = self._evaluate(rule, series, candle, now, intrabar=False)
            if fire:
                out.extend(fired)
        return out

    def on_live_candle(self, candle: Candle, *, fire: bool = True) -> list[Fire]:
        """An in-progress candle: evaluated only for rules whose frequency allows intrabar alerts."""
        key = (candle.exchange, candle.symbol, candle.timeframe)
        rules = [rule for rule in self.rules
                 if rule.frequency in ("every_time", "once_per_bar") and rule.timeframe == candle.timeframe
                 and rule.matches(candle.exchange, candle.symbol)]
        if not rules:
            return []
        series = self._series(key)
        if not series.push_provisional(candle, self.tickers.get(key[:2])):
            return []
        out: list[Fire] = []
        try:
            for rule in rules:
                fired = self._evaluate_intrabar(rule, series, candle)
                if fire:
                    out.extend(fired)
        finally:
            series.pop_provisional()
        return out

    # ---- evaluation -------------------------------------------------------------------------------------------------

    def _status(self, rule: r.Rule, key: SeriesKey) -> tuple[str, RuleStatus]:
        fp = fingerprint(rule.name, *key)
        st = self.status.get(fp)
        if st is None:
            st = self.status[fp] = RuleStatus(rule.name, *key)
        return fp, st

    def _evaluate(self, rule: r.Rule, series: Series, candle: Candle, now: int, intrabar: bool) -> list[Fire]:
        fp, st = self._status(rule, series.key)
        result = self.condition(rule.condition, rule, series, candle)
        st.last_eval_ms = now
        st.last_value = result.value
        out: list[Fire] = []
        if not result.ok:
            if st.state == "firing" and st.fired_in_run and rule.notify_on_resolve:
                out.append(self._fire(rule, fp, series, candle, now, result, "resolved"))
            st.state, st.since_ms, st.fired_in_run = "inactive", None, False
            return out
        if st.since_ms is None:
            st.since_ms = now
        if now - st.since_ms < rule.for_ms:
            st.state = "pending"
            return out
        st.state = "firing"
        if not self._allowed(rule, now):
            return out
        st.fired_in_run = True
        out.append(self._fire(rule, fp, series, candle, now, result, "firing"))
        return out

    def _evaluate_intrabar(self, rule: r.Rule, series: Series, candle: Candle) -> list[Fire]:
        """No state change: the bar is not final. ``for:`` needs a run already firing on closed bars."""
        now = candle.ts + series.tf_ms
        if not self._allowed(rule, now):
            return []
        fp, st = self._status(rule, series.key)
        if rule.for_ms and st.state != "firing":
            return []
        result = self.condition(rule.condition, rule, series, candle)
        if not result.ok:
            return []
        # once_per_bar: the same id as the close evaluation of this bar (one alert per bar);
        # every_time: one per change of the in-progress bar.
        extra = "" if rule.frequency == "once_per_bar" else f"live:{candle.trades}:{candle.last_trade_id}"
        return [self._fire(rule, fp, series, candle, now, result, "firing", extra)]

    @staticmethod
    def _allowed(rule: r.Rule, now: int) -> bool:
        expires, snooze = rule.expires_ms(), rule.snooze_ms()
        return not (expires is not None and now > expires) and not (snooze is not None and now < snooze)

    def _fire(self, rule: r.Rule, fp: str, series: Series, candle: Candle, now: int, result: _Eval, state: str,
              extra: str = "") -> Fire:
        ex, sym, tf = series.key
        cvd = series.value(r.CVD(anchor="1d"))
        fields = {
            "rule": rule.name, "exchange": ex, "symbol": sym, "timeframe": tf, "price": candle.close,
            "value": _fmt(result.value), "open": candle.open, "high": candle.high, "low": candle.low,
            "close": candle.close, "volume": candle.volume, "buy_volume": candle.buy_volume,
            "sell_volume": candle.sell_volume, "delta": candle.delta, "cvd": cvd, "ts": candle.ts,
            "time": datetime.fromtimestamp(now / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "condition": describe(rule.condition), "severity": rule.severity, "state": state,
        }
        value = result.value
        alert = Alert(
            id=alert_id(rule.name, ex, sym, tf, candle.ts, state, extra), rule=rule.name, exchange=ex, symbol=sym,
            timeframe=tf, ts=candle.ts, fired_at=now, price=candle.close,
            value=Decimal(repr(value)) if isinstance(value, float) else value,
            condition=fields["condition"], message=rule.message.format(**fields), severity=rule.severity,
            labels=dict(rule.labels), channels=list(rule.channels), state=state,
        )
        cooldown = 0 if state == "resolved" else (FOREVER if rule.frequency == "once" else rule.cooldown_ms)
        return Fire(alert, fp, cooldown, now)

    def mark_fired(self, fp: str, now: int) -> None:
        """Record that the app actually published for ``fp`` (for the API's "last fired")."""
        st = self.status.get(fp)
        if st is not None:
            st.last_fired_ms = now

    def _where(self, cond: r._Where, rule: r.Rule, series: Series) -> Series | None:
        if cond.timeframe is None and cond.symbol is None:
            return series
        ex, sym, tf = series.key
        return self.series.get((ex, cond.symbol or sym, cond.timeframe or tf))

    def condition(self, cond: Any, rule: r.Rule, series: Series, candle: Candle) -> _Eval:
        """Evaluate one condition on the last bar of ``series`` (or of the series the condition names)."""
        if isinstance(cond, r.All):
            results = [self.condition(c, rule, series, candle) for c in cond.all]
            return _Eval(all(x.ok for x in results), results[0].value)
        if isinstance(cond, r.AnyOf):
            results = [self.condition(c, rule, series, candle) for c in cond.any]
            hit = next((x for x in results if x.ok), results[0])
            return _Eval(hit.ok, hit.value)
        s = self._where(cond, rule, series)
        if s is None:
            return _Eval(False)
        if isinstance(cond, r.Compare):
            return _compare(s, cond)
        if isinstance(cond, r.Channel):
            return _channel(s, cond)
        if isinstance(cond, r.Moving):
            return _moving(s, cond)
        if isinstance(cond, r.VolumeSpike):
            return _spike(s, cond)
        raise TypeError(f"unknown condition {cond!r}")

    def status_rows(self) -> dict[str, dict[str, Any]]:
        return {fp: st.as_dict() for fp, st in self.status.items()}


def _compare(s: Series, c: r.Compare) -> _Eval:
    a, b = s.value(c.left), s.value(c.right)
    if a is None or b is None:
        return _Eval(False, a)
    if c.op == "greater_than":
        return _Eval(a > b, a)
    if c.op == "less_than":
        return _Eval(a < b, a)
    pa, pb = s.value(c.left, 1), s.value(c.right, 1)
    if pa is None or pb is None:
        return _Eval(False, a)
    up = pa <= pb and a > b
    down = pa >= pb and a < b
    return _Eval(up if c.op == "crosses_up" else down if c.op == "crosses_down" else up or down, a)


def _inside(s: Series, c: r.Channel, offset: int) -> bool | None:
    x, lo, hi = s.value(c.left, offset), s.value(c.lower, offset), s.value(c.upper, offset)
    if x is None or lo is None or hi is None:
        return None
    return lo <= x <= hi


def _channel(s: Series, c: r.Channel) -> _Eval:
    value = s.value(c.left)
    now = _inside(s, c, 0)
    if now is None:
        return _Eval(False, value)
    if c.op == "inside_channel":
        return _Eval(now, value)
    if c.op == "outside_channel":
        return _Eval(not now, value)
    before = _inside(s, c, 1)
    if before is None:
        return _Eval(False, value)
    return _Eval((not before and now) if c.op == "entering_channel" else (before and not now), value)


def _moving(s: Series, c: r.Moving) -> _Eval:
    a, b = s.value(c.left), s.value(c.left, c.bars)
    if a is None or b is None:
        return _Eval(False, a)
    change = _sub(a, b)
    if c.op.endswith("_pct"):
        if not b:
            return _Eval(False, a)
        change = change / b * (100.0 if isinstance(change, float) else _HUNDRED)
        threshold = _scale(c.percent, change)
    else:
        threshold = _scale(c.amount, change)
    return _Eval(change >= threshold if c.op.startswith("moving_up") else -change >= threshold, a)


def _spike(s: Series, c: r.VolumeSpike) -> _Eval:
    volume = s.value("volume")
    mean = s.value(r.VolumeSMA(period=c.period), 1)
    if volume is None or mean is None:
        return _Eval(False, volume)
    return _Eval(volume > float(c.factor) * mean, volume)


def _wheres(cond: Any) -> list[tuple[str | None, str | None]]:
    if isinstance(cond, r.All):
        return [w for c in cond.all for w in _wheres(c)]
    if isinstance(cond, r.AnyOf):
        return [w for c in cond.any for w in _wheres(c)]
    return [(cond.timeframe, cond.symbol)]


def _operands(cond: Any) -> list[Any]:
    if isinstance(cond, r.All):
        return [o for c in cond.all for o in _operands(c)]
    if isinstance(cond, r.AnyOf):
        return [o for c in cond.any for o in _operands(c)]
    return [getattr(cond, name) for name in ("left", "right", "lower", "upper") if hasattr(cond, name)]


def _uses_tickers(cond: Any) -> bool:
    return any(isinstance(o, str) and o in r.TICKER_FIELDS for o in _operands(cond))


def describe(cond: Any) -> str:
    """Human-readable condition, for messages and the API."""
    if isinstance(cond, r.All):
        return "(" + " and ".join(describe(c) for c in cond.all) + ")"
    if isinstance(cond, r.AnyOf):
        return "(" + " or ".join(describe(c) for c in cond.any) + ")"
    where = "".join(f" [{p}]" for p in (cond.symbol, cond.timeframe) if p)
    if isinstance(cond, r.Compare):
        text = f"{r.operand_label(cond.left)} {cond.op} {r.operand_label(cond.right)}"
    elif isinstance(cond, r.Channel):
        text = f"{r.operand_label(cond.left)} {cond.op} [{r.operand_label(cond.lower)}, {r.operand_label(cond.upper)}]"
    elif isinstance(cond, r.Moving):
        by = f"{cond.percent}%" if cond.op.endswith("_pct") else str(cond.amount)
        text = f"{r.operand_label(cond.left)} {cond.op.removesuffix('_pct')} {by} within {cond.bars} bars"
    else:
        text = f"volume > {cond.factor} x volume_sma({cond.period})"
    return text + where


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
