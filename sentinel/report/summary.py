"""The report's figures on the terminal (rich): the page's rules table, and why each silent rule fired nothing."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sentinel.report.fmt import duration, pct
from sentinel.report.stats import RuleReport


def print_summary(console: Console, reports: list[RuleReport], why: dict[str, str], forward_bars: int) -> None:
    fired = [rep for rep in reports if rep.outcomes]
    table = Table(title=f"alerts and what followed (return after {forward_bars} bar(s) of the rule's timeframe)",
                  show_edge=False)
    for col in ("rule", "tf", "alerts", "symbols", "gap median", "n", "mean", "median", "positive", "max fav.",
                "max adv."):
        table.add_column(col, justify="left" if col == "rule" else "right", no_wrap=col == "rule")
    for rep in fired:
        gaps = sorted(rep.gaps_ms)
        table.add_row(rep.rule, rep.timeframe or "", str(rep.count), str(len(rep.by_symbol)),
                      duration(gaps[len(gaps) // 2]) if gaps else "–", str(rep.forward.n), pct(rep.forward.mean),
                      pct(rep.forward.median), pct(rep.forward.positive, signed=False), pct(rep.favourable.mean),
                      pct(rep.adverse.mean))
    if fired:
        console.print(table)
    for rep in reports:
        if not rep.outcomes:
            console.print(f"[bold]{rep.rule}[/] fired nothing: [yellow]{why.get(rep.rule, '')}[/]", highlight=False)
