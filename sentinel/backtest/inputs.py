"""What ``sentinel backtest`` reads: files, folders, and files of many symbols, for one or more exchanges.

- a trades CSV (``.csv``, ``.csv.gz``) of one symbol: the symbol from ``--symbol`` or the file name
  (``BTCUSDT-trades-2024-01-01.csv`` → BTC/USDT, as Binance's archives and ``sentinel data fetch`` name them), the
  exchange from ``--exchange`` or the path (``history/kraken/…`` → kraken, else binance);
- a Binance archive ``.zip`` holding one such CSV (read in place, as data.binance.vision serves it);
- a CSV with a ``symbol`` column (and optionally an ``exchange`` column) beside ``timestamp,price,amount,side[,id]``:
  many symbols in one file;
- a folder: every such file in it and below.

Trades of one exchange are merged in time order across its files (the feed's watermarks are per exchange time).
Bad input is an ``InputError`` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import io
import itertools
import operator
import zipfile
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from itertools import islice, repeat
from pathlib import Path
from typing import IO, Any

from shared.errors import SentinelError
from shared.feed_codec import TextColumns
from shared.recordings import US_THRESHOLD, TradeFileError, detect_layout, guess_exchange, guess_symbol
from shared.schemas import TradeText, decimal_text
from shared.trade_blocks import read_trade_blocks

SUFFIXES = (".csv", ".csv.gz", ".zip")
_SIDES = {"buy": True, "b": True, "bid": True, "sell": False, "s": False, "ask": False, "a": False}


class InputError(SentinelError):
    """A backtest input that cannot be used; the message names the file (and line and field when it is a row)."""


@dataclass(frozen=True)
class Input:
    """One file to replay: its exchange, and its symbol (None: a ``symbol`` column says, row by row)."""

    path: Path
    exchange: str
    symbol: str | None
    rows: int  # data lines (trades), counted beforehand for the progress bar
    symbols: frozenset[tuple[str, str]]  # (exchange, symbol) pairs it holds


def resolve(paths: Iterable[Path], exchange: str | None = None, symbol: str | None = None) -> list[Input]:
    """The inputs named on the command line (files and folders), checked and counted; InputError if unusable."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES))
            if not found:
                raise InputError(f"{path}: no trades files in this folder (expected {', '.join(SUFFIXES)})")
            files += found
        else:
            files.append(path)
    return [_describe(p, exchange, symbol) for p in dict.fromkeys(files)]


def _describe(path: Path, exchange: str | None, symbol: str | None) -> Input:
    header = _header(path)
    ex = exchange or guess_exchange(path) or "binance"
    if "symbol" in header:
        pairs, rows = _scan_symbols(path, header, ex)
        return Input(path, ex, None, rows, frozenset(pairs))
    sym = symbol or guess_symbol(path)
    if not sym:
        raise InputError(f"{path}: cannot tell the symbol from the file name; give it with --symbol (e.g. --symbol "
                         "BTC/USDT), name the file like BTCUSDT-trades-….csv, or add a symbol column")
    if path.suffix.lower() != ".zip":
        detect_layout(path)  # a binary, empty or unknown file is refused here, naming what it looks like
    return Input(path, ex, sym, _count_rows(path, header), frozenset({(ex, sym)}))


# ---- reading -------------------------------------------------------------------------------------------------------


#: ``(symbol, trade)``, or ``(symbol, block of trades of that symbol)`` (``shared.trade_blocks``)
Item = tuple[str, TradeText | TextColumns]
Track = Callable[[Path, str, Iterator[Item]], Iterator[Item]]


def trades_by_exchange(inputs: list[Input], track: Track | None = None) -> dict[str, tuple[list[str], Iterator[Item]]]:
    """exchange → (its symbols, its trades as ``(symbol, trade or block)`` in time order across its files);
    ``track`` sees each file's trades on their way (path, exchange, trades) → trades."""
    out: dict[str, tuple[list[str], Iterator[Item]]] = {}
    for ex in sorted({i.exchange for i in inputs} | {e for i in inputs for e, _ in i.symbols}):
        mine = [i for i in inputs if any(e == ex for e, _ in i.symbols)]
        symbols = sorted({s for i in mine for e, s in i.symbols if e == ex})
        streams = [read_input(i, ex) if track is None else track(i.path, ex, read_input(i, ex)) for i in mine]
        out[ex] = (symbols, streams[0] if len(streams) == 1 else merge_in_time(streams))
    return out


def merge_in_time(streams: list[Iterator[Item]]) -> Iterator[Item]:
    """``heapq.merge`` of the streams by trade time (ties: the earlier stream first): the same trades in the same
    order, a block passed on whole, or in slices, while it runs before every other stream's next trade. Files that
    do not overlap in time pass as their blocks; interleaved ones go mostly trade by trade."""
    heads: dict[int, list[Any]] = {}  # stream -> [symbol, trade or block, index of its next trade, stream]
    heap: list[tuple[int, int]] = []  # (time of the stream's next trade, stream)

    def pull(n: int, stream: Iterator[Item]) -> None:
        for symbol, trade in stream:
            if type(trade) is TextColumns:
                if not len(trade):
                    continue
                if not all(map(operator.le, trade.tss, islice(trade.tss, 1, None))):  # times going back: one by one
                    stream = itertools.chain(zip(repeat(symbol), trade), stream)
                    pull(n, stream)
                    return
                heapq.heappush(heap, (trade.tss[0], n))
            else:
                heapq.heappush(heap, (trade.ts, n))
            heads[n] = [symbol, trade, 0, stream]
            return

    for n, stream in enumerate(streams):
        pull(n, stream)
    while heap:
        _, n = heapq.heappop(heap)
        head = heads[n]
        symbol, trade, at, stream = head
        if type(trade) is TextColumns:
            tss, size = trade.tss, len(trade)
            if not heap:
                end = size
            else:  # the trades that come before every other stream's next one
                ts, other = heap[0]
                end = (bisect_right if n < other else bisect_left)(tss, ts, at)
            if end - at >= _SLICE_FROM:
                yield symbol, trade if at == 0 and end == size else trade.slice(at, end)
            else:
                for i in range(at, end):
                    yield symbol, trade[i]
            if end < size:
                head[2] = end
                heapq.heappush(heap, (tss[end], n))
                continue
        else:
            yield symbol, trade
        pull(n, stream)


_SLICE_FROM = 16  # a run of fewer trades of a block goes trade by trade (a slice costs more than it saves)


def read_input(item: Input, exchange: str) -> Iterator[Item]:
    """The ``(symbol, trade)`` of one input that belong to ``exchange``, in file order, or blocks of them; prices and
    amounts as their checked text (the feed publishes it as it is: the builder parses each price once)."""
    symbol = item.symbol
    if symbol is not None:
        trades = _read_zip(item.path) if item.path.suffix.lower() == ".zip" else read_trade_blocks(item.path)
        return zip(repeat(symbol), trades)  # (no Python frame per trade: the feed process' path of every trade)
    return ((sym, trade) for ex, sym, trade in _read_symbol_column(item.path, item.exchange) if ex == exchange)


def _read_zip(path: Path) -> Iterator[TradeText | TextColumns]:
    """A Binance archive (one CSV inside), read through a temporary extraction next to nothing: the CSV reader of
    recordings takes a path, so the member is streamed to a temporary file first."""
    import tempfile

    with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="sentinel-zip-") as tmp:
        member = _zip_member(path, zf)
        target = Path(tmp) / Path(member).name
        with zf.open(member) as src, target.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        try:
            yield from read_trade_blocks(target)
        except TradeFileError as exc:  # name the archive, not the temporary file
            raise InputError(str(exc).replace(str(target), f"{path}[{member}]")) from None


def _zip_member(path: Path, zf: zipfile.ZipFile) -> str:
    names = [n for n in zf.namelist() if n.lower().endswith(".csv")]
    if len(names) != 1:
        raise InputError(f"{path}: expected one CSV inside the archive, found {len(names)}")
    return names[0]


def _read_symbol_column(path: Path, default_exchange: str) -> Iterator[tuple[str, str, TradeText]]:
    """Rows of a CSV with a header naming ``timestamp,price,amount,side,symbol`` (``id`` and ``exchange``
    optional): ``(exchange, symbol, trade)``; rows without ids are numbered per symbol."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = [c.strip().lower() for c in next(reader)]
        missing = [c for c in ("timestamp", "price", "amount", "side", "symbol") if c not in header]
        if missing:
            raise InputError(f"{path}:1: header lacks column(s) {', '.join(missing)}; expected "
                             "timestamp,price,amount,side,symbol[,id][,exchange]")
        col = {name: header.index(name) for name in header}
        i_ts, i_price, i_amount, i_side, i_sym = (col[c] for c in ("timestamp", "price", "amount", "side", "symbol"))
        i_id, i_ex = col.get("id"), col.get("exchange")
        numbers: dict[tuple[str, str], int] = {}
        width = len(header)
        line = 1
        try:
            for line, cells in enumerate(reader, start=2):
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if len(cells) != width:
                    raise InputError(f"{path}:{line}: expected {width} columns ({','.join(header)}), got {len(cells)}")
                sym = cells[i_sym].strip()
                if not sym:
                    raise _bad(path, line, "symbol", cells[i_sym], "a symbol, e.g. BTC/USDT")
                ex = (cells[i_ex].strip() if i_ex is not None else "") or default_exchange
                ts = _int(path, line, "timestamp", cells[i_ts])
                price = _decimal_text(path, line, "price", cells[i_price])
                amount = _decimal_text(path, line, "amount", cells[i_amount])
                side = _SIDES.get(cells[i_side].strip().lower())
                if side is None:
                    raise _bad(path, line, "side", cells[i_side], "buy or sell")
                raw_id = cells[i_id].strip() if i_id is not None else ""
                if raw_id:
                    tid: int | str = int(raw_id) if raw_id.isdigit() else raw_id
                else:
                    tid = numbers[(ex, sym)] = numbers.get((ex, sym), 0) + 1
                yield ex, sym, TradeText(tid, ts // 1000 if ts >= US_THRESHOLD else ts, price, amount, side)
        except csv.Error as exc:
            raise InputError(f"{path}:{line + 1}: not a readable CSV row ({exc})") from None


def _bad(path: Path, line: int, field: str, value: str, expected: str) -> InputError:
    return InputError(f"{path}:{line}: field {field!r} — expected {expected}, got {value!r}")


def _int(path: Path, line: int, field: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _bad(path, line, field, text, "an integer (ms or µs since 1970)") from None


def _decimal_text(path: Path, line: int, field: str, text: str) -> str:
    """The cell's text if it is a plain positive decimal, else ``_decimal``'s check and the Decimal's text."""
    return decimal_text(text) or str(_decimal(path, line, field, text))


def _decimal(path: Path, line: int, field: str, text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise _bad(path, line, field, text, "a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise _bad(path, line, field, text, "a positive finite number")
    return value


# ---- looking before reading -----------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _header(path: Path) -> list[str]:
    """The first line's cells, lower-cased (an empty list for a zip: its CSV is Binance's layout)."""
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                _zip_member(path, zf)
        except zipfile.BadZipFile:
            raise InputError(f"{path}: not a readable zip archive") from None
        return []
    try:  # only a look for a symbol column: the reader names what is wrong with a file
        with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as fh:
            first = fh.readline(4096).decode("utf-8", errors="replace")
        return [c.strip().lower() for c in next(csv.reader([first]), [])]
    except (OSError, EOFError, csv.Error):
        return []


def _count_rows(path: Path, header: list[str]) -> int:
    """Data lines of a file (a header line not counted): the progress bar's total."""
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf, zf.open(_zip_member(path, zf)) as fh:
            return _count_lines(fh)
    with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as fh:
        lines = _count_lines(fh)
    has_header = bool(header) and not header[0].isdigit()
    return max(0, lines - has_header)


def _count_lines(fh: IO[bytes] | gzip.GzipFile) -> int:
    n, last = 0, b"\n"
    while chunk := fh.read(1 << 20):
        n += chunk.count(b"\n")
        last = chunk[-1:]
    return n + (last != b"\n")


def _scan_symbols(path: Path, header: list[str], exchange: str) -> tuple[set[tuple[str, str]], int]:
    """(exchange, symbol) pairs of a symbol-column file and its row count, read once (values unchecked: the replay
    checks every row and names the bad one)."""
    i_sym = header.index("symbol")
    i_ex = header.index("exchange") if "exchange" in header else None
    pairs: set[tuple[str, str]] = set()
    rows = 0
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        next(reader, None)
        try:
            for line, cells in enumerate(reader, start=2):
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if len(cells) != len(header):
                    raise InputError(f"{path}:{line}: expected {len(header)} columns ({','.join(header)}), "
                                     f"got {len(cells)}")
                rows += 1
                ex = (cells[i_ex].strip() if i_ex is not None else "") or exchange
                sym = cells[i_sym].strip()
                if not sym:
                    raise _bad(path, line, "symbol", cells[i_sym], "a symbol, e.g. BTC/USDT")
                pairs.add((ex, sym))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable CSV ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no trades in the file (only a header?)")
    return pairs, rows
