"""``sentinel backtest``: recorded trades of one or many symbols and exchanges through the real services, then
``candles_*.csv``, ``alerts.jsonl`` (time order) and ``report.html`` with honest notes.

Where things happen: ``inputs.py`` (which files, which symbols, time order across files), ``run.py`` (the services
on an embedded Redis until drained, progress), ``output.py`` (partial bars, files, the report).
"""

# Nothing is imported here: the feed process (feed.py) starts by importing this package, and must not pay for the
# alert engine's imports (talib, pandas) it does not use. Import from the modules: run.backtest, inputs.resolve.
