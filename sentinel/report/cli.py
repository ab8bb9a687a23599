"""``sentinel report DIR --rules RULES.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from sentinel.report import write_report


def report_command(
    folder: Annotated[Path, typer.Argument(help="The --out folder of `sentinel backtest`.")],
    rules: Annotated[Path, typer.Option(help="The rules file the backtest ran.")],
    forward_bars: Annotated[int, typer.Option(help="Return after this many bars of each rule's timeframe.")] = 10,
    exchange: Annotated[Optional[str], typer.Option(help="Label of a single-symbol backtest's exchange.")] = None,
    symbol: Annotated[Optional[str], typer.Option(help="Label of a single-symbol backtest's symbol.")] = None,
) -> None:
    """Write DIR/report.html (charts with the rules' indicators and alerts, what followed each alert) and print
    the same figures."""
    write_report(folder, rules, forward_bars, console=Console(), exchange=exchange, symbol=symbol)
