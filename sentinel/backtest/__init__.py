"""``sentinel backtest``: recorded trades of one or many symbols and exchanges through the real services, then
``candles_*.csv``, ``alerts.jsonl`` (time order) and ``report.html`` with honest notes.

Where things happen: ``inputs.py`` (which files, which symbols, time order across files), ``run.py`` (the services
on an embedded Redis until drained, progress), ``output.py`` (partial bars, files, the report).
"""

from __future__ import annotations

from sentinel.backtest.inputs import Input, InputError, resolve
from sentinel.backtest.run import BacktestOptions, backtest

__all__ = ["BacktestOptions", "Input", "InputError", "backtest", "resolve"]
