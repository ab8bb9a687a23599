"""Which rules run where: per series the rules evaluated on its closed bars, its in-progress candles, its pair's
trades and tickers, its pair's book and futures updates (the rules reading book / futures operands, and only
there), and what each of them reads (other series, tickers, look-back). Worked out once per rule set and
series, so an evaluation only looks things up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from services.alert_engine.core import reads
from services.alert_engine.core.alerts import AlertMaker, fingerprint
from services.alert_engine.core.conditions import Evaluator, compile_condition
from services.alert_engine.core.firing import RuleStatus
from services.alert_engine.core.window import CandleWindow, SeriesKey
from shared.rules import Rule, describe
from shared.timeframes import timeframe_ms

Pair = tuple[str, str]  # exchange, symbol
TickKind = Literal["trade", "ticker"]
_INTRABAR = ("every_time", "once_per_bar")


@dataclass(slots=True, eq=False)
class Binding:
    """One rule on one series: everything evaluating it there needs."""

    rule: Rule
    key: SeriesKey
    fingerprint: str
    evaluate: Evaluator
    refs: tuple[SeriesKey, ...]  # the other series it reads
    pairs: tuple[Pair, ...]  # the pairs whose tickers it reads (its own and the others')
    wait_limit: int  # bars of its own series that may wait for the others (beyond: the oldest is evaluated)
    fires_at_ticks: bool  # an every_time rule evaluated on each trade/ticker: a closed bar only keeps its state
    maker: AlertMaker
    status: RuleStatus | None = None  # (the engine's, once it has one)
    reads_others: bool = False  # refs or pairs: its bars may wait for them

    def __post_init__(self) -> None:
        self.reads_others = bool(self.refs or self.pairs)


class Routes:
    """The routing of one rule set (``rules``: the enabled ones); ``keep``: candles kept per series; ``owns``: the
    pairs whose rules run here (None: every pair). An engine of one partition (the app runs one per partition it
    holds) reads other partitions' series for its multi-symbol rules, but never runs the rules of their pairs."""

    def __init__(self, rules: list[Rule], keep: int, windows: Mapping[SeriesKey, CandleWindow],
                 owns: Callable[[str, str], bool] | None = None) -> None:
        self.rules = rules
        self.owns = owns
        self.by_name = {rule.name: rule for rule in rules}
        self.keep = keep
        self._compiled = {rule.name: compile_condition(rule.condition, windows) for rule in rules}
        self._closed: dict[SeriesKey, list[Binding]] = {}
        self._live: dict[SeriesKey, list[Binding]] = {}
        self._ticks: dict[tuple[str, str, TickKind], list[Binding]] = {}
        self._feeds: dict[tuple[str, str, str], list[Binding]] = {}
        self._feed_kinds = {rule.name: reads.feed_kinds(rule.condition) for rule in rules}
        # what each rule reads, worked out once (``needs*`` run per known pair on every series sync)
        self._no_candles = {rule.name for rule in rules
                            if self._feed_kinds[rule.name] and not reads.reads_candles(rule.condition)}
        self._tickers = {rule.name for rule in rules if reads.uses_tickers(rule.condition)}
        #: the longest window of the book / futures operands (what each pair's ``PairFeeds`` keeps)
        self.feed_horizon_ms = max([reads.feed_horizon_ms(rule.condition) for rule in rules] or [0])
        self._bindings: dict[tuple[str, SeriesKey], Binding] = {}
        # per rule, what every binding of it works out the same (a market binds each rule to thousands of series)
        self._wheres: dict[str, list[tuple[str | None, str | None]]] = {}
        self._own_bars: dict[tuple[str, str, str | None], int] = {}
        self._on_ticks = {rule.name: _on_ticks(rule) for rule in rules}
        self._described = {rule.name: describe(rule.condition) for rule in rules}
        # per pair / series, what ``needs*`` and ``lookbacks`` answered: the series sync asks them for every known
        # pair every ``registry_poll_s`` (200 pairs x 5 rules blocked the event loop 2-6 ms each time). A rule
        # change builds new Routes, so these never outlive the rules they were worked out from.
        self._needs: dict[Pair, frozenset[str]] = {}
        self._needs_feeds: dict[Pair, frozenset[str]] = {}
        self._needs_tickers: dict[Pair, bool] = {}
        self._lookbacks: dict[SeriesKey, dict[str, int]] = {}

    def binding(self, rule: Rule, key: SeriesKey) -> Binding:
        got = self._bindings.get((rule.name, key))
        if got is None:
            ex, sym, tf = key
            wheres = self._wheres.get(rule.name)
            if wheres is None:
                wheres = self._wheres[rule.name] = reads.wheres(rule.condition)
            refs = {(ex, s or sym, t or tf) for t, s in wheres if t or s} - {key}
            # the look-back on its own series: the same on every symbol unless a leaf names one
            own_key = (rule.name, tf, sym if any(s for _, s in wheres) else None)
            own = self._own_bars.get(own_key)
            if own is None:
                own = self._own_bars[own_key] = max(
                    [reads.condition_bars(c, timeframe_ms(tf)) for c in reads.leaves(rule.condition)
                     if c.timeframe in (None, tf) and c.symbol in (None, sym)] or [1])
            pairs = sorted({k[:2] for k in (key, *refs)}) if rule.name in self._tickers else []
            fp = fingerprint(rule.name, *key)
            got = self._bindings[(rule.name, key)] = Binding(
                rule, key, fp, self._compiled[rule.name], tuple(sorted(refs)), tuple(pairs), max(1, self.keep - own),
                rule.frequency == "every_time" and self._on_ticks[rule.name],
                AlertMaker(rule, key, fp, self._described[rule.name]))
        return got

    def closed(self, key: SeriesKey) -> list[Binding]:
        """The rules evaluated on the closed bars of series ``key``."""
        got = self._closed.get(key)
        if got is None:
            got = self._closed[key] = [] if not self._runs_here(key[0], key[1]) else [
                self.binding(rule, key) for rule in self.rules
                if rule.timeframe == key[2] and rule.matches(key[0], key[1]) and not self._feed_kinds[rule.name]]
        return got

    def live(self, key: SeriesKey) -> list[Binding]:
        """The rules evaluated on in-progress candles of ``key``: intrabar frequencies, except those evaluated on
        each trade/ticker."""
        got = self._live.get(key)
        if got is None:
            got = self._live[key] = [b for b in self.closed(key)
                                     if b.rule.frequency in _INTRABAR and not _on_ticks(b.rule)]
        return got

    def tick_rules(self, exchange: str, symbol: str, kind: TickKind) -> list[Binding]:
        """The rules evaluated on each trade (``kind`` trade: they read ``price``) or ticker of the pair."""
        tkey = (exchange, symbol, kind)
        got = self._ticks.get(tkey)
        if got is None:
            wants = reads.reads_price if kind == "trade" else reads.uses_tickers
            got = self._ticks[tkey] = [] if not self._runs_here(exchange, symbol) else [self.binding(rule, (exchange, symbol, rule.timeframe)) for rule in self.rules
                                       if _on_ticks(rule) and rule.matches(exchange, symbol) and wants(rule.condition)
                                       and not self._feed_kinds[rule.name]]
        return got

    def feed(self, exchange: str, symbol: str, kind: str) -> list[Binding]:
        """The rules evaluated on each book / futures update of ``kind`` of the pair (those reading its operands)."""
        fkey = (exchange, symbol, kind)
        got = self._feeds.get(fkey)
        if got is None:
            got = self._feeds[fkey] = [] if not self._runs_here(exchange, symbol) else [
                self.binding(rule, (exchange, symbol, rule.timeframe)) for rule in self.rules
                if kind in self._feed_kinds[rule.name] and rule.matches(exchange, symbol)]
        return got

    def _runs_here(self, exchange: str, symbol: str) -> bool:
        return self.owns is None or self.owns(exchange, symbol)

    def needs_feeds(self, exchange: str, symbol: str) -> set[str]:
        """The book / futures updates of (exchange, symbol) some rule reads."""
        got = self._needs_feeds.get((exchange, symbol))
        if got is None:
            got = self._needs_feeds[(exchange, symbol)] = frozenset(
                kind for rule in self.rules if rule.matches(exchange, symbol) for kind in self._feed_kinds[rule.name])
        return set(got)

    # ---- what the app subscribes to ---------------------------------------------------------------------------------

    def needs(self, exchange: str, symbol: str) -> set[str]:
        """Timeframes of (exchange, symbol) some rule reads (its own, and those its conditions name)."""
        got = self._needs.get((exchange, symbol))
        if got is None:
            got = self._needs[(exchange, symbol)] = frozenset(self._work_out_needs(exchange, symbol))
        return set(got)

    def _work_out_needs(self, exchange: str, symbol: str) -> set[str]:
        out: set[str] = set()
        for rule in self.rules:
            if rule.exchange is not None and rule.exchange != exchange:
                continue
            places = reads.wheres(rule.condition)
            if rule.name in self._no_candles:
                continue  # book / futures operands and numbers only: no candles
            if rule.matches(exchange, symbol):
                out.add(rule.timeframe)
                out.update(tf for tf, sym in places if sym is None and tf)
            out.update(tf or rule.timeframe for tf, sym in places if sym == symbol)
        return out

    def lookbacks(self, exchange: str, symbol: str, timeframe: str) -> dict[str, int]:
        """Closed candles each rule reading (exchange, symbol, timeframe) needs before its first evaluation (the
        longest warm-up of its indicators and look-backs there): rule name -> candles."""
        got = self._lookbacks.get((exchange, symbol, timeframe))
        if got is None:
            got = self._lookbacks[(exchange, symbol, timeframe)] = self._work_out_lookbacks(exchange, symbol, timeframe)
        return dict(got)

    def _work_out_lookbacks(self, exchange: str, symbol: str, timeframe: str) -> dict[str, int]:
        tf_ms = timeframe_ms(timeframe)
        out: dict[str, int] = {}
        for rule in self.rules:
            own = rule.matches(exchange, symbol)
            for leaf in reads.leaves(rule.condition):
                sym_ok = leaf.symbol == symbol if leaf.symbol is not None else own
                if sym_ok and (leaf.timeframe or rule.timeframe) == timeframe:
                    out[rule.name] = max(out.get(rule.name, 0), reads.condition_bars(leaf, tf_ms))
        return out

    def needs_tickers(self, exchange: str, symbol: str) -> bool:
        """Some rule reads the tickers of (exchange, symbol)."""
        got = self._needs_tickers.get((exchange, symbol))
        if got is None:
            got = self._needs_tickers[(exchange, symbol)] = any(
                rule.name in self._tickers and rule.matches(exchange, symbol) for rule in self.rules)
        return got

    def needs_trades(self, exchange: str, symbol: str) -> bool:
        """Some rule is evaluated on each trade of (exchange, symbol)."""
        return bool(self.tick_rules(exchange, symbol, "trade"))

    def needs_live(self, key: SeriesKey) -> bool:
        """Some rule is evaluated on the in-progress candles of ``key``."""
        return bool(self.live(key))


def _on_ticks(rule: Rule) -> bool:
    """An intrabar rule whose condition is defined on a single trade or ticker: it runs on each one it reads
    (``price``: trades; ticker fields: tickers), not on in-progress candles."""
    cond = rule.condition
    return (rule.frequency in _INTRABAR and reads.tick_level(cond)
            and (reads.reads_price(cond) or reads.uses_tickers(cond)))
