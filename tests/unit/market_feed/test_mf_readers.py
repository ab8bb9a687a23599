"""Readers of recorded trade files, checked against an independent pandas/csv read of the same real files."""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from shared.recordings import TradeFileError, detect_layout, guess_symbol, read_trades
from tests.conftest import shared_data

BINANCE = "binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv"
GENERIC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
GENERIC_FILES = [GENERIC, "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv",
                 "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv",
                 "binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv"]


def _pandas_generic(path: Path) -> list[tuple]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    ids = [int(x) for x in df["id"]] if (df["id"] != "").all() else list(range(1, len(df) + 1))
    return [(i, int(ts), Decimal(p), Decimal(a), side == "buy")
            for i, ts, p, a, side in zip(ids, df["timestamp"], df["price"], df["amount"], df["side"], strict=True)]


@pytest.mark.parametrize("rel", GENERIC_FILES)
def test_generic_layout_matches_pandas(rel):
    path = shared_data(rel)
    assert detect_layout(path) == "generic"
    assert [tuple(t) for t in read_trades(path)] == _pandas_generic(path)


def test_binance_layout_matches_pandas_and_the_generic_file_of_the_same_trades():
    path = shared_data(BINANCE)
    assert detect_layout(path) == "binance"
    df = pd.read_csv(path, header=None, dtype=str)
    expected = [(int(r[0]), int(r[4]), Decimal(r[1]), Decimal(r[2]), r[5] == "false") for r in df.itertuples(False)]
    got = [tuple(t) for t in read_trades(path)]
    assert got == expected
    assert got == _pandas_generic(shared_data(GENERIC))  # the two layouts of the same capture agree


def test_binance_microseconds_header_and_gzip(tmp_path):
    src = shared_data(BINANCE).read_text().splitlines()[:50]
    rows = []
    for line in src:
        c = line.split(",")
        c[4] = str(int(c[4]) * 1000 + 123)  # µs, as data.binance.vision writes from 2025 on
        rows.append(",".join(c[:6]))  # and without is_best_match
    path = tmp_path / "BTCUSDT-trades-2025-01-01.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("id,price,qty,quote_qty,time,is_buyer_maker\n" + "\n".join(rows) + "\n")
    got = list(read_trades(path))
    expected = list(read_trades(shared_data(BINANCE)))[:50]
    assert got == expected


@pytest.mark.parametrize(("content", "line", "field"), [
    ("timestamp,price,amount,side,id\n1,2,3,buy,1\n2,abc,3,sell,2\n", 3, "price"),
    ("timestamp,price,amount,side,id\n1,2,3,buy,1\n2,2,3,hold,2\n", 3, "side"),
    ("timestamp,price,amount,side,id\n1,2,3,buy,1\n\n2.5,2,3,buy,2\n", 4, "timestamp"),
    ("timestamp,price,amount,side,id\n1,2,-3,buy,1\n", 2, "amount"),
    ("timestamp,price,amount,side,id\n1,2,3,buy,\n2,2,3,buy,7\n", 3, "id"),
    ("1,2.0,3.0,6.0,1723161255342,true,true\n2,2.0,3.0,6.0,1723161255342,maybe,true\n", 2, "is_buyer_maker"),
    ("1,2.0,3.0,6.0,1723161255342,true,true\n2,2.0,3.0,6.0,1723161255342000,true,true\n", 2, "time"),
    ("1,2.0,3.0,6.0,1723161255342,true,true\nx2,2.0,3.0,6.0,1723161255342,true,true\n", 2, "id"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, line, field):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TradeFileError) as info:
        list(read_trades(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert repr(field) in message


def test_wrong_column_count_and_unknown_layout(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("1,2.0,3.0,6.0,1723161255342,true\n2,2.0,3.0\n")
    with pytest.raises(TradeFileError, match=r"short\.csv:2: expected 6 or 7 columns"):
        list(read_trades(path))
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(TradeFileError, match=r"other\.csv:1: unrecognised trades layout"):
        list(read_trades(path))


def test_symbol_guess_from_file_names():
    assert guess_symbol("BTCUSDT-trades-2024-08-08.csv") == "BTC/USDT"
    assert guess_symbol("/x/XRPETH-aggtrades-2019-10-11.csv") == "XRP/ETH"
    assert guess_symbol("XBTUSD-trades-20190701T00-01.csv") == "BTC/USD"
    assert guess_symbol("trades.csv") is None
