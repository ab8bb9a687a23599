"""A backtest's output folder, read back: candles per series, alerts, and the rules that made them.

``sentinel backtest --out DIR`` writes ``DIR/candles_<tf>.csv`` for one symbol (``candles_<exchange>_<BASE-QUOTE>_<tf>
.csv`` for several) with the columns ``timestamp,open,high,low,close,volume,buy_volume,sell_volume,trades``, and
``DIR/alerts.jsonl`` (one alert per line, ``sentinel.export.alert_record``). Bad input is a ReportError naming the
file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from shared.errors import SentinelError
from shared.rules import RuleSet, load_rules_file
from shared.schemas import Alert, Candle
from shared.timeframes import SUPPORTED, sort_timeframes

SeriesKey = tuple[str, str, str]  # exchange, symbol, timeframe
_ONE = re.compile(r"^candles_(?P<tf>[0-9]+[smhdw])\.csv$")
_MANY = re.compile(r"^candles_(?P<ex>[^_]+)_(?P<sym>.+)_(?P<tf>[0-9]+[smhdw])\.csv$")
_DECIMALS = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume")


class ReportError(SentinelError):
    """A backtest output the report cannot read; the message names the file, line and field."""


@dataclass
class BacktestOutput:
    folder: Path
    candles: dict[SeriesKey, list[Candle]]
    alerts: list[Alert]
    rules: RuleSet


def load_output(folder: Path, rules_file: Path, exchange: str | None = None,
                symbol: str | None = None) -> BacktestOutput:
    """Read a backtest's folder. A single-symbol ``candles_<tf>.csv`` is labelled with ``exchange``/``symbol``, else
    with the one pair its alerts name, else ``?``."""
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder (expected the --out folder of `sentinel backtest`)")
    rules = load_rules_file(rules_file)
    alerts = read_alerts(folder / "alerts.jsonl")
    pairs = {(a.exchange, a.symbol) for a in alerts}
    default = (exchange or (next(iter(pairs))[0] if len(pairs) == 1 else "?"),
               symbol or (next(iter(pairs))[1] if len(pairs) == 1 else "?"))
    candles: dict[SeriesKey, list[Candle]] = {}
    for path in sorted(folder.glob("candles_*.csv")):
        key = series_of(path, default)
        if key is not None:
            candles[key] = read_candles(path, key)
    if not candles:
        raise ReportError(f"{folder}: no candles_<tf>.csv files (is it the --out folder of `sentinel backtest`?)")
    order = {tf: i for i, tf in enumerate(sort_timeframes({k[2] for k in candles}))}
    candles = dict(sorted(candles.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]])))
    return BacktestOutput(folder, candles, alerts, rules)


def series_of(path: Path, default: tuple[str, str]) -> SeriesKey | None:
    """(exchange, symbol, timeframe) of a candles file from its name; None for a name of neither form."""
    if m := _ONE.match(path.name):
        tf = m["tf"]
        return (default[0], default[1], tf) if tf in SUPPORTED else None
    if m := _MANY.match(path.name):
        return (m["ex"], m["sym"].replace("-", "/", 1), m["tf"]) if m["tf"] in SUPPORTED else None
    return None


def read_candles(path: Path, key: SeriesKey) -> list[Candle]:
    exchange, symbol, tf = key
    out: list[Candle] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("timestamp", *_DECIMALS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ReportError(f"{path}:1: header lacks {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                values = {f: Decimal(row[f]) for f in _DECIMALS}
                ts = int(row["timestamp"])
                trades = int(row.get("trades") or 0)
            except (InvalidOperation, ValueError, TypeError):
                bad = next(f for f in ("timestamp", *_DECIMALS) if not _is_number(row.get(f)))
                raise ReportError(f"{path}:{line}: field {bad!r} — expected a number, got {row.get(bad)!r}") from None
            out.append(Candle(exchange=exchange, symbol=symbol, timeframe=tf, ts=ts, trades=trades, **values))
    return out


def read_alerts(path: Path) -> list[Alert]:
    """The alerts of ``alerts.jsonl`` (none when the file is absent)."""
    if not path.exists():
        return []
    out = []
    with path.open() as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                record.pop("timestamp", None)
                out.append(Alert.model_validate(record))
            except ValueError as exc:  # json and pydantic errors both are ValueErrors
                raise ReportError(f"{path}:{line}: not an alert record ({str(exc).splitlines()[0]})") from None
    return out


def _is_number(text: str | None) -> bool:
    try:
        Decimal(text or "x")
        return True
    except InvalidOperation:
        return False
