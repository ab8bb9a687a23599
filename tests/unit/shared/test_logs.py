"""shared.logs.LineBudget: a stream of like log lines capped per window, the rest counted and told."""

from __future__ import annotations

import logging

from shared.logs import LineBudget


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_past_its_lines_a_window_counts_its_events_and_the_next_window_tells_how_many(caplog) -> None:
    clock = _Clock()
    log = logging.getLogger("test.budget")
    budget = LineBudget(log, "alerts", lines=3, window_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.budget"):
        allowed = [budget.allow() for _ in range(1000)]  # a whole market's bar boundary
        assert allowed.count(True) == 3 and allowed[:3] == [True] * 3
        assert caplog.messages == []
        clock.now += 9.9
        assert budget.allow() is False  # still the same window
        clock.now += 0.2  # the next window: its first event logs the count first
        assert budget.allow() is True
        assert caplog.messages == ["998 more alerts in 10 s not logged (at most 3 lines per 10 s)"]
        assert [budget.allow() for _ in range(3)] == [True, True, False]
        clock.now += 30  # a quiet window between: only the events of the last full one were left out
        assert budget.allow() is True
        assert caplog.messages[-1] == "1 more alerts in 30 s not logged (at most 3 lines per 10 s)"
        clock.now += 10
        budget.allow()
        assert len(caplog.messages) == 2  # nothing left out: nothing to tell
