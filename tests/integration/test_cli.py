"""The ``sentinel`` command as a user runs it: real subprocesses, embedded Redis, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.embedded_redis import free_port
from tests.conftest import REPO

SENTINEL = [sys.executable, "-m", "sentinel.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_") and k != "REDIS_URL"}
    env.update(extra)
    return env


def test_demo_direct_prints_candles_and_alerts(tmp_path):
    result = subprocess.run([*SENTINEL, "demo", "--direct", "--minutes", "45", "--data-dir", str(tmp_path)], cwd=REPO,
                            env=_env(COLUMNS="120"), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "candles made" in out
    rows = re.findall(r"sim\s+│\s+(BTC/USDT|ETH/USDT)\s+│\s+(1m|5m|15m|1h)\s+│\s+(\d+)", out)
    counts = {(sym, tf): int(n) for sym, tf, n in rows}
    assert counts[("BTC/USDT", "1m")] == 45 and counts[("ETH/USDT", "5m")] == 9
    fired = int(re.search(r"alerts fired: (\d+)", out).group(1))
    assert fired > 0
    # The notifier wrote every alert once to the JSONL file in the data directory.
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == fired
    # The embedded Redis kept an append-only file there and is gone now.
    assert list((tmp_path / "redis").glob("appendonly*"))


def test_demo_default_runs_the_live_path_through_ccxt_pro(tmp_path):
    result = subprocess.run([*SENTINEL, "demo", "--minutes", "12", "--data-dir", str(tmp_path)], cwd=REPO,
                            env=_env(COLUMNS="120"), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ccxt.pro" in result.stdout
    # the finite market's end is no news: no reconnect warnings after the last trade
    assert "reconnecting" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    rows = re.findall(r"sim\s+│\s+(BTC/USDT|ETH/USDT)\s+│\s+1m\s+│\s+(\d+)", result.stdout)
    assert {sym for sym, _ in rows} == {"BTC/USDT", "ETH/USDT"}
    assert all(12 <= int(n) <= 13 for _, n in rows), rows  # 12 simulated minutes, not aligned to the minute
    # simulated data never carries a real exchange id, though the local exchange speaks Binance's protocols
    table = re.findall(r"^\s*(\S+)\s+│\s+\S+\s+│\s+\d+[smhd]\s+│\s+\d+\s+│\s+\d\d-\d\d ", result.stdout, re.M)
    printed = re.findall(r"^\S+ \S+Z\s+[A-Z]+\s+\S+\s+(\S+)\s+\S+\s+\S+\s+price=", result.stdout, re.M)
    assert len(table) == 8 and printed, result.stdout  # 2 symbols × 4 timeframes; the console notifier's alerts
    assert all(ex.startswith("sim") for ex in table + printed), (table, printed)
    assert not re.search(r"\bbinance", result.stdout), result.stdout
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert alerts and all(a["exchange"].startswith("sim") for a in alerts), {a["exchange"] for a in alerts}
    trades = int(re.search(r"([\d,]+) trades in", result.stdout).group(1).replace(",", ""))
    assert trades > 1000


def test_backtest_refuses_a_bad_rules_file_naming_file_line_and_field(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: x\n    timeframe: 7m\n    condition: {left: close, op: above, right: 1}\n")
    trades = tmp_path / "t.csv"
    trades.write_text("timestamp,price,amount,side,id\n1000,1.0,1.0,buy,1\n")
    result = subprocess.run([*SENTINEL, "backtest", str(trades), "--rules", str(rules), "--out", str(tmp_path / "o"),
                             "--symbol", "BTC/USDT"], cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert re.search(rf"{re.escape(str(rules))}:3: rules\[0\]\.timeframe", result.stdout + result.stderr)


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl-c-to-the-process-group"])
def test_up_serves_the_api_on_an_embedded_redis_and_stops_cleanly_on_sigterm(tmp_path, ctrl_c):
    """SIGTERM, or a terminal's Ctrl-C (SIGINT to the whole foreground process group, the embedded redis-server
    included): the services stop on a Redis that is still there, then the Redis goes, exit 0."""
    port = free_port()
    config = tmp_path / "sentinel.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n"
                      "market_feed:\n  mode: simulated\n  exchange: sim\n  speed: 120\n  sim_duration_s: null\n"
                      f"api:\n  port: {port}\n")
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*SENTINEL, "up", "--config", str(config)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True, start_new_session=True)
    try:
        candles = _wait_for_candles(port, proc, log)
        assert candles and all(c["closed"] for c in candles)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status_code == 200, health.text  # every service of `up` is beating
        assert health.json()["redis"] == "ok" and health.json()["problems"] == []
        redis_port = int(re.search(r"embedded redis-server at redis://127.0.0.1:(\d+)", log.read_text()).group(1))
        # Tools find that Redis without REDIS_URL, through the data directory.
        from sentinel.client import embedded_redis_url
        assert embedded_redis_url(str(tmp_path / "data")) == f"redis://127.0.0.1:{redis_port}/0"
        if ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert "unreachable" not in log.read_text(), log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):  # the embedded redis-server went down with it
        socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
    assert list((tmp_path / "data" / "redis").glob("appendonly*"))
    assert embedded_redis_url(str(tmp_path / "data")) is None


def _wait_for_candles(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sentinel up exited early: {log.read_text()[-3000:]}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/candles/sim/BTC-USDT/1m", timeout=2)
            if response.status_code == 200 and response.json()["candles"]:
                return response.json()["candles"]
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail("no candles served by the API in time")


def test_every_settings_problem_is_listed_in_one_run_with_unknown_environment_variables(redis_url, tmp_path):
    """A typo'd ``SENTINEL_*`` variable is reported like an unknown key (with the nearest real name), and a bad
    environment value, a bad file value and an unknown file key all come out of ONE run, each with where it is."""
    config = tmp_path / "sentinel.yaml"
    config.write_text("log_levl: INFO\ncandle_builder:\n  block_ms: -5\n")
    result = subprocess.run([*SENTINEL, "candle-builder", "--config", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=60,
                            env=_env(REDIS_URL=redis_url, SENTINEL_API_TOKN="secret", SENTINEL_READ_COUNT="many",
                                     SENTINEL_TIMEFRAMES="1m"))
    assert result.returncode != 0
    err = result.stderr
    assert "Traceback" not in err, err
    assert "SENTINEL_API_TOKN — unknown setting" in err and "did you mean SENTINEL_API_TOKEN?" in err, err
    assert "environment SENTINEL_READ_COUNT: read_count" in err, err
    assert "environment SENTINEL_TIMEFRAMES: timeframes" in err, err
    assert f"{config}:3: candle_builder.block_ms" in err, err
    assert f"{config}:1: log_levl — unknown field" in err, err
