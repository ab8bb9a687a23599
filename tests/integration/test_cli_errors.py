"""What a user sees when something is wrong, and what `up` says it runs: real subprocesses, stderr read as a person
would. No traceback for a user's mistake (`--debug` shows it); every config problem in one run."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from shared.embedded_redis import free_port
from tests.conftest import REPO, shared_data
from tests.integration.test_cli import SENTINEL, _env

SAMPLE_RULES = REPO / "services" / "alert_engine" / "sample_rules.yaml"


def sentinel(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SENTINEL, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) <= 8, result.stderr  # a few lines, not a page


def test_config_mistakes_are_listed_together_in_one_run(tmp_path):
    config = tmp_path / "sentinel.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nmarket_feed:\n  mode: simulated\n  speedy: 2\n"
                      "notifier:\n  consle: true\nalert_engine:\n  rules_file: rules.yaml\n  clok: wall\n")
    result = sentinel("up", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    no_traceback(result)
    for line, field in ((4, "market_feed.speedy"), (6, "notifier.consle"), (9, "alert_engine.clok")):
        assert f"{config}:{line}: {field} — unknown field" in result.stderr, result.stderr


def test_a_config_without_market_feed_is_refused_naming_the_section(tmp_path):
    config = tmp_path / "sentinel.yaml"
    config.write_text("alert_engine:\n  rules_file: rules.yaml\n")
    result = sentinel("up", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {config}: no market_feed section")
    no_traceback(result)
    labelled = tmp_path / "binance.yaml"
    labelled.write_text("market_feed:\n  mode: simulated\n  exchange: binance\n")
    result = sentinel("up", "--config", str(labelled), cwd=tmp_path)
    assert result.returncode == 2 and "market_feed.exchange — 'binance' labels simulated prices" in result.stderr


def test_bad_recordings_end_in_one_line_and_debug_shows_the_traceback(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    args = ("backtest", str(empty), "--rules", str(SAMPLE_RULES), "--out", str(tmp_path / "out"))
    result = sentinel(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {empty}: cannot tell the symbol from the file name; give it with --symbol")
    no_traceback(result)
    debug = sentinel(*args, "--debug", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    unwritable = sentinel("backtest", str(empty), "--rules", str(SAMPLE_RULES), "--out", "/proc/sentinel-out",
                          cwd=tmp_path)
    assert unwritable.returncode != 0
    no_traceback(unwritable)


def test_a_busy_api_port_says_what_to_do(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = sentinel("up", cwd=tmp_path, SENTINEL_API_PORT=str(port), SENTINEL_DATA_DIR=str(tmp_path / "d"))
    assert result.returncode == 2, result.stderr[-2000:]
    no_traceback(result)
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: the API could not start on 127.0.0.1:{port}: Address already in use; "
                     "another program listens there (another `sentinel up` or `sentinel api`?): stop it, or choose "
                     "another port with api.port in the settings file or SENTINEL_API_PORT (0 = any free port)"]


def _banner(proc: subprocess.Popen, until: str, timeout: float = 60) -> str:
    """stdout of `sentinel up` up to the line containing ``until``."""
    out = ""
    deadline = time.monotonic() + timeout
    while until not in out:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {until!r} in: {out}{proc.stderr.read()[-2000:]}")
        out += line
    return out


def test_up_says_what_it_runs_and_where_the_dashboard_is(tmp_path):
    recording = shared_data("kraken_btcusd/XBTUSD-trades-20190701T00-01.csv")
    runs = {
        "simulated": (None, r"sentinel up — simulated market: BTC/USDT, ETH/USDT on exchange 'sim' \(real time, "
                            r"until stopped\) — not real prices"),
        "replay": (f"market_feed:\n  mode: replay\n  replay_file: {recording}\n  exchange: kraken\n"
                   "  symbol: BTC/USD\n  speed: 10\n",
                   rf"sentinel up — replay of {re.escape(str(recording))} as kraken BTC/USD \(10× real time\)"),
    }
    for name, (config_text, first_line) in runs.items():
        port = free_port()
        args = ["up"]
        if config_text:
            config = tmp_path / f"{name}.yaml"
            config.write_text(config_text)
            args += ["--config", str(config)]
        proc = subprocess.Popen([*SENTINEL, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_env(SENTINEL_API_PORT=str(port), COLUMNS="200",
                                                    SENTINEL_DATA_DIR=str(tmp_path / name)))
        try:
            out = _banner(proc, "Ctrl-C stops")
            assert re.search(first_line, out), out
            assert f"dashboard  http://127.0.0.1:{port}\n" in out
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200  # the URL printed works
            assert ("no settings file" in out) == (config_text is None)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_gui_without_a_display_says_so_instead_of_aborting(tmp_path):
    env = {"DISPLAY": "", "WAYLAND_DISPLAY": ""}
    result = sentinel("gui", "--series", "kraken|BTC/USD|5m", "--redis-url", "redis://127.0.0.1:1/0", cwd=tmp_path,
                      **env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: sentinel gui needs a display")
    no_traceback(result)


def test_an_unreachable_redis_names_itself_and_what_to_check(tmp_path):
    result = sentinel("watch", "--redis-url", "redis://127.0.0.1:1/0", "--duration", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Redis: Error 111 connecting to 127.0.0.1:1")
    assert "REDIS_URL" in result.stderr
    no_traceback(result)
