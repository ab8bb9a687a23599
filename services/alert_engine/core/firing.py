"""Rule status and firing: when a rule's condition holding makes an alert (frequency, ``for:``, expiry, snooze,
resolve). The cooldown is applied by the app's commit, atomically in Redis (``Fire.cooldown_ms``).

A rule is "firing" from the first closed bar its condition holds for ``for`` (exchange time since the first true bar's
close; 0 = at once); it fires on each such bar (``every_time``, ``once_per_bar``, ``once_per_bar_close`` — on closed
candles they coincide) or only the first time ever (``once``), subject to the cooldown; when the condition stops
holding it resolves (an alert with state ``resolved`` if ``notify_on_resolve``).

Intrabar (in-progress candles): only ``every_time`` and ``once_per_bar`` rules, as TradingView evaluates them on every
tick; ``once_per_bar_close`` and ``once`` never see in-progress data, so they never repaint. Intrabar and tick-level
evaluations change no state: the closed bars decide firing/resolved and ``for:``; a ``for:`` rule fires intrabar
only while its run is already firing on closed bars.

``snooze_until`` is wall-clock time (the engine's injected clock: wall time live, exchange time in a backtest);
``expires_at`` is exchange time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.rules import Rule

if TYPE_CHECKING:
    from services.alert_engine.core.routes import Binding

#: Cooldown value meaning "never again" (frequency ``once``).
FOREVER = -1
Verdict = Literal["firing", "resolved"] | None


@dataclass(slots=True)
class RuleStatus:
    """One rule on one series (a fingerprint): what the API shows, and what ``for:`` and resolve need."""

    rule: str
    exchange: str
    symbol: str
    timeframe: str
    state: str = "inactive"  # inactive | pending | firing
    since_ms: int | None = None  # close time of the first bar of the current true run
    last_eval_ms: int | None = None
    last_fired_ms: int | None = None  # set when the app published a firing alert
    last_value: Any = None
    fired_in_run: bool = False  # the current firing run produced a firing alert (published or not)
    tick_bar: int | None = None  # the bar a once_per_bar rule already fired in at tick level

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "exchange": self.exchange, "symbol": self.symbol, "timeframe": self.timeframe,
                "state": self.state, "since": self.since_ms, "last_eval": self.last_eval_ms,
                "last_fired": self.last_fired_ms,
                "last_value": None if self.last_value is None else str(self.last_value)}


class RuleStatuses(dict[str, RuleStatus]):
    """An engine's rule statuses by fingerprint: made when a binding first needs one (``of``), kept while its rule
    runs, marked by the app when it published a firing alert (``mark_fired``), and read for the API (``rows``)."""

    def of(self, b: Binding) -> RuleStatus:
        """The status of binding ``b`` (kept on it once found or made)."""
        st = b.status
        if st is None:
            st = self.get(b.fingerprint)
            if st is None:
                st = self[b.fingerprint] = RuleStatus(b.rule.name, *b.key)
            b.status = st
        return st

    def mark_fired(self, fp: str, now: int) -> None:
        """Record that the app actually published a firing alert for ``fp`` (the API's "last fired")."""
        st = self.get(fp)
        if st is not None:
            st.last_fired_ms = now

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every status as the API's row."""
        return {fp: st.as_dict() for fp, st in self.items()}


def allowed(rule: Rule, now: int, clock: Callable[[], int] | None) -> bool:
    """Not expired (exchange time ``now``) and not snoozed (``clock``: wall time; None: exchange time)."""
    expires, snooze = rule.expires_ms(), rule.snooze_ms()
    if expires is not None and now > expires:
        return False
    if snooze is None:
        return True
    return (now if clock is None else clock()) >= snooze


def on_closed_bar(rule: Rule, st: RuleStatus, holds: bool, value: Any, now: int, clock: Callable[[], int] | None,
                  fires_at_ticks: bool) -> Verdict:
    """A closed bar's evaluation (close at exchange time ``now``): updates ``st``; the alert to send, if any.
    ``fires_at_ticks``: an ``every_time`` rule that fires on each trade/ticker (the close only keeps its state)."""
    st.last_eval_ms = now
    st.last_value = value
    if not holds:
        resolved = st.state == "firing" and st.fired_in_run and rule.notify_on_resolve
        st.state, st.since_ms, st.fired_in_run = "inactive", None, False
        return "resolved" if resolved else None
    if st.since_ms is None:
        st.since_ms = now
    if now - st.since_ms < rule.for_ms:
        st.state = "pending"
        return None
    st.state = "firing"
    if not allowed(rule, now, clock):
        return None
    st.fired_in_run = True
    return None if fires_at_ticks else "firing"


def may_fire_at_tick(rule: Rule, st: RuleStatus, bar: int, ts: int, clock: Callable[[], int] | None) -> bool:
    """A trade or ticker at exchange time ``ts`` in bar ``bar`` may alert: not already this bar (``once_per_bar``),
    a ``for:`` run already firing, allowed."""
    if rule.frequency == "once_per_bar" and st.tick_bar == bar:
        return False
    if rule.for_ms and st.state != "firing":
        return False
    return allowed(rule, ts, clock)


def cooldown_of(rule: Rule, verdict: Verdict) -> int:
    """The cooldown an alert starts: none for a resolve; ``FOREVER`` for ``once``."""
    if verdict == "resolved":
        return 0
    return FOREVER if rule.frequency == "once" else rule.cooldown_ms
