"""The services as separate processes (``sentinel <service> --config FILE``), started, SIGKILLed and restarted by the
chaos harness; redis-server and ``sentinel exchange-sim`` beside them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.chaos.layout import Pair

REPO = Path(__file__).resolve().parents[3]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without its ``SENTINEL_*`` variables (a service refuses ones it does not know),
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def sentinel_argv(*args: str) -> list[str]:
    """``sentinel ARGS`` as this interpreter runs it (the installed console script calls the same ``main``)."""
    return [sys.executable, "-m", "sentinel.cli", *args]


@dataclass
class Service:
    """One process of a service (a replica), restartable. ``finite``: a replaying market_feed, which exits 0 when
    its recording is published; it is not restarted after that."""

    kind: str  # market_feed | candle_builder | alert_engine | notifier
    name: str  # unique in the run, e.g. "market_feed[binance BTC/USDT]#0"
    argv: list[str]
    env: dict[str, str]
    log: Path
    finite: bool = False
    pair: Pair | None = None  # a market_feed's pair
    live: bool = False  # a market_feed in live mode
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    started_at: float = 0.0  # time.monotonic() of the last start
    kills: int = 0
    crashes: list[dict] = field(default_factory=list)  # exits nobody asked for, other than a finite one's rc 0
    finished: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        with open(self.log, "ab") as err:
            err.write(f"---- start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=str(REPO), env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=err)
        self.starts += 1
        self.started_at = time.monotonic()

    async def kill(self) -> bool:
        """SIGKILL, as a crash would; False when it was not running (it had finished or died)."""
        if not self.running:
            return False
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1
        return True

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def check_exit(self) -> bool:
        """Called by the supervisor: True when the process has exited by itself. A finite service's rc 0 marks it
        finished; anything else is a crash (recorded with the log's tail) and the caller restarts it."""
        if self.proc is None or self.proc.returncode is None:
            return False
        rc = self.proc.returncode
        self.proc = None
        if self.finite and rc == 0:
            self.finished = True
        else:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            self.crashes.append({"rc": rc, "at": time.time(), "log_tail": tail})
        return True


async def supervise(services: list[Service], stop: asyncio.Event, paused: set[str], every: float = 0.2) -> None:
    """Restart a service that exited by itself (a crash) until ``stop``; ``paused`` names services being killed on
    purpose right now (their restart is the chaos schedule's business)."""
    while not stop.is_set():
        for svc in services:
            if svc.name not in paused and svc.check_exit() and not svc.finished:
                await svc.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def stop_all(services: list[Service], stop_supervisor: asyncio.Event) -> None:
    """The end of a run: no more restarts, then every service stopped (one that fails to stop does not keep the
    others running)."""
    stop_supervisor.set()
    for svc in services:
        with contextlib.suppress(Exception):
            await svc.stop()


def process_counts(services: list[Service]) -> dict[str, dict[str, int]]:
    """Per service: how often it was started, killed on purpose, and how often it crashed (for a run's report)."""
    return {s.name: {"starts": s.starts, "kills": s.kills, "crashes": len(s.crashes)} for s in services}
