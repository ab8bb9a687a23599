"""Closed bars waiting for the other series (or tickers) their rule reads.

A closed bar of a rule that reads another series is evaluated once that series has delivered its bar closing at or
before this bar's close, and, for a rule reading tickers, once a ticker past the close was read: until then the
evaluation waits, so the alerts do not depend on how the streams were read or batched. Rules reading only their own
candles never wait. A wait ends early when ``release(force=True)`` is called (the end of a drain, or the app's live
time limit, ``cross_series_wait_ms``) or when the rule's queue holds more than ``Binding.wait_limit`` bars; the bar is
then evaluated with what the other series has (its last bar closed by then).

In a drain or backtest the ticker stream lags the candle stream by whole reads (COUNT 500 tickers may span 50 s, 500
1s candles 500 s); the stored tickers of a released bar are refreshed from the ticker log, so the alerts do not
depend on that either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from services.alert_engine.core.market import Market
from services.alert_engine.core.routes import Binding
from services.alert_engine.core.window import CandleWindow, SeriesKey, WindowAsOf
from shared.schemas import Candle


@dataclass(slots=True)
class Waiting:
    """One closed bar waiting for one rule."""

    candle: Candle
    close: int  # exchange time of the evaluation (the bar's close)
    since: int | None  # engine clock (wall ms) when it started waiting; None without a clock


#: what a released bar is handed to: (binding, the window as of the close, the bar's candle, the close)
Evaluate = Callable[[Binding, CandleWindow | WindowAsOf, Candle, int], None]


class Waits:
    """The waiting bars, per (rule, series), oldest first."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.queues: dict[tuple[str, SeriesKey], tuple[Binding, deque[Waiting]]] = {}

    def __len__(self) -> int:
        return sum(len(q) for _, q in self.queues.values())

    def keep_rules(self, bindings: Callable[[str, SeriesKey], Binding | None]) -> None:
        """After a rule-set change: queues of removed rules are dropped, the others follow their new binding."""
        kept: dict[tuple[str, SeriesKey], tuple[Binding, deque[Waiting]]] = {}
        for qkey, (_, queue) in self.queues.items():
            binding = bindings(*qkey)
            if binding is not None:
                kept[qkey] = (binding, queue)
        self.queues = kept

    def must_wait(self, b: Binding, close: int) -> bool:
        """A bar of ``b`` closing at ``close`` has to wait: earlier bars of it wait, or the market has not reached it.
        (When it need not and it reads tickers, its ticker is final: a ticker past the close was read first.)"""
        if not b.reads_others:
            return False
        if (b.rule.name, b.key) in self.queues or not self.market.ready(b.refs, b.pairs, close):
            return True
        if b.pairs:
            w = self.market.windows[b.key]
            w.tickers_final = max(w.tickers_final, close)
        return False

    def add(self, b: Binding, candle: Candle, close: int, since: int | None) -> None:
        qkey = (b.rule.name, b.key)
        got = self.queues.get(qkey)
        if got is None:
            got = self.queues[qkey] = (b, deque())
        got[1].append(Waiting(candle, close, since))

    def release(self, evaluate: Evaluate, force: bool = False, before: int | None = None) -> None:
        """Hand every bar that may be evaluated now to ``evaluate``, in order per queue: those the market has reached,
        those beyond a queue's limit, and with ``force`` all (``before`` None) or those waiting since ``before``
        (engine clock) or earlier."""
        market = self.market
        for qkey, (b, queue) in list(self.queues.items()):
            w = market.windows.get(b.key)
            if w is None:
                del self.queues[qkey]
                continue
            while queue:
                d = queue[0]
                due = (force and (before is None or (d.since is not None and d.since <= before))
                       or len(queue) > b.wait_limit)
                if not due and not market.ready(b.refs, b.pairs, d.close):
                    break
                queue.popleft()
                if b.pairs:
                    market.refresh_tickers((b.key, *b.refs), d.close)
                view = w.as_of(d.close)  # the window as it was at that close (later bars hidden)
                shift = view.shift if isinstance(view, WindowAsOf) else 0
                candle = w.candles[-1 - shift] if shift < len(w.candles) else d.candle
                evaluate(b, view, candle, d.close)
            if not queue:
                del self.queues[qkey]
