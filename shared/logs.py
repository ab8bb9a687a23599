"""Logging set-up shared by every service and the CLI."""

from __future__ import annotations

import logging
import re

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
