"""What happened after each alert: the figures of the report, exact (Decimal), from candles and alerts alone.

Definitions (the tests compute the same independently with pandas from the raw trades):

- An alert's bar is the candle of its series (exchange, symbol, the alert's timeframe) starting at ``alert.ts``
  (a tick-level alert: the last candle starting at or before it). Its entry price is that bar's close.
- Forward return after N bars: the close N bars later — the last candle starting at or before ``bar + N ×
  timeframe`` (a bucket without trades has no candle: the price did not move) — over the entry, minus 1. None when
  the data ends before that bar.
- Maximum favourable / adverse move: over the bars after the alert's bar up to and including the bar of the rule's
  next alert on the same series (or the end of the data): highest high and lowest low against the entry, for a long
  reading. A rule labelled ``direction: short`` reads them the other way (a fall is favourable).
- Time between alerts: between consecutive firing alerts of one rule on one (exchange, symbol).

Only ``firing`` alerts count (``resolved`` ones mark the end of a condition, not a signal).
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from shared.schemas import Alert, Candle
from shared.timeframes import timeframe_ms

SeriesKey = tuple[str, str, str]
_ONE = Decimal(1)


@dataclass
class AlertOutcome:
    """One alert and what followed it."""

    alert: Alert
    bar_ts: int | None  # start of the alert's bar; None when its series has no candles
    entry: Decimal | None
    forward: Decimal | None  # return after N bars (0.01 = +1%)
    favourable: Decimal | None
    adverse: Decimal | None


@dataclass
class Summary:
    """count, mean, median and share of positive values of a list (None where the list is empty)."""

    n: int
    mean: Decimal | None
    median: Decimal | None
    positive: Decimal | None  # share of values > 0

    @classmethod
    def of(cls, values: list[Decimal]) -> Summary:
        if not values:
            return cls(0, None, None, None)
        return cls(len(values), sum(values, Decimal(0)) / len(values), statistics.median(values),
                   Decimal(sum(1 for v in values if v > 0)) / len(values))


@dataclass
class RuleReport:
    rule: str
    timeframe: str | None
    outcomes: list[AlertOutcome] = field(default_factory=list)
    by_symbol: dict[str, int] = field(default_factory=dict)
    gaps_ms: list[int] = field(default_factory=list)
    forward: Summary = field(default_factory=lambda: Summary(0, None, None, None))
    favourable: Summary = field(default_factory=lambda: Summary(0, None, None, None))
    adverse: Summary = field(default_factory=lambda: Summary(0, None, None, None))

    @property
    def count(self) -> int:
        return len(self.outcomes)


def rule_reports(alerts: list[Alert], candles: dict[SeriesKey, list[Candle]], forward_bars: int,
                 short_rules: frozenset[str] = frozenset(), rule_names: list[str] | None = None) -> list[RuleReport]:
    """One RuleReport per rule (those of ``rule_names`` first, in that order, even with no alert)."""
    firing = sorted((a for a in alerts if a.state == "firing"), key=lambda a: (a.ts, a.fired_at, a.rule, a.symbol))
    by_rule: dict[str, list[Alert]] = defaultdict(list)
    for a in firing:
        by_rule[a.rule].append(a)
    names = list(rule_names or []) + sorted(set(by_rule) - set(rule_names or []))
    out = []
    for name in names:
        items = by_rule.get(name, [])
        report = RuleReport(name, items[0].timeframe if items else None)
        report.outcomes = outcomes(items, candles, forward_bars, short=name in short_rules)
        counts: dict[str, int] = defaultdict(int)
        last_at: dict[tuple[str, str], int] = {}
        for a in items:
            counts[f"{a.exchange} {a.symbol}"] += 1
            pair = (a.exchange, a.symbol)
            if pair in last_at:
                report.gaps_ms.append(a.ts - last_at[pair])
            last_at[pair] = a.ts
        report.by_symbol = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        report.forward = Summary.of([o.forward for o in report.outcomes if o.forward is not None])
        report.favourable = Summary.of([o.favourable for o in report.outcomes if o.favourable is not None])
        report.adverse = Summary.of([o.adverse for o in report.outcomes if o.adverse is not None])
        out.append(report)
    return out


def outcomes(alerts: list[Alert], candles: dict[SeriesKey, list[Candle]], forward_bars: int,
             short: bool = False) -> list[AlertOutcome]:
    """The outcome of each alert of one rule (``alerts`` in time order)."""
    by_series: dict[SeriesKey, list[Alert]] = defaultdict(list)
    for a in alerts:
        by_series[(a.exchange, a.symbol, a.timeframe or "")].append(a)
    result: dict[str, AlertOutcome] = {}
    for key, items in by_series.items():
        series = candles.get(key, [])
        starts = [c.ts for c in series]
        tf_ms = timeframe_ms(key[2]) if key[2] else 0
        for i, a in enumerate(items):
            at = bisect.bisect_right(starts, a.ts) - 1
            if at < 0:
                result[a.id] = AlertOutcome(a, None, None, None, None, None)
                continue
            entry = series[at].close
            fwd = None
            target = series[at].ts + forward_bars * tf_ms
            if tf_ms and target <= starts[-1]:
                fwd = series[bisect.bisect_right(starts, target) - 1].close / entry - _ONE
            end = bisect.bisect_right(starts, items[i + 1].ts) if i + 1 < len(items) else len(series)
            after = series[at + 1:end]
            fav = adv = None
            if after:
                up = max(c.high for c in after) / entry - _ONE
                down = min(c.low for c in after) / entry - _ONE
                fav, adv = (-down, -up) if short else (up, down)
            result[a.id] = AlertOutcome(a, series[at].ts, entry, fwd, fav, adv)
    return [result[a.id] for a in alerts]
