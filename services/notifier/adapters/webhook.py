"""Generic JSON webhook (``json://host[:port]/path``, ``jsons://`` for https), sent with aiohttp.

Apprise's ``json://`` hides the HTTP status and Retry-After, so this target speaks HTTP itself to classify every
outcome honestly: 2xx done; 429 and 503 retried after Retry-After when given; other 5xx, timeouts and connection
errors retried with backoff; other 4xx permanent. The body is the JSON document of ``core.render("json", ...)``
(every alert field), or the channel's own body template (``templates.py``; JSON is sent as application/json, other
text as text/plain, one alert per request). An ``Idempotency-Key`` header (stable per group of alerts and target) lets receivers that
honour it close the notifier's remaining duplicate window.

Apprise URL options kept: user:password (basic auth), ``?+Header=value`` adds a header; other ``?`` options ignored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp

from services.notifier import core
from services.notifier.core import Format, Message
from services.notifier.templates import BodyTemplate
from shared.errors import ConfigError, PermanentNotifyError
from shared.schemas import Alert


class WebhookTarget:
    format: Format = "json"
    remote = True

    def __init__(self, name: str, url: str, *, timeout: float = 10.0, body: BodyTemplate | None = None) -> None:
        self.name = name
        self.body = body
        self.max_group: int | None = None
        self.shown_url = core.redact_url(url)
        self.scheme = scheme = core.scheme_of(url)
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"notifier.channels.{name}: invalid URL {self.shown_url}: {exc}") from None
        if scheme not in ("json", "jsons") or not host:
            raise ConfigError(f"notifier.channels.{name}: expected json://host[:port]/path, got {self.shown_url}")
        http = "https" if scheme == "jsons" else "http"
        self.endpoint = f"{http}://{host}{f':{port}' if port else ''}{parts.path or '/'}"
        self.headers = {"Content-Type": "application/json", "User-Agent": "sentinel-notifier"}
        for key, value in parse_qsl(parts.query):
            if key.startswith("+"):
                self.headers[key[1:]] = value
        if parts.username:
            self.headers["Authorization"] = aiohttp.encode_basic_auth(unquote(parts.username),
                                                                      unquote(parts.password or ""))
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Message, alerts: Sequence[Alert]) -> None:
        from services.notifier.targets import RetryableSendError

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        key = hashlib.sha256(f"{self.name}|{'|'.join(a.id for a in alerts)}".encode()).hexdigest()[:32]
        payload, headers = message.body, {**self.headers, "Idempotency-Key": key}
        if self.body is not None:  # the channel's own template: one alert per message (targets.build_targets)
            payload, is_json = self.body.render(alerts[0])
            if not is_json:
                headers["Content-Type"] = "text/plain; charset=utf-8"
        try:
            async with self._session.post(self.endpoint, data=payload.encode(), headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # str(exc) can name the endpoint; only the redacted URL is shown.
            raise RetryableSendError(f"{type(exc).__name__} posting to {self.shown_url}") from None
        if 200 <= status < 300:
            return
        if core.is_permanent_status(status):
            raise PermanentNotifyError(f"HTTP {status} from {self.shown_url}")
        wait = core.parse_retry_after(retry_after, time.time()) if status in (429, 503) else None
        raise RetryableSendError(f"HTTP {status} from {self.shown_url}", retry_after=wait)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
