"""What a backtest writes: ``candles_*.csv`` (a ``partial`` column marks bars the data does not cover from start to
end), ``alerts.jsonl`` in time order without bar-close alerts on partial bars, ``report.html``, and the terminal
summary with the honest notes (why a rule fired nothing; which alerts were left out and why)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from sentinel import export
from sentinel.backtest.inputs import Input
from sentinel.report import Report, write_report
from sentinel.report.inputs import BacktestOutput
from sentinel.report.honest import coverage, drop_partial_bar_alerts, order_alerts, partial_bars
from shared.fmt import plain
from shared.rules import load_rules_file
from shared.schemas import Alert, Candle
from shared.timeframes import sort_timeframes

if TYPE_CHECKING:
    from sentinel.backtest.run import BacktestOptions

SeriesKey = tuple[str, str, str]


@dataclass
class Made:
    """What the services made, and what was read to make it."""

    items: list[Input]
    candles: dict[SeriesKey, list[Candle]]
    alerts: list[Alert]
    trades: int
    seconds: float
    spans: dict[tuple[Path, str, str], list[int]]  # (file, exchange, symbol) -> [first, last] trade time
    interrupted: bool = False
    kept: list[Alert] = field(default_factory=list)
    dropped: list[Alert] = field(default_factory=list)
    report: Report | None = None


def covered(spans: dict[tuple[Path, str, str], list[int]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(exchange, symbol) → the time [start, end) its files cover (a Binance day or month archive covers its whole
    day or month; other files their first to their last trade)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for (path, ex, sym), (first, last) in spans.items():
        start, end = coverage(path, first, last)
        if (ex, sym) in out:
            start, end = min(start, out[(ex, sym)][0]), max(end, out[(ex, sym)][1])
        out[(ex, sym)] = (start, end)
    return out


def write_outputs(opts: BacktestOptions, made: Made, console: Console) -> None:
    out_dir = opts.out_dir
    spans = covered(made.spans)
    # Bars after a pair's last trade are not data: flat bars its exchange's clock made while another file of that
    # exchange (a later day, another symbol) was still being read. Neither they nor their alerts are output.
    last: dict[tuple[str, str], int] = {}
    for (_, ex, sym), (_, ts) in made.spans.items():
        last[(ex, sym)] = max(ts, last.get((ex, sym), ts))
    beyond = {key: {c.ts for c in series if key[:2] in last and c.ts > last[key[:2]]}
              for key, series in made.candles.items()}
    made.candles = {key: [c for c in series if c.ts not in beyond[key]] for key, series in made.candles.items()}
    partial = {key: partial_bars((c.ts for c in series), key[2], spans[key[:2]])
               for key, series in made.candles.items() if key[:2] in spans}
    within, _ = drop_partial_bar_alerts(made.alerts, beyond)
    made.kept, made.dropped = drop_partial_bar_alerts(order_alerts(within), partial)
    if opts.keep_partial_alerts:  # (a reference for a live run, which fires at every close it sees)
        made.kept, made.dropped = order_alerts(within), []
    pairs = {key[:2] for key in made.candles}
    names = {key: f"candles_{key[2]}.csv" if len(pairs) == 1 else f"candles_{key[0]}_{key[1].replace('/', '-')}_{key[2]}.csv"
             for key in made.candles}
    keep = set(names.values())
    for stale in out_dir.glob("candles_*.csv"):  # a previous backtest's series must not join this one's report
        if stale.name not in keep:  # (the others are overwritten: a market's thousands of unlinks took seconds)
            stale.unlink()
    written = []
    for key, candles in made.candles.items():
        export.write_candles_csv(out_dir / names[key], candles, partial.get(key, set()))
        written.append(names[key])
    export.write_alerts_jsonl(out_dir / "alerts.jsonl", made.kept)
    _summary(made, console)
    if made.candles:
        one = next(iter(pairs)) if len(pairs) == 1 else (None, None)
        # what load_output would read back from the files just written (a market's thousands of CSVs parsed again
        # took ~5% of the process): the same series in the same order, the same alerts
        order = {tf: i for i, tf in enumerate(sort_timeframes({key[2] for key in made.candles}))}
        shown = dict(sorted(made.candles.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]])))
        output = BacktestOutput(out_dir, shown, list(made.kept), load_rules_file(opts.rules_file))
        made.report = write_report(out_dir, opts.rules_file, opts.forward_bars, console=console, exchange=one[0],
                                   symbol=one[1], output=output)
    else:
        console.print("[yellow]no candles were made: nothing to report[/]")
    _notes(made, console)
    console.print(f"wrote {len(written)} candles file(s) and alerts.jsonl ({len(made.kept)} alerts) to {out_dir}",
                  highlight=False)


def _summary(made: Made, console: Console) -> None:
    table = Table(title="candles made", show_edge=False)
    for col in ("exchange", "symbol", "tf", "candles", "first (UTC)", "last close"):
        table.add_column(col)
    rows = [(key, series) for key, series in made.candles.items() if series]
    for (ex, sym, tf), candles in rows[:40]:
        first = time.strftime("%m-%d %H:%M", time.gmtime(candles[0].ts / 1000))
        table.add_row(ex, sym, tf, str(len(candles)), first, plain(candles[-1].close))
    if len(rows) > 40:
        table.caption = f"… and {len(rows) - 40} more series"
    console.print(table)
    rate = made.trades / made.seconds if made.seconds else 0
    console.print(f"{made.trades:,} trades of {len(made.items)} file(s), "
                  f"{len({k[:2] for k in made.candles})} symbol(s) in {made.seconds:.1f}s "
                  f"({rate:,.0f} trades/s end to end); {len(made.kept)} alerts", highlight=False)


def _notes(made: Made, console: Console) -> None:
    """Honest notes beside the report's (why a rule fired nothing): alerts left out because their bar is partial."""
    if made.dropped:
        by = Counter((a.rule, a.timeframe) for a in made.dropped)
        what = ", ".join(f"{rule} {tf} ×{n}" for (rule, tf), n in sorted(by.items(), key=str))
        console.print(f"[yellow]note:[/] {len(made.dropped)} alert(s) left out: their bar is partial (the data starts "
                      f"after its start or ends before its end, so its close is an artefact of where the file was "
                      f"cut): {what}", highlight=False)
    if made.interrupted:
        console.print("[yellow]note:[/] interrupted: the figures cover only the trades read so far", highlight=False)
