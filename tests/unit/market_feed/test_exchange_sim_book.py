"""The local exchange's REST views (aggTrades paging rules, klines) against independent computations."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest

from services.exchange_sim.book import BinanceApiError, SymbolBook
from shared.recordings import read_trades
from tests.conftest import shared_data

RECORDING = "binance_spot_btcusdt_20210108/BTCUSDT-trades-20210108T000000-000046.csv"


def _book(retention: int = 1_000_000) -> tuple[SymbolBook, list]:
    trades = list(read_trades(shared_data(RECORDING)))
    book = SymbolBook("BTC/USDT", Decimal("0.01"), Decimal("0.000001"), retention)
    for t in trades:
        book.add(t)
    return book, trades


def test_agg_trades_by_id_by_time_and_binance_errors():
    book, trades = _book()
    assert book.agg_trades(from_id=trades[10].id, start_time=None, end_time=None, limit=5) == trades[10:15]
    t0, t1 = trades[100].ts, trades[400].ts
    assert book.agg_trades(from_id=None, start_time=t0, end_time=t1, limit=1000) == [
        t for t in trades if t0 <= t.ts <= t1]
    assert book.agg_trades(from_id=None, start_time=None, end_time=None, limit=3) == trades[-3:]
    with pytest.raises(BinanceApiError) as info:
        book.agg_trades(from_id=1, start_time=t0, end_time=None, limit=10)
    assert info.value.code == -1128
    with pytest.raises(BinanceApiError) as info:
        book.agg_trades(from_id=None, start_time=0, end_time=3_600_001, limit=10)
    assert info.value.code == -1127


def test_retention_serves_only_the_newest_trades():
    book, trades = _book(retention=100)
    assert book.agg_trades(from_id=trades[0].id, start_time=None, end_time=None, limit=1000) == trades[-100:]


def test_klines_equal_pandas_resample():
    book, trades = _book()
    rows = book.klines(10_000, None, None, 1000)
    df = pd.DataFrame([(t.ts, float(t.price), float(t.amount)) for t in trades], columns=["ts", "p", "q"])
    df["b"] = df["ts"] // 10_000 * 10_000
    g = df.groupby("b")
    expected = pd.DataFrame({"o": g["p"].first(), "h": g["p"].max(), "l": g["p"].min(), "c": g["p"].last(),
                             "v": g["q"].sum(), "n": g.size()})
    assert [r[0] for r in rows] == list(expected.index)
    for row, (_, e) in zip(rows, expected.iterrows(), strict=True):
        assert [float(x) for x in row[1:5]] == [e.o, e.h, e.l, e.c]
        assert float(row[5]) == pytest.approx(e.v, rel=1e-12) and row[8] == e.n
