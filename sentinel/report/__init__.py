"""``sentinel report``: a backtest's output turned into ``report.html`` and a terminal summary.

``write_report(out_dir, rules_file)`` reads ``candles_<tf>.csv``, ``alerts.jsonl`` and the rules, computes what
followed each alert (``stats.py``), why a silent rule fired nothing (``honest.py``), the rules' indicators over each
chart (``overlays.py``, the engine's own talipp indicators), and writes one self-contained page (``page.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from sentinel.report.honest import explain_silence
from sentinel.report.inputs import BacktestOutput, ReportError, load_output
from sentinel.report.page import render
from sentinel.report.stats import RuleReport, rule_reports
from sentinel.report.summary import print_summary

__all__ = ["Report", "ReportError", "write_report"]


@dataclass
class Report:
    path: Path
    output: BacktestOutput
    rules: list[RuleReport]
    why: dict[str, str]  # rule name -> why it fired nothing


def write_report(out_dir: str | Path, rules_file: str | Path, forward_bars: int = 10, *,
                 console: Console | None = None, exchange: str | None = None, symbol: str | None = None,
                 output: BacktestOutput | None = None) -> Report:
    """Write ``out_dir/report.html`` from a backtest's outputs and print the summary to ``console`` (if given).

    ``forward_bars``: the return after that many bars of each rule's timeframe. ``exchange``/``symbol`` label a
    single-symbol ``candles_<tf>.csv`` when its alerts do not name the pair. ``output``: what the files in ``out_dir``
    hold, already in memory (the backtest that just wrote them): not read back."""
    if forward_bars < 1:
        raise ReportError(f"forward bars must be at least 1, got {forward_bars}")
    out = output if output is not None else load_output(Path(out_dir), Path(rules_file), exchange, symbol)
    short = frozenset(rule.name for rule in out.rules.rules if rule.labels.get("direction") == "short")
    reports = rule_reports(out.alerts, out.candles, forward_bars, short, [rule.name for rule in out.rules.rules])
    why = explain_silence(out.rules, out.candles, out.alerts)
    path = out.folder / "report.html"
    path.write_text(render(out, reports, why, forward_bars), encoding="utf-8")
    if console is not None:
        print_summary(console, reports, why, forward_bars)
        console.print(f"wrote {path}")
    return Report(path, out, reports, why)
