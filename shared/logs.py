"""Logging set-up shared by every service and the CLI."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

_SECRET_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<cred>[^@/\s]+)@", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide credentials in URLs (``scheme://user:pass@host`` → ``scheme://***@host``)."""
    return _SECRET_RE.sub(lambda m: f"{m.group('scheme')}***@", text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str) and "://" in record.msg:
            record.msg = redact(record.msg)
        return True


def setup_logging(level: str = "INFO") -> None:
    """Plain timestamped lines on stderr; URL credentials redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncio", "websockets", "uvicorn.access", "httpx", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class LineBudget:
    """At most ``lines`` log lines per ``window_s`` seconds for a stream of like events (an alert each): past that,
    the events are counted, and the first event of the next window logs first how many were left out. A whole market
    fires hundreds of alerts a second at a bar boundary; the log stays readable and the alerts stream holds them all.

    ``if budget.allow(): logger.info(...)``."""

    def __init__(self, logger: logging.Logger, what: str, *, lines: int = 20, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.what = logger, what
        self.lines, self.window_s, self.clock = lines, window_s, clock
        self.started = clock()
        self.used = 0
        self.left_out = 0

    def allow(self) -> bool:
        """Whether this event may log its line (it is counted otherwise)."""
        now = self.clock()
        if now - self.started >= self.window_s:
            if self.left_out:
                self.logger.info("%d more %s in %.0f s not logged (at most %d lines per %.0f s)", self.left_out,
                                 self.what, now - self.started, self.lines, self.window_s)
            self.started, self.used, self.left_out = now, 0, 0
        if self.used < self.lines:
            self.used += 1
            return True
        self.left_out += 1
        return False
