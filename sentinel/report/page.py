"""``report.html``: one self-contained file — the data, lightweight-charts and the page's own script inlined;
nothing is fetched when it is opened.

``static/lightweight-charts.standalone.production.js`` is ``dist/`` of the npm package lightweight-charts 5.2.1 (the
version web/package.json pins for the dashboard), unchanged (sha256 e21cc5ca…598cf); Apache-2.0, licence text beside
it in ``static/LICENSE-lightweight-charts.txt``.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

from sentinel.report.fmt import duration as _duration
from sentinel.report.fmt import pct
from sentinel.report.fmt import utc as _time
from sentinel.report.honest import data_coverage, partial_bars
from sentinel.report.inputs import BacktestOutput
from sentinel.report.overlays import series_lines
from sentinel.report.stats import RuleReport, Summary
from shared.schemas import Alert

LIBRARY = "lightweight-charts.standalone.production.js"
MARKER_COLOURS = ["#1e88e5", "#d81b60", "#fb8c00", "#43a047", "#5e35b1", "#00acc1", "#6d4c41", "#f4511e"]


def static_text(name: str) -> str:
    return resources.files("sentinel.report").joinpath("static", name).read_text(encoding="utf-8")


def render(out: BacktestOutput, reports: list[RuleReport], why: dict[str, str], forward_bars: int) -> str:
    colours = {rep.rule: MARKER_COLOURS[i % len(MARKER_COLOURS)] for i, rep in enumerate(reports)}
    series, chart_html = _series(out, colours)
    title = f"sentinel backtest report — {out.folder.name}"
    spans = [t for span in data_coverage(out.candles).values() for t in span]
    body = [f"<h1>{_e(title)}</h1>",
            f"<p class=meta>rules {_e(out.rules.source)} · data {_time(min(spans))} → {_time(max(spans))} UTC · "
            f"{len(out.alerts)} alert(s) · forward return after {forward_bars} bar(s) of each rule's timeframe</p>",
            "<h2>Rules</h2>", _rules_table(reports, why, forward_bars, colours),
            *(_alert_details(rep, forward_bars) for rep in reports if rep.outcomes),
            "<h2>Charts</h2>", *chart_html]
    # "</" cannot end the JSON's script element early once escaped
    data = json.dumps({"series": series}, separators=(",", ":")).replace("</", "<\\/")
    parts = {"title": _e(title), "css": static_text("report.css"), "body": "\n".join(body), "data": data,
             "library": static_text(LIBRARY), "script": static_text("report.js")}
    return re.sub(r"\{(title|css|body|data|library|script)\}", lambda m: parts[m[1]], static_text("report.html"))


def _series(out: BacktestOutput, colours: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    by_series: dict[tuple[str, str, str], list[Alert]] = {}
    for a in out.alerts:
        if a.state == "firing":
            by_series.setdefault((a.exchange, a.symbol, a.timeframe or ""), []).append(a)
    series, blocks = [], []
    covered = data_coverage(out.candles)
    for i, (key, candles) in enumerate(out.candles.items()):
        ex, sym, tf = key
        lines, levels, notes = series_lines(out.rules.rules, ex, sym, tf, candles)
        partial = partial_bars([c.ts for c in candles], tf, covered[(ex, sym)])
        if partial:
            notes.append("partial bars (grey: the data does not cover them from start to end): "
                         + ", ".join(_time(ts) for ts in sorted(partial)))
        close_at = {c.ts: c.close for c in candles}
        markers = [{"t": a.ts // 1000, "price": float(close_at.get(a.ts, a.price or 0)), "rule": a.rule,
                    "text": a.rule, "colour": colours.get(a.rule, MARKER_COLOURS[0])}
                   for a in sorted(by_series.get(key, []), key=lambda a: a.ts)]
        sid = f"chart-{i}"
        series.append({"id": sid, "exchange": ex, "symbol": sym, "tf": tf,
                       "candles": [[c.ts // 1000, float(c.open), float(c.high), float(c.low), float(c.close),
                                    float(c.volume), c.ts in partial] for c in candles],
                       "lines": [{"label": ln.label, "pane": ln.pane, "points": [[t // 1000, v] for t, v in ln.points]}
                                 for ln in lines],
                       "levels": [[label, value] for label, value in levels], "markers": markers})
        note = "".join(f"<div class=notes>{_e(n)}</div>" for n in notes)
        blocks.append(f"<h3>{_e(ex)} {_e(sym)} {_e(tf)} — {len(candles)} bars, {len(markers)} alert(s)</h3>{note}"
                      f"<div class=chart id={sid}></div>")
    return series, blocks


def _rules_table(reports: list[RuleReport], why: dict[str, str], n: int, colours: dict[str, str]) -> str:
    head = ("<tr><th class=l rowspan=2>rule</th><th rowspan=2>tf</th><th rowspan=2>alerts</th>"
            "<th class=l rowspan=2>by symbol</th><th colspan=2>time between alerts</th>"
            f"<th colspan=4>return after {n} bar(s)</th><th colspan=2>max favourable</th><th colspan=2>max adverse</th>"
            "</tr><tr><th>median</th><th>min</th><th>n</th><th>mean</th><th>median</th><th>positive</th>"
            "<th>mean</th><th>median</th><th>mean</th><th>median</th></tr>")
    rows = []
    for rep in reports:
        swatch = f"<span class=swatch style='background:{colours[rep.rule]}'></span>"
        name = f"<td class=l>{swatch}{_e(rep.rule)}</td>"
        if not rep.outcomes:
            rows.append(f"<tr>{name}<td></td><td>0</td><td class='l why' colspan=11>{_e(why.get(rep.rule, ''))}</td>"
                        "</tr>")
            continue
        symbols = "<br>".join(f"{_e(s)}: {c}" for s, c in rep.by_symbol.items())
        gaps = sorted(rep.gaps_ms)
        median_gap = _duration(gaps[len(gaps) // 2]) if gaps else "–"
        rows.append(f"<tr>{name}<td>{_e(rep.timeframe or '')}</td><td>{rep.count}</td><td class=l>{symbols}</td>"
                    f"<td>{median_gap}</td><td>{_duration(gaps[0]) if gaps else '–'}</td>"
                    f"{_summary_cells(rep.forward, share=True)}{_summary_cells(rep.favourable)}"
                    f"{_summary_cells(rep.adverse)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _summary_cells(s: Summary, share: bool = False) -> str:
    cells = [f"<td>{s.n}</td>"] if share else []
    cells += [f"<td>{pct(s.mean)}</td>", f"<td>{pct(s.median)}</td>"]
    if share:
        cells.append(f"<td>{pct(s.positive, signed=False)}</td>")
    return "".join(cells)


def _alert_details(rep: RuleReport, n: int, limit: int = 1000) -> str:
    rows = "".join(
        f"<tr><td class=l>{_time(o.alert.ts)}</td><td class=l>{_e(o.alert.exchange)} {_e(o.alert.symbol)}</td>"
        f"<td>{o.entry if o.entry is not None else '–'}</td><td>{pct(o.forward)}</td><td>{pct(o.favourable)}</td>"
        f"<td>{pct(o.adverse)}</td></tr>" for o in rep.outcomes[:limit])
    more = f"<p class=notes>first {limit} of {len(rep.outcomes)} shown</p>" if len(rep.outcomes) > limit else ""
    return (f"<details><summary>{_e(rep.rule)}: {rep.count} alert(s)</summary><table><tr><th class=l>bar (UTC)</th>"
            f"<th class=l>symbol</th><th>entry (close)</th><th>after {n} bar(s)</th><th>max favourable</th>"
            f"<th>max adverse</th></tr>{rows}</table>{more}</details>")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
