"""market_feed's faces in the ``sentinel`` command (issue 23 points 3 and 4), as a user meets them: subprocesses,
reading what they print on stderr and what ``/health`` says.

- a bad recording given to ``backtest`` (empty, garbage, Parquet or other binary, a bad row, bytes that are not
  text half-way) ends in one line naming the file, the line where there is one, and the problem;
- ``up`` with an exchange that cannot be reached keeps running, retries it with backoff, says why in its log and in
  ``/health``, streams the exchange that can be reached, and picks the other one up once it answers;
- an unknown exchange id or symbol is one line naming it and the close matches.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.embedded_redis import free_port
from tests.conftest import REPO

SENTINEL = [sys.executable, "-m", "sentinel.cli"]
RULES = REPO / "services" / "alert_engine" / "sample_rules.yaml"
HEADER = "timestamp,price,amount,side,id\n"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_") and k != "REDIS_URL"}


def _rows(n: int, start_id: int = 1) -> str:
    return "".join(f"{1_700_000_000_000 + i * 250},{40000 + i}.5,0.01,{'buy' if i % 2 else 'sell'},{start_id + i}\n"
                    for i in range(n))


def _binary(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.randrange(256) for _ in range(n))


# name -> (file bytes, what stderr must say besides the file name)
BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty.csv": (b"", r"empty"),
    "garbage.csv": (b"hello,world\nfoo,bar\n", r":1: unrecognised trades layout"),
    "trades.parquet": (b"PAR1" + _binary(3000, 1), r"Parquet"),
    "noise.csv": (_binary(5000, 2), r"binary data|not UTF-8"),
    "bad-row.csv": ((HEADER + _rows(40) + "1700000099999,abc,0.01,buy,41\n" + _rows(5, 42)).encode(),
                    r":42: field 'price' — expected a decimal number, got 'abc'"),
    "short-row.csv": ((HEADER + _rows(3) + "1700000099999,40000.5,0.01\n").encode(), r":5: expected 5 columns"),
    "header-only.csv": (HEADER.encode(), r"no trades"),
    "half-binary.csv": ((HEADER + _rows(300)).encode() + bytes(range(128, 256)) * 20, r":302: not UTF-8 text"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_backtest_of_a_bad_recording_is_one_line_naming_file_line_and_problem(tmp_path, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    result = subprocess.run([*SENTINEL, "backtest", str(path), "--rules", str(RULES), "--out", str(tmp_path / "out"),
                             "--symbol", "BTC/USDT"], cwd=REPO, env=_env(), capture_output=True, timeout=120)
    err = result.stderr.decode("utf-8")  # (fails if the terminal would have been sent bytes that are not text)
    assert result.returncode == 2, err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) <= 3 and len(err) < 600, err[-3000:]
    assert err.isprintable() or all(line.isprintable() for line in err.splitlines()), err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}"), err
    assert re.search(expected, line), line


def _feed_config(tmp_path: Path, api_port: int, exchanges: str) -> Path:
    config = tmp_path / "sentinel.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nlog_level: INFO\n"
                      "market_feed:\n  mode: live\n  backoff_base_s: 0.2\n  backoff_cap_s: 1.0\n"
                      f"  exchanges:\n{exchanges}"
                      f"api:\n  port: {api_port}\n")
    return config


def _exchange_sim(port: int, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([*SENTINEL, "exchange-sim", "--port", str(port), "--speed", "20", *args], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for _ in range(200):
        if "websocket:" in (proc.stdout.readline() or ""):
            return proc
        if proc.poll() is not None:
            break
    pytest.fail("exchange-sim did not start")


def _health_feed(api_port: int) -> dict:
    try:
        response = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=3)
        return response.json().get("services", {}).get("market_feed", {}) or {}
    except (httpx.HTTPError, ValueError):
        return {}


def _wait(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sentinel up exited (rc {proc.returncode}) while waiting for {what}: "
                        f"{log.read_text()[-3000:]}")
        if value := check():
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def test_up_keeps_running_while_an_exchange_is_unreachable_and_picks_it_up_later(tmp_path):
    """Issue 23 point 4: binance (a local exchange-sim) streams while kraken's address refuses connections: `up`
    does not exit, its log and /health name kraken's cause and that it is retrying; once a Kraken-protocol
    exchange-sim listens there, kraken's markets load and its trades flow."""
    api_port, binance_port, kraken_port = free_port(), free_port(), free_port()
    binance = _exchange_sim(binance_port, "--symbols", "BTC/USDT")
    kraken: subprocess.Popen | None = None
    config = _feed_config(tmp_path, api_port,
                          f"    - {{id: binance, symbols: [BTC/USDT], tickers: false,"
                          f" ws_url: 'ws://127.0.0.1:{binance_port}/stream',"
                          f" rest_url: 'http://127.0.0.1:{binance_port}/api/v3'}}\n"
                          f"    - {{id: kraken, symbols: [BTC/USD], tickers: false,"
                          f" ws_url: 'ws://127.0.0.1:{kraken_port}/v2', rest_url: 'http://127.0.0.1:{kraken_port}'}}\n")
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*SENTINEL, "up", "--config", str(config)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        feed = _wait("binance trades and kraken retrying in /health", lambda: (
            (h := _health_feed(api_port)).get("kraken.state") == "retrying"
            and float(h.get("binance|BTC/USDT|trades.msgs_per_s", 0)) > 0 and h), proc, log)
        assert "connection refused" in feed["kraken.error"] and feed["binance.state"] == "up"
        assert re.search(r"kraken: cannot load markets: connection refused .*; retrying in [\d.]+s", log.read_text())
        time.sleep(6)  # `up` used to exit after 5 s
        assert proc.poll() is None, log.read_text()[-3000:]
        kraken = _exchange_sim(kraken_port, "--protocol", "kraken", "--symbols", "BTC/USD")
        feed = _wait("kraken up and its trades flowing", lambda: (
            (h := _health_feed(api_port)).get("kraken.state") == "up"
            and float(h.get("kraken|BTC/USD|trades.msgs_per_s", 0)) > 0 and h), proc, log)
        assert feed["kraken.error"] == "" and int(feed["kraken.attempts"]) >= 2
        assert re.search(r"kraken: markets loaded after \d+ attempts", log.read_text())
    finally:
        for p in (proc, binance, kraken):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.mark.parametrize("exchange, symbol, expected", [
    ("binanse", "BTC/USDT", r"^error: market_feed\.exchanges: unknown exchange id 'binanse'; did you mean binance"),
    ("binance", "BTC/USDX", r"^error: market_feed\.exchanges\[binance\]\.symbols: 'BTC/USDX' is not listed by "
                            r"binance; closest listed: BTC/USDT"),
])
def test_up_with_an_unknown_exchange_or_symbol_is_one_line_naming_it(tmp_path, exchange, symbol, expected):
    sim_port = free_port()
    sim = _exchange_sim(sim_port, "--symbols", "BTC/USDT,ETH/USDT")
    config = _feed_config(tmp_path, free_port(),
                          f"    - {{id: {exchange}, symbols: ['{symbol}'], ws_url: 'ws://127.0.0.1:{sim_port}/stream',"
                          f" rest_url: 'http://127.0.0.1:{sim_port}/api/v3'}}\n")
    try:
        result = subprocess.run([*SENTINEL, "up", "--config", str(config)], cwd=REPO, env=_env(),
                                capture_output=True, text=True, timeout=120)
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert re.search(expected, errors[0]), errors[0]
