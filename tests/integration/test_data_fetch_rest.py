"""``sentinel data fetch`` through ccxt's REST trade history, against ``sentinel exchange-sim`` replaying real
recordings: Binance's ``/api/v3/aggTrades`` (paged by ``fromId``: up to 735 trades share one millisecond in this
recording) and Kraken's ``/0/public/Trades`` (paged by time). Both run as a user runs them (subprocesses); the CSVs
are compared trade by trade with the recordings read by pandas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from shared.recordings import guess_symbol, read_trades
from shared.embedded_redis import free_port
from tests.conftest import REPO, shared_data

SENTINEL = [sys.executable, "-m", "sentinel.cli"]
BTC = "binance_spot_btcusdt/BTCUSDT-trades-20240808T2354-20240809T0005.csv"
KRAKEN = "kraken_btcusd/XBTUSD-trades-20190701T00-01.csv"
ENV = {**os.environ, "COLUMNS": "200"}


def _sim(recording: str, last_trade_url: str, last_id: int, *args: str) -> Iterator[str]:
    """``sentinel exchange-sim`` replaying ``recording`` at full speed, once it has released the last trade."""
    port = free_port()
    proc = subprocess.Popen([*SENTINEL, "exchange-sim", "--trades", str(shared_data(recording)), "--speed", "0",
                             "--port", str(port), *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while _last_id(base + last_trade_url) != last_id:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("exchange-sim did not release the recording")
        time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(10)


def _last_id(url: str) -> int | None:
    try:
        body = httpx.get(url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    if isinstance(body, list):  # Binance aggTrades
        return body[-1]["a"] if body else None
    rows = next(iter(body["result"].values()))  # Kraken: {"result": {"XXBTZUSD": [[..., id]], "last": ...}}
    return rows[-1][6] if rows else None


@pytest.fixture(scope="module")
def binance_sim() -> Iterator[str]:
    last = int(pd.read_csv(shared_data(BTC))["id"].iloc[-1])
    yield from _sim(BTC, "/api/v3/aggTrades?symbol=BTCUSDT&limit=1", last)


@pytest.fixture(scope="module")
def kraken_sim() -> Iterator[str]:
    n = len(pd.read_csv(shared_data(KRAKEN)))  # no ids in the recording: the simulator numbers them 1..n
    yield from _sim(KRAKEN, "/0/public/Trades?pair=XBTUSD&count=1", n, "--protocol", "kraken", "--symbol", "BTC/USD")


def _fetch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SENTINEL, "data", "fetch", *args], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env=ENV)


def _by_day(recording: str) -> dict[str, pd.DataFrame]:
    df = pd.read_csv(shared_data(recording), dtype={"price": str, "amount": str, "id": "Int64"})
    day = pd.to_datetime(df["timestamp"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    return {d: g.reset_index(drop=True) for d, g in df.groupby(day)}


def _trades(path: Path) -> list[tuple]:
    return [(t.ts, t.price, t.amount, t.is_buy, t.id) for t in read_trades(path)]


def _expected(df: pd.DataFrame, ids: bool = True) -> list[tuple]:
    from decimal import Decimal

    return [(int(r.timestamp), Decimal(r.price), Decimal(r.amount), r.side == "buy", int(r.id) if ids else None)
            for r in df.itertuples()]


def test_binance_rest_history_pages_by_id_through_a_735_trade_millisecond_and_resumes(binance_sim, tmp_path):
    by_day = _by_day(BTC)
    args = ["binance", "BTCUSDT", "--from", "2024-08-08", "--to", "2024-08-09", "--dir", str(tmp_path),
            "--source", "rest", "--rest-url", f"{binance_sim}/api/v3"]
    result = _fetch(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "19,904 trades" in result.stderr
    folder = tmp_path / "binance"
    for day, df in by_day.items():
        path = folder / f"BTCUSDT-trades-{day}.csv"
        assert guess_symbol(path) == "BTC/USDT"
        assert _trades(path) == _expected(df)
    # Interrupted in the middle of the millisecond holding 735 trades: the second day's file is a .part ending there
    second = folder / "BTCUSDT-trades-2024-08-09.csv"
    busiest = by_day["2024-08-09"].groupby("timestamp").size().idxmax()
    lines = second.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line.startswith(str(busiest))) + 300
    (folder / "BTCUSDT-trades-2024-08-09.csv.part").write_text("".join(lines[:cut]))
    second.unlink()
    first_mtime = (folder / "BTCUSDT-trades-2024-08-08.csv").stat().st_mtime_ns
    again = _fetch(*args)
    assert again.returncode == 0, again.stderr
    assert "1 day(s) already there" in again.stderr
    assert (folder / "BTCUSDT-trades-2024-08-08.csv").stat().st_mtime_ns == first_mtime
    assert not (folder / "BTCUSDT-trades-2024-08-09.csv.part").exists()
    assert _trades(second) == _expected(by_day["2024-08-09"])  # nothing lost, nothing twice


def test_kraken_rest_history_pages_by_time(kraken_sim, tmp_path):
    result = _fetch("kraken", "BTC/USD", "--from", "2019-07-01", "--to", "2019-07-01", "--dir", str(tmp_path),
                    "--rest-url", kraken_sim)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "kraken" / "BTCUSD-trades-2019-07-01.csv"
    assert guess_symbol(path) == "BTC/USD"
    got = _trades(path)
    expected = _expected(_by_day(KRAKEN)["2019-07-01"], ids=False)
    # the recording has no ids: the simulator numbers them 1..n, as Kraken's consecutive ids
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    assert [g[4] for g in got] == list(range(1, len(expected) + 1))


def test_errors_are_one_line_naming_the_cause(binance_sim, tmp_path):
    cases = [
        (["binanse", "BTCUSDT", "--source", "rest"], "unknown exchange 'binanse'", "did you mean binance"),
        (["binance", "DOGEUSDT", "--source", "rest", "--rest-url", f"{binance_sim}/api/v3"],
         "binance does not list 'DOGEUSDT'", ""),
        (["kraken", "BTC/USD", "--rest-url", "http://127.0.0.1:9"], "kraken unreachable", "check the network"),
        (["kraken", "BTC/USD", "--from", "2019-07-02"], "--to 2019-07-01 is before --from 2019-07-02", ""),
    ]
    for args, cause, hint in cases:
        if "--from" not in args:
            args = [*args, "--from", "2019-07-01"]
        result = _fetch(*args, "--to", "2019-07-01", "--dir", str(tmp_path))
        err = " ".join(result.stderr.split())
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and err.startswith("error: ") and cause in err and hint in err, err
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
