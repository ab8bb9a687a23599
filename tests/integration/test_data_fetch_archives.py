"""``sentinel data fetch binance``: Binance's public-data archives, served offline by a local HTTP server.

The server (aiohttp's static files: real Range support) holds the data.binance.vision layout, built here from the
real recordings in ../shared/data: daily spot zips of BTCUSDT split by UTC day, a USD-M futures zip (with its
header), a monthly zip of XRPETH, one corrupted zip whose CHECKSUM fails, and a missing day. The command runs as a
user runs it (a subprocess); its CSVs are compared with the recordings read independently by pandas.
"""

from __future__ import annotations

import asyncio
import os
import hashlib
import io
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web

from shared.recordings import guess_symbol, read_trades
from tests.conftest import REPO, shared_data

SENTINEL = [sys.executable, "-m", "sentinel.cli"]
SPOT = "binance_spot_btcusdt/BTCUSDT-trades-2024-08-08-binance-layout.csv"
XRP = "binance_spot_xrpeth/XRPETH-aggtrades-2019-10-11.csv"
COLUMNS = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]


def _day_rows(day: str) -> bytes:
    """The recording's raw lines of one UTC day, unchanged (independent of sentinel's code: by pandas' day)."""
    lines = shared_data(SPOT).read_bytes().splitlines(keepends=True)
    times = pd.to_datetime([int(line.split(b",")[4]) for line in lines], unit="ms", utc=True)
    return b"".join(line for line, t in zip(lines, times) if t.strftime("%Y-%m-%d") == day)


def _publish(root: Path, rel: str, csv_bytes: bytes, *, corrupt: bool = False) -> bytes:
    """Write ``rel`` (a .zip holding one CSV of the same name) and ``rel.CHECKSUM``; return the zip's bytes."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.name.replace(".zip", ".csv"), csv_bytes)
    data = buf.getvalue()
    (path.parent / (path.name + ".CHECKSUM")).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    if corrupt:  # one byte flipped in the middle, after the checksum was taken
        mid = len(data) // 2
        data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
    path.write_bytes(data)
    return data


class ArchiveServer:
    """aiohttp serving a folder, in its own thread; records every request's path and Range header."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        @web.middleware
        async def log(request: web.Request, handler):
            self.requests.append((request.path, request.headers.get("Range")))
            return await handler(request)

        app = web.Application(middlewares=[log])
        app.router.add_static("/", self.root)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> str:
        self.thread.start()
        self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def zips(self) -> list[tuple[str, str | None]]:
        return [(p, r) for p, r in self.requests if p.endswith(".zip")]


SPOT_DIR = "data/spot/daily/trades/BTCUSDT"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveServer, str, dict[str, bytes]]]:
    root = tmp_path_factory.mktemp("binance-vision")
    zips = {day: _publish(root, f"{SPOT_DIR}/BTCUSDT-trades-{day}.zip", _day_rows(day))
            for day in ("2024-08-08", "2024-08-09")}
    # 2024-08-07: published, but the zip on the server no longer matches its checksum; 2024-08-10: not published.
    _publish(root, f"{SPOT_DIR}/BTCUSDT-trades-2024-08-07.zip", _day_rows("2024-08-08")[:5000], corrupt=True)
    # USD-M futures: same layout under data/futures/um, with a header row (as Binance's futures files have).
    _publish(root, "data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2024-08-09.zip",
             b"id,price,qty,quote_qty,time,is_buyer_maker\n"
             + b"".join(b",".join(line.split(b",")[:6]) + b"\n" for line in _day_rows("2024-08-09").splitlines()))
    # A monthly zip: October 2019 of XRPETH (the recording's one day of it, turned into Binance's layout).
    xrp = pd.read_csv(shared_data(XRP), dtype=str)
    rows = "".join(f"{r.id},{r.price},{r.amount},0,{r.timestamp},{'true' if r.side == 'sell' else 'false'},true\n"
                   for r in xrp.itertuples())
    _publish(root, "data/spot/monthly/trades/XRPETH/XRPETH-trades-2019-10.zip", rows.encode())
    server = ArchiveServer(root)
    base = server.start()
    yield server, base, zips
    server.stop()


def _fetch(base: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SENTINEL, "data", "fetch", "binance", *args, "--dir", str(out), "--base-url", base],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def _pandas_day(day: str) -> pd.DataFrame:
    df = pd.read_csv(shared_data(SPOT), header=None, names=COLUMNS, dtype=str)
    df = df[pd.to_datetime(df["time"].astype("int64"), unit="ms", utc=True).dt.strftime("%Y-%m-%d") == day]
    return df.reset_index(drop=True)


def test_days_are_downloaded_verified_and_unzipped_a_corrupted_and_a_missing_day_named(archive, tmp_path):
    server, base, _ = archive
    server.requests.clear()
    result = _fetch(base, tmp_path, "BTCUSDT", "--from", "2024-08-07", "--to", "2024-08-10")
    assert result.returncode == 1, result.stderr  # incomplete: said, and visible to scripts
    assert "Traceback" not in result.stderr
    err = " ".join(result.stderr.split())
    assert "BTCUSDT-trades-2024-08-07.zip: SHA-256" in err and "does not match the published" in err
    assert "run the command again" in err
    assert "missing: BTCUSDT 2024-08-10: no archive published" in err and "answered 404" in err
    out = tmp_path / "binance"
    assert sorted(p.name for p in out.iterdir()) == ["BTCUSDT-trades-2024-08-08.csv", "BTCUSDT-trades-2024-08-09.csv"]
    for day in ("2024-08-08", "2024-08-09"):
        got = pd.read_csv(out / f"BTCUSDT-trades-{day}.csv", header=None, names=COLUMNS, dtype=str)
        expected = _pandas_day(day)
        assert len(got) > 9000 and got.equals(expected)
        # sentinel's own reader (what `sentinel backtest` uses) reads it, the symbol from the name
        trades = list(read_trades(out / f"BTCUSDT-trades-{day}.csv"))
        assert [t.id for t in trades] == [int(x) for x in expected["id"]]
        assert guess_symbol(out / f"BTCUSDT-trades-{day}.csv") == "BTC/USDT"
    # the corrupted archive was fetched once (a fresh download that fails is reported, not retried), nothing kept
    assert [p for p, _ in server.zips()].count(f"/{SPOT_DIR}/BTCUSDT-trades-2024-08-07.zip") == 1
    assert not list((tmp_path / "archives").rglob("*2024-08-07.zip*"))


def test_a_partial_archive_resumes_with_a_range_request_and_a_verified_day_is_not_fetched_again(archive, tmp_path):
    server, base, zips = archive
    partial = tmp_path / "archives" / SPOT_DIR / "BTCUSDT-trades-2024-08-09.zip.part"
    partial.parent.mkdir(parents=True)
    half = len(zips["2024-08-09"]) // 2
    partial.write_bytes(zips["2024-08-09"][:half])
    # a partial file whose bytes are wrong: resumed, fails the checksum, fetched again from the start
    bad = tmp_path / "archives" / SPOT_DIR / "BTCUSDT-trades-2024-08-08.zip.part"
    bad.write_bytes(b"\0" * 1000)
    server.requests.clear()
    result = _fetch(base, tmp_path, "BTCUSDT", "--from", "2024-08-08", "--to", "2024-08-09", "--keep-archives")
    assert result.returncode == 0, result.stderr
    got = server.zips()
    assert (f"/{SPOT_DIR}/BTCUSDT-trades-2024-08-09.zip", f"bytes={half}-") in got
    assert got.count((f"/{SPOT_DIR}/BTCUSDT-trades-2024-08-08.zip", "bytes=1000-")) == 1
    assert got.count((f"/{SPOT_DIR}/BTCUSDT-trades-2024-08-08.zip", None)) == 1
    for day in ("2024-08-08", "2024-08-09"):
        kept = tmp_path / "archives" / SPOT_DIR / f"BTCUSDT-trades-{day}.zip"
        assert kept.read_bytes() == zips[day]
        csv = pd.read_csv(tmp_path / "binance" / f"BTCUSDT-trades-{day}.csv", header=None, names=COLUMNS, dtype=str)
        assert csv.equals(_pandas_day(day))
    # again: every day is on disk, nothing is downloaded
    server.requests.clear()
    again = _fetch(base, tmp_path, "BTCUSDT", "--from", "2024-08-08", "--to", "2024-08-09")
    assert again.returncode == 0, again.stderr
    assert server.requests == []
    assert "2 day(s) already there" in again.stderr


def test_usdm_futures_and_a_monthly_archive_split_by_day(archive, tmp_path):
    _, base, _ = archive
    fut = _fetch(base, tmp_path, "BTCUSDT", "--market", "usdm", "--from", "2024-08-09", "--to", "2024-08-09")
    assert fut.returncode == 0, fut.stderr
    path = tmp_path / "binance-usdm" / "BTCUSDT-trades-2024-08-09.csv"
    assert path.read_text().startswith("id,price,qty,quote_qty,time,is_buyer_maker\n")
    assert [t.id for t in read_trades(path)] == [int(x) for x in _pandas_day("2024-08-09")["id"]]

    month = _fetch(base, tmp_path, "XRPETH", "--from", "2019-10-01", "--to", "2019-10-31")
    assert month.returncode == 0, month.stderr
    files = sorted(p.name for p in (tmp_path / "binance").glob("XRPETH-*"))
    assert files == ["XRPETH-trades-2019-10-11.csv"]  # the month's only day with trades
    trades = list(read_trades(tmp_path / "binance" / files[0]))
    xrp = pd.read_csv(shared_data(XRP), dtype=str)
    assert [(t.id, t.ts, str(t.price), t.is_buy) for t in trades] == [
        (int(r.id), int(r.timestamp), r.price, r.side == "buy") for r in xrp.itertuples()]
    # the month is not fetched again for its 30 days without trades
    again = _fetch(base, tmp_path, "XRPETH", "--from", "2019-10-01", "--to", "2019-10-31")
    assert again.returncode == 0 and "1 day(s) already there" in again.stderr, again.stderr


def test_a_symbol_with_no_archive_at_all_and_no_network_are_one_line_errors(archive, tmp_path):
    _, base, _ = archive
    unknown = _fetch(base, tmp_path, "NOPEUSDT", "--from", "2024-08-08", "--to", "2024-08-09")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    err = " ".join(unknown.stderr.split())
    assert "NOPEUSDT: Binance spot publishes no trade archive for it from 2024-08-08 to 2024-08-09" in err
    assert "check the symbol" in err and "missing:" not in err
    offline = _fetch("http://127.0.0.1:9", tmp_path, "BTCUSDT", "--from", "2024-08-08", "--to", "2024-08-08")
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    err = " ".join(offline.stderr.split())
    assert "error: cannot reach http://127.0.0.1:9/data/spot/daily/trades/BTCUSDT/" in err
    assert "check the network connection" in err
