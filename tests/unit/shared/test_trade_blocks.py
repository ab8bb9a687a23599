"""shared.trade_blocks against its oracle, the row reader (``read_trade_texts``): the same trades in the same order,
in blocks where the file is plain, and the row reader's own message for a bad row, wherever it is in the file.
Real recorded trades (../shared/data), written out in the layouts Binance serves."""

from __future__ import annotations

import gzip
import heapq
from itertools import repeat
from pathlib import Path

import pytest

from sentinel.backtest.inputs import merge_in_time
from shared import trade_blocks
from shared.feed_codec import TextColumns
from shared.recordings import TradeFileError, read_trade_texts
from shared.trade_blocks import read_trade_blocks
from tests.conftest import shared_data

BINANCE = "binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv"
GENERIC = ["binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv",
           "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"]


def _flat(items) -> list:
    return [t for item in items for t in (item if type(item) is TextColumns else [item])]


def _binance_lines(relative: str, *, micros: bool = False, seven: bool = True) -> list[str]:
    """A generic-layout recording (timestamp,price,amount,side,id) written in Binance's layout."""
    rows = shared_data(relative).read_text().splitlines()[1:]
    out = []
    for row in rows:
        ts, price, amount, side, tid = row.split(",")
        time = int(ts) * 1000 + 123 if micros else int(ts)
        out.append(f"{tid},{price},{amount},0.5,{time},{'false' if side == 'buy' else 'true'}"
                   + (",true" if seven else ""))
    return out


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of ~2k trades and no small-file shortcut: the recordings span several blocks."""
    monkeypatch.setattr(trade_blocks, "BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(trade_blocks, "SMALL_BYTES", 0)


def _variants(tmp_path: Path) -> list[Path]:
    out = [shared_data(BINANCE)]
    for n, relative in enumerate(GENERIC):
        for micros, seven, header, end, gz in [(False, True, False, "\n", False), (True, False, True, "\r\n", True)]:
            lines = _binance_lines(relative, micros=micros, seven=seven)
            if header:
                lines.insert(0, "id,price,qty,quote_qty,time,is_buyer_maker" + (",is_best_match" if seven else ""))
            text = end.join(lines) + end
            path = tmp_path / (f"f{n}-{micros}{seven}{header}.csv" + (".gz" if gz else ""))
            path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
            out.append(path)
    return out


def test_blocks_hold_what_the_row_reader_reads(tmp_path: Path) -> None:
    for path in _variants(tmp_path):
        items = list(read_trade_blocks(path))
        if not path.name.startswith("f0"):  # (2021's amounts include "2e-06": the row reader reads that file)
            assert all(type(b) is TextColumns for b in items) and len(items) > 1, path  # all of it in blocks
        assert _flat(items) == list(read_trade_texts(path)), path


def test_what_the_checks_refuse_is_read_by_the_row_reader_from_where_the_blocks_stopped(tmp_path: Path) -> None:
    lines = shared_data(BINANCE).read_text().splitlines()
    odd = [(5, lambda m: m.title()), (1, lambda p: p.replace(".", "e")), (0, " ".__add__), (0, lambda i: f'"{i}"')]
    for n, (column, change) in enumerate(odd):  # all read by the row reader as it reads them (no error)
        path = tmp_path / f"odd{n}.csv"
        at = 15_000 + n
        cells = lines[at].split(",")
        cells[column] = change(cells[column])
        path.write_text("\n".join(lines[:at] + [",".join(cells)] + lines[at + 1:]) + "\n")
        items = list(read_trade_blocks(path))
        assert type(items[0]) is TextColumns and type(items[-1]) is not TextColumns, path  # blocks, then rows
        try:
            want = list(read_trade_texts(path))
        except TradeFileError as exc:
            with pytest.raises(TradeFileError) as got:
                list(read_trade_blocks(path))
            assert str(got.value) == str(exc)
            continue
        assert _flat(items) == want, path


@pytest.mark.parametrize(("bad", "message"), [
    ("3735698000,abc,0.1,1,1723161900000,true,true", "field 'price' — expected a decimal number, got 'abc'"),
    ("3735698000,1.5,0,1,1723161900000,true,true", "field 'qty' — expected a positive finite number, got '0'"),
    ("3735698000,1.5,0.1,1,1723161900000,maybe,true", "field 'is_buyer_maker' — expected true or false, got 'maybe'"),
    ("3735698000,1.5,0.1,1,1723161900000000,true,true", "field 'time' — expected the same unit as the file's first "
                                                        "row (ms), got '1723161900000000'"),
    ("3735698000,1.5,0.1,1", "expected 6 or 7 columns (id,price,qty,quote_qty,time,is_buyer_maker,is_best_match), "
                             "got 4"),
])
def test_a_bad_row_deep_in_a_file_gets_the_row_readers_message(tmp_path: Path, bad: str, message: str) -> None:
    lines = shared_data(BINANCE).read_text().splitlines()
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines[:12_345] + [bad] + lines[12_345:]) + "\n")
    got = read_trade_blocks(path)
    assert type(next(got)) is TextColumns  # blocks before it
    with pytest.raises(TradeFileError) as exc:
        list(got)
    assert str(exc.value) == f"{path}:12346: {message}"


def test_a_truncated_gzip_gets_the_row_readers_message(tmp_path: Path) -> None:
    data = gzip.compress(shared_data(BINANCE).read_bytes())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TradeFileError) as want:
        list(read_trade_texts(path))
    with pytest.raises(TradeFileError) as got:
        list(read_trade_blocks(path))
    assert str(got.value) == str(want.value) and "cannot read further" in str(got.value)


def test_merged_files_come_in_heapq_merge_order_as_blocks_where_they_do_not_overlap(tmp_path: Path) -> None:
    lines = shared_data(BINANCE).read_text().splitlines()
    parts = []
    cut = next(i for i in range(8000, len(lines)) if lines[i].split(",")[4] != lines[i - 1].split(",")[4])
    for n, chunk in enumerate([lines[:cut], lines[cut:]]):  # one recording cut in two: no overlap in time
        parts.append(tmp_path / f"part{n}.csv")
        parts[-1].write_text("\n".join(chunk) + "\n")
    other = tmp_path / "other.csv"  # a second symbol over the same time, often in the same ms: interleaved, ties
    other.write_text("\n".join(lines[::3]) + "\n")
    for paths in ([parts[1], parts[0]], [parts[0], other, parts[1]], [other, parts[0]]):
        got = list(merge_in_time([zip(repeat(p.name), read_trade_blocks(p)) for p in paths]))
        want = list(heapq.merge(*[zip(repeat(p.name), read_trade_texts(p)) for p in paths], key=lambda st: st[1].ts))
        assert [(s, t) for s, item in got for t in (item if type(item) is TextColumns else [item])] == want
        if other not in paths:
            assert all(type(item) is TextColumns for _, item in got)
