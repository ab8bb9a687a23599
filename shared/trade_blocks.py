"""A columnar reader of Binance public-data trades files: blocks of columns, no object per trade.

``read_trade_blocks(path)`` yields what ``shared.recordings.read_trade_texts`` yields for the same file, grouped: a
``TextColumns`` per block of rows (ids, ms timestamps, price and amount texts, sides) parsed by pyarrow's CSV reader
and checked column by column (pyarrow.compute), never a Python step per trade::

    3735683259,61837.63000000,0.02000000,1236.7526,1723161255342,true,true
    # id, price, qty, quote_qty, time (ms, or µs from 2025 on), is_buyer_maker[, is_best_match]

It takes only what it is sure of: plain ASCII text without quotes or lone carriage returns, 6 or 7 columns on
every row, an optional ``id,...`` header on line 1, integer ids and times in one unit, prices and quantities plain
positive decimals (digits, at most one point inside, not zero: kept as written, as ``read_trade_texts`` keeps
them), ``is_buyer_maker`` exactly ``true`` or ``false``. Anything else (a generic-layout file, a row pyarrow cannot
parse, a value a check refuses) hands the file to ``read_trade_texts`` from the first row not yielded yet, as
``TradeText`` tuples: a bad row is reported by that reader, with the message it always gives (``file:line``, field,
value).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

from shared.feed_codec import TextColumns
from shared.recordings import US_THRESHOLD, TradeFileError, detect_layout, read_trade_texts
from shared.schemas import TradeText

BLOCK_BYTES = 4 << 20  # ~80k trades a block: few Python steps per file, bounded memory
SMALL_BYTES = 16 << 10  # a smaller file (~300 trades) is read row by row: pyarrow's set-up costs more than it saves
# a plain decimal, digits on both sides of its point if it has one, not zero (what ``decimal_text`` keeps as it is)
_POSITIVE = r"^(?:[0-9]*[1-9][0-9]*(?:\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$"
_ALLOWED = b"0123456789.,\r\naeflrstu"


class _Unsure(Exception):
    """The columnar reader is not sure of a block: the row reader takes the file over."""


def read_trade_blocks(path: str | Path) -> Iterator[TextColumns | TradeText]:
    """The trades of a recording in file order: ``TextColumns`` blocks where the columnar checks pass, ``TradeText``
    (from ``read_trade_texts``, which names any bad row) from the first block they do not, and for a small file."""
    path = Path(path)
    if path.is_file() and path.stat().st_size < SMALL_BYTES:
        yield from read_trade_texts(path)
        return
    done = 0  # trades yielded as blocks
    try:
        for block in _blocks(path):
            done += len(block)
            yield block
    except (_Unsure, OSError, EOFError):  # (a truncated or corrupt .gz: the row reader names the line)
        yield from islice(read_trade_texts(path), done, None)


def _blocks(path: Path) -> Iterator[TextColumns]:
    try:
        layout = detect_layout(path) if path.is_file() else None
    except TradeFileError:
        layout = None
    if layout != "binance":
        raise _Unsure
    unit_us: bool | None = None
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
        first = fh.readline()
        _check(first.strip() and first.isascii() and b'"' not in first)
        header = first.split(b",", 1)[0].strip().lower() == b"id"
        rest = b"" if header else first
        while data := fh.read(BLOCK_BYTES):
            chunk = rest + data
            cut = chunk.rfind(b"\n") + 1
            chunk, rest = chunk[:cut], chunk[cut:]
            if chunk:
                block, unit_us = _parse(chunk, unit_us)
                if len(block):
                    yield block
        if rest:
            block, unit_us = _parse(rest, unit_us)
            if len(block):
                yield block
    _check(unit_us is not None)  # no trades at all: the row reader says so


def _parse(chunk: bytes, unit_us: bool | None) -> tuple[TextColumns, bool | None]:
    """One block of whole lines: its columns, and the file's time unit (as its first row set it)."""
    pa, pc, pacsv = _pyarrow()
    # Only digits, points, commas, line ends and the letters of true/false: no sign, space, quote, hex ("0x5",
    # which pyarrow reads as 5) or other text that pyarrow and the row reader could read differently.
    _check(not chunk.translate(None, _ALLOWED) and (b"\r" not in chunk or chunk.count(b"\r") == chunk.count(b"\r\n")))
    lines = chunk.lstrip(b"\r\n")
    if not lines:
        return TextColumns([], [], [], [], []), unit_us
    end = lines.find(b"\n")
    _check(lines[:end if end >= 0 else len(lines)].count(b",") in (5, 6))  # 6 or 7 columns (pyarrow: on every row)
    try:
        read, parse, convert = _options()
        table = pacsv.read_csv(pa.py_buffer(chunk), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, ValueError):
        raise _Unsure from None
    ids, prices, qtys, times, makers = table.columns
    _check(ids.null_count == 0 and times.null_count == 0 and makers.null_count == 0)
    _check(pc.all(pc.match_substring_regex(prices, _POSITIVE)).as_py())
    _check(pc.all(pc.match_substring_regex(qtys, _POSITIVE)).as_py())
    span = pc.min_max(times).as_py()
    if unit_us is None:
        unit_us = times[0].as_py() >= US_THRESHOLD
    if unit_us:
        _check(span["min"] >= US_THRESHOLD)
        times = pc.divide(times, 1000)  # (integers: an integer division, as ``ts //= 1000`` of positive times)
    else:
        _check(span["max"] < US_THRESHOLD)
    sides = pc.cast(pc.invert(makers), pa.int8())  # the buyer was not the maker: the taker bought (1)
    return TextColumns(ids.to_pylist(), times.to_pylist(), prices.to_pylist(), qtys.to_pylist(),
                       sides.to_pylist()), unit_us


def _check(condition: Any) -> None:
    if not condition:
        raise _Unsure


@cache
def _pyarrow() -> tuple[Any, Any, Any]:
    """pyarrow, imported by the first file read in blocks (~0.2 s): a backtest's feed process pays it while the
    services start beside it, and a process that never reads a large file (a live market_feed) never does."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    return pa, pc, pacsv


@cache
def _options() -> tuple[Any, Any, Any]:
    """pyarrow's read, parse and convert options of a block."""
    pa, _, pacsv = _pyarrow()
    read = pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False, block_size=BLOCK_BYTES * 2)
    parse = pacsv.ParseOptions(quote_char=False, ignore_empty_lines=True)
    convert = pacsv.ConvertOptions(column_types={"f0": pa.int64(), "f1": pa.string(), "f2": pa.string(),
                                                 "f4": pa.int64(), "f5": pa.bool_()},
                                   include_columns=["f0", "f1", "f2", "f4", "f5"], true_values=["true"],
                                   false_values=["false"])
    return read, parse, convert
