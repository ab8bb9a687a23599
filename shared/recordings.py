"""Readers of recorded trade files (replay mode).

Two CSV layouts, plain or gzip-compressed (``.gz``):

- Binance public-data trades (data.binance.vision), with or without a header::

      3735683259,61837.63000000,0.02000000,1236.7526,1723161255342,true,true
      # id, price, qty, quote_qty, time, is_buyer_maker[, is_best_match]

  ``time`` is in milliseconds, or microseconds in files from 2025 on: the unit is detected once per file from the
  first row (a value above 10**14 cannot be milliseconds before year 5138) and every row is converted to ms.
  ``is_buyer_maker`` true means the maker bought, so the taker SOLD.

- generic, with a header (columns in any order, ``id`` optional or empty)::

      timestamp,price,amount,side,id
      1723161255342,61837.63000000,0.02000000,sell,3735683259

  When the file has no ids, rows are numbered 1..n so ids stay unique and increasing (as the trades contract asks).

Prices and amounts are kept exactly as written: ``Decimal`` of the text (``read_trades``), or the checked text
itself (``read_trade_texts``, what a replay publishes: the consumer parses it, once). A bad row raises
``TradeFileError`` naming ``file:line``, the field and the offending value.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import SentinelError
from shared.schemas import Trade, TradeText, decimal_text

BINANCE_COLUMNS = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
GENERIC_REQUIRED = ("timestamp", "price", "amount", "side")
#: a trade time at or above this is in µs: ms timestamps stay below it until year 5138; µs ones of today are ~1.7e15
US_THRESHOLD = 10**14

T = TypeVar("T")

_TRUE = {"true", "1", "t", "yes", "y"}
_FALSE = {"false", "0", "f", "no", "n"}
_BUY = {"buy", "b", "bid"}
_SELL = {"sell", "s", "ask", "a"}


class TradeFileError(SentinelError, ValueError):
    """A recorded trades file cannot be read; the message names ``file:line``, the field and the value."""


#: Leading bytes of files people give instead of a CSV, and what to tell them.
_MAGIC = ((b"PAR1", "a Parquet file"), (b"PK\x03\x04", "a ZIP archive (unzip it first)"),
          (b"\x1f\x8b", "gzip-compressed (name it .gz)"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
          (b"BZh", "bzip2-compressed"), (b"\xfd7zXZ", "xz-compressed"), (b"SQLite format 3", "an SQLite database"),
          (b"\x89HDF", "an HDF5 file"), (b"ARROW1", "an Arrow file"))
_EXPECTED = "a trades CSV (Binance public-data layout, or a header timestamp,price,amount,side[,id]), plain or .gz"


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines as text (line endings kept, as ``csv`` wants), decoded one by one so that bytes that are not
    UTF-8 are reported at their own line."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TradeFileError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                     f"{exc.start + 1}); is this a CSV? expected {_EXPECTED}") from None


def _check_text(path: Path) -> None:
    """Refuse a binary file in one line naming what it looks like (never echoing its bytes)."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise TradeFileError(f"{path}: cannot read it ({exc}); expected {_EXPECTED}") from None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise TradeFileError(f"{path}: this is {what}, not a CSV; expected {_EXPECTED}")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise TradeFileError(f"{path}: binary data (a NUL byte at offset {nul}), not a CSV; expected {_EXPECTED}")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # (not just a character cut by the 4 KiB window)
            raise TradeFileError(f"{path}: not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start}), "
                                 f"not a CSV; expected {_EXPECTED}") from None


def detect_layout(path: str | Path) -> str:
    """``"binance"`` or ``"generic"``, from the first non-empty line of the file."""
    path = Path(path)
    _check_text(path)
    for line in _located(path, _text_lines(path)):
        if line.strip():
            return _layout_of(path, line)
    raise TradeFileError(f"{path}: file is empty; expected {_EXPECTED}")


def _located(path: Path, lines: Iterator[T]) -> Iterator[T]:
    """Iterate lines or CSV rows; a CSV or read error becomes a TradeFileError naming ``file:line``."""
    n = 0
    try:
        for n, item in enumerate(lines, start=1):
            yield item
    except csv.Error as exc:
        raise TradeFileError(f"{path}:{n + 1}: not a readable CSV row ({exc})") from None
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise TradeFileError(f"{path}:{n + 1}: cannot read further ({exc})") from None


def _layout_of(path: Path, first_line: str) -> str:
    cells = [c.strip().lower() for c in next(csv.reader([first_line]))]
    if "timestamp" in cells:
        return "generic"
    if cells[:2] == ["id", "price"] or (cells and _is_int(cells[0]) and len(cells) in (6, 7)):
        return "binance"
    raise TradeFileError(
        f"{path}:1: unrecognised trades layout {first_line.strip()[:80]!r}; expected a Binance trades CSV "
        f"({','.join(BINANCE_COLUMNS)}) or a CSV with header timestamp,price,amount,side,id")


def read_trades(path: str | Path) -> Iterator[Trade]:
    """Yield the trades of a recording in file order (see the module docstring for the layouts)."""
    return _read(Path(path), False)  # type: ignore[return-value]  # (as_text=False: Trade)


def read_trade_texts(path: str | Path) -> Iterator[TradeText]:
    """``read_trades`` with each price and amount kept as the exact text of the file (checked as ``read_trades``
    checks it, not parsed): what a replay publishes, so that a price is parsed once, by the consumer that uses it."""
    return _read(Path(path), True)  # type: ignore[return-value]  # (as_text=True: TradeText)


def _read(path: Path, as_text: bool) -> Iterator[Trade | TradeText]:
    if not path.exists():
        raise TradeFileError(f"{path}: no such file")
    if path.is_dir():
        raise TradeFileError(f"{path}: is a directory; expected {_EXPECTED}")
    layout = detect_layout(path)
    n = 0
    lines = _text_lines(path)
    rows = _read_binance(path, lines, as_text) if layout == "binance" else _read_generic(path, lines, as_text)
    for n, trade in enumerate(rows, 1):
        yield trade
    if n == 0:
        raise TradeFileError(f"{path}: no trades in the file (only a header?)")


def _is_int(text: str) -> bool:
    return text.isdigit()


class _Row:
    """Field parsers that raise TradeFileError with the location."""

    __slots__ = ("path", "line")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.line = 0

    def fail(self, field: str, value: str, expected: str) -> TradeFileError:
        return TradeFileError(f"{self.path}:{self.line}: field {field!r} — expected {expected}, got {value!r}")

    def decimal(self, field: str, value: str) -> Decimal:
        try:
            out = Decimal(value)
        except InvalidOperation:
            raise self.fail(field, value, "a decimal number") from None
        if not out.is_finite() or out <= 0:
            raise self.fail(field, value, "a positive finite number")
        return out

    def text(self, field: str, value: str) -> str:
        """``decimal``'s check, the value kept as text: a plain decimal as it is, anything else as the Decimal
        makes it (``" 1e-3"`` → ``"0.001"``)."""
        return decimal_text(value) or str(self.decimal(field, value.strip()))

    def integer(self, field: str, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise self.fail(field, value, "an integer") from None


def _read_binance(path: Path, fh: Iterator[str], as_text: bool) -> Iterator[Trade | TradeText]:
    row = _Row(path)
    value: Callable[[str, str], Any] = row.text if as_text else row.decimal
    make: Any = TradeText if as_text else Trade
    unit_us: bool | None = None
    # price and qty text -> its checked Decimal (or text): a file repeats a few thousand values, each checked once
    values: dict[str, Any] = {}
    new = tuple.__new__  # a Trade without NamedTuple's Python-level __new__
    for row.line, text in enumerate(_located(path, iter(fh)), start=1):
        # Binance's files quote nothing: a plain split, and the csv module's rules for a line that has quotes
        cells = text.rstrip("\r\n").split(",") if '"' not in text else next(_located(path, csv.reader([text])), [])
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if row.line == 1 and cells[0].strip().lower() == "id":
            continue  # header
        if len(cells) not in (6, 7):
            raise TradeFileError(f"{path}:{row.line}: expected 6 or 7 columns ({','.join(BINANCE_COLUMNS)}), "
                                 f"got {len(cells)}")
        tid = row.integer("id", cells[0].strip())
        price = values.get(cells[1])
        if price is None:
            price = values[cells[1]] = value("price", cells[1].strip())
        amount = values.get(cells[2])
        if amount is None:
            amount = values[cells[2]] = value("qty", cells[2].strip())
        if len(values) > 100_000:
            values.clear()
        ts = row.integer("time", cells[4].strip())
        if unit_us is None:
            unit_us = ts >= US_THRESHOLD
        elif (ts >= US_THRESHOLD) != unit_us:
            raise row.fail("time", cells[4], "the same unit as the file's first row "
                                             f"({'µs' if unit_us else 'ms'})")
        if unit_us:
            ts //= 1000
        maker = cells[5]
        if maker == "true":
            is_buy = False  # the buyer was the maker: the taker sold
        elif maker == "false":
            is_buy = True
        elif maker.strip().lower() in _TRUE:
            is_buy = False
        elif maker.strip().lower() in _FALSE:
            is_buy = True
        else:
            raise row.fail("is_buyer_maker", cells[5], "true or false")
        yield new(make, (tid, ts, price, amount, is_buy))


def _read_generic(path: Path, fh: Iterator[str], as_text: bool) -> Iterator[Trade | TradeText]:
    row = _Row(path)
    value: Callable[[str, str], Any] = row.text if as_text else row.decimal
    reader = _located(path, csv.reader(fh))
    header: list[str] = []
    for row.line, cells in enumerate(reader, start=1):
        if cells:
            header = [c.strip().lower() for c in cells]
            break
    missing = [c for c in GENERIC_REQUIRED if c not in header]
    if missing:
        raise TradeFileError(f"{path}:{row.line}: header lacks column(s) {', '.join(missing)}; "
                             f"expected timestamp,price,amount,side[,id]")
    i_ts, i_price, i_amount, i_side = (header.index(c) for c in GENERIC_REQUIRED)
    i_id = header.index("id") if "id" in header else None
    width = len(header)
    numbered: bool | None = None  # True once the file is known to have no ids
    n = 0
    for row.line, cells in enumerate(reader, start=row.line + 1):
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != width:
            raise TradeFileError(f"{path}:{row.line}: expected {width} columns ({','.join(header)}), "
                                 f"got {len(cells)}")
        n += 1
        ts = row.integer("timestamp", cells[i_ts].strip())
        if ts >= US_THRESHOLD:
            ts //= 1000
        price = value("price", cells[i_price].strip())
        amount = value("amount", cells[i_amount].strip())
        side = cells[i_side].strip().lower()
        if side in _BUY:
            is_buy = True
        elif side in _SELL:
            is_buy = False
        else:
            raise row.fail("side", cells[i_side], "buy or sell")
        raw_id = cells[i_id].strip() if i_id is not None else ""
        if numbered is None:
            numbered = raw_id == ""
        if numbered:
            if raw_id:
                raise row.fail("id", raw_id, "empty like the file's first row (ids are numbered 1..n)")
            tid: int | str = n
        else:
            if not raw_id:
                raise row.fail("id", raw_id, "a trade id like the file's first row")
            tid = int(raw_id) if raw_id.isdigit() else raw_id
        yield TradeText(tid, ts, price, amount, is_buy) if as_text else Trade(tid, ts, price, amount, is_buy)


_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "DAI", "USD", "TUSD", "EUR", "GBP", "JPY", "TRY", "BRL",
           "BTC", "ETH", "BNB", "XBT")
_ALIASES = {"XBT": "BTC"}


def guess_symbol(path: str | Path) -> str | None:
    """Guess a unified symbol from a file name: ``BTCUSDT-trades-….csv`` → ``BTC/USDT``; None if no guess."""
    name = Path(path).name.upper()
    match = re.match(r"([A-Z0-9]{4,15})(?=[-_.])", name)
    if not match:
        return None
    pair = match.group(1)
    for quote in _QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote) + 1:
            base = pair[: -len(quote)]
            return f"{_ALIASES.get(base, base)}/{_ALIASES.get(quote, quote)}"
    return None


def guess_exchange(path: str | Path) -> str | None:
    """Guess the exchange from the file's path (``…/kraken_btcusd/…`` → ``kraken``); None if no guess."""
    text = str(path).lower()
    for name in ("binance", "kraken", "coinbase", "bitstamp", "bybit", "okx", "kucoin", "bitfinex", "gemini"):
        if name in text:
            return name
    return None
