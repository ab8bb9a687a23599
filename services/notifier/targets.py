"""Delivery targets: the built-in console and JSONL file, and the factory that builds every configured target.

A target delivers one group of alerts (already rendered into a ``Message`` in its format) or raises:
``RetryableSendError`` (may carry ``retry_after``), ``PermanentNotifyError`` (not retried), anything else is treated
as transient. Remote targets live in ``adapters/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from services.notifier import core
from services.notifier.core import Format, Message
from services.notifier.settings import ChannelSettings, Settings
from services.notifier.templates import compile_body
from shared.errors import ConfigError, NotifyError
from shared.schemas import Alert


class RetryableSendError(NotifyError):
    """A transient failure; ``retry_after`` (seconds) when the target said how long to wait."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Target(Protocol):
    name: str
    format: Format
    remote: bool  # rate-limited and grouped; local targets write one line per alert
    shown_url: str  # redacted
    scheme: str  # URL scheme, keys the service-wide token bucket
    max_group: int | None  # most alerts in one message (1: each alone); None = the notifier's max_group

    async def send(self, message: Message, alerts: Sequence[Alert]) -> None: ...

    async def close(self) -> None: ...


class ConsoleTarget:
    """One readable line per alert on stdout."""

    format: Format = "text"
    remote = False
    max_group: int | None = None
    shown_url = "console"
    scheme = "console"

    def __init__(self, name: str = "console") -> None:
        self.name = name

    async def send(self, message: Message, alerts: Sequence[Alert]) -> None:
        sys.stdout.write("".join(core.console_line(a) + "\n" for a in alerts))
        sys.stdout.flush()

    async def close(self) -> None:
        return None


class JsonlTarget:
    """One JSON object per alert per line, appended, flushed and fsynced before the send counts as done.

    A notifier killed between the fsync and its Redis record would write those lines again; so the first send after
    start reads the ids in the file's last ``TAIL_BYTES`` and skips alerts already there. That closes the duplicate
    window for this target (the lines of a crash are always at the end of the file).
    """

    format: Format = "json"
    remote = False
    max_group: int | None = None
    scheme = "file"
    TAIL_BYTES = 256 * 1024

    def __init__(self, path: Path, name: str = "jsonl") -> None:
        self.name = name
        self.path = Path(path)
        self.shown_url = f"file://{self.path}"
        self._tail_ids: set[str] | None = None

    def _read_tail_ids(self) -> set[str]:
        try:
            with open(self.path, "rb+") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                start = max(0, size - self.TAIL_BYTES)
                fh.seek(start)
                data = fh.read()
                if data and not data.endswith(b"\n"):  # torn write of a crash (never fsynced whole): drop it
                    keep = start + data.rfind(b"\n") + 1
                    fh.truncate(keep)
                    data = data[:keep - start]
                lines = data.splitlines()
        except FileNotFoundError:
            return set()
        if size > self.TAIL_BYTES and lines:
            lines = lines[1:]  # probably cut in the middle
        ids = set()
        for line in lines:
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue
        return ids

    def _append(self, alerts: Sequence[Alert]) -> None:
        if self._tail_ids is None:
            self._tail_ids = self._read_tail_ids()
        fresh = [a for a in alerts if a.id not in self._tail_ids]
        if self._tail_ids:
            self._tail_ids = set()  # only the crash tail matters; later sends are guarded by the Redis records
        if not fresh:
            return
        text = "".join(json.dumps(core.alert_record(a), separators=(",", ":")) + "\n" for a in fresh)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    async def send(self, message: Message, alerts: Sequence[Alert]) -> None:
        await asyncio.to_thread(self._append, alerts)

    async def close(self) -> None:
        return None


def build_targets(settings: Settings, env: dict[str, str] | None = None) -> dict[str, Target]:
    """Every enabled target by channel name. Every URL is expanded and validated now; all problems are reported
    together in one ConfigError naming each channel (URLs redacted)."""
    from services.notifier.adapters.apprise_target import AppriseTarget
    from services.notifier.adapters.webhook import WebhookTarget

    targets: dict[str, Target] = {}
    if settings.console:
        targets["console"] = ConsoleTarget()
    if settings.jsonl_path is not None:
        targets["jsonl"] = JsonlTarget(settings.jsonl_path)
    problems: list[str] = []
    for name, raw in settings.channels.items():
        if name in core.BUILTIN_CHANNELS:
            problems.append(f"notifier.channels.{name}: '{name}' is a built-in channel; choose another name")
            continue
        channel = raw if isinstance(raw, ChannelSettings) else ChannelSettings(url=raw)
        try:
            body = compile_body(channel.body, name) if channel.body is not None else None
            url = core.expand_env(channel.url, name, env)
            if core.scheme_of(url) in ("json", "jsons"):
                target: Target = WebhookTarget(name, url, timeout=settings.timeout_s, body=body)
            else:
                target = AppriseTarget(name, url, body=body)
            # a body template is written for one alert, as TradingView sends them
            target.max_group = 1 if channel.alone or body is not None else None
            targets[name] = target
        except ConfigError as exc:
            problems.extend(exc.problems)
    known = set(targets) | set(core.BUILTIN_CHANNELS)
    for i, r in enumerate(settings.routes):
        for ch in r.channels:
            if ch not in known:
                problems.append(f"notifier.routes.{i}.channels: unknown channel {ch!r}")
    for key in ("default_channels", "always_channels"):
        for ch in getattr(settings, key):
            if ch not in known:
                problems.append(f"notifier.{key}: unknown channel {ch!r}")
    if problems:
        raise ConfigError(problems)
    return targets
