"""Pure logic of the notifier: routing, templates, redaction, retry decisions, token buckets.

No asyncio, no Redis, no clock: times are passed in. ``app.py`` and ``delivery.py`` wire this to the bus and the channel
adapters.

Vocabulary: a *channel* is a name in the settings (``telegram``, ``ops_hook``, built-ins ``console`` and ``jsonl``);
a *target* is one delivery destination, one per channel (one Apprise object each, so each target's outcome is known).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from shared.errors import ConfigError
from shared.fmt import plain
from shared.schemas import Alert

BUILTIN_CHANNELS = ("console", "jsonl")

Format = Literal["text", "markdown", "html", "json"]

# Apprise schemes whose message body is Markdown / HTML; json webhooks get a JSON document.
_MARKDOWN_SCHEMES = {"tgram", "discord", "slack", "matrix", "matrixs", "mmost", "mmosts", "rocket", "rockets",
                     "msteams", "zulip", "ntfy", "ntfys"}
_HTML_SCHEMES = {"mailto", "mailtos", "email"}
_JSON_SCHEMES = {"json", "jsons"}
# Schemes whose host part is not a secret (the secret, if any, is user:password or a query value).
_HOST_IS_PUBLIC = {"json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos", "ntfy", "ntfys",
                   "http", "https", "matrix", "matrixs", "mmost", "mmosts", "rocket", "rockets", "gotify", "gotifys"}


# ---- alert fields ----------------------------------------------------------------------------------------------------


def alert_record(alert: Alert) -> dict[str, Any]:
    """Every field of an alert as JSON-able values (decimals as exact strings), in schema order."""
    return alert.model_dump(mode="json")


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def console_line(alert: Alert) -> str:
    """One readable line: time, severity, rule, exchange, symbol, timeframe, price, message."""
    parts = [_utc(alert.fired_at), f"{alert.severity.upper():8}", alert.rule, alert.exchange, alert.symbol,
             alert.timeframe or "-", f"price={plain(alert.price)}"]
    if alert.state != "firing":
        parts.append(f"[{alert.state}]")
    if alert.message:
        parts.append(alert.message)
    return "  ".join(parts)


# ---- channels: URLs, secrets, kinds ----------------------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(url: str, channel: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` with the environment's value; ConfigError naming the channel and variable if unset."""
    env = os.environ if env is None else env
    missing = [name for name in _ENV_RE.findall(url) if name not in env]
    if missing:
        raise ConfigError(f"notifier.channels.{channel}: environment variable(s) {', '.join(missing)} not set")
    return _ENV_RE.sub(lambda m: env[m.group(1)], url)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def redact_url(url: str) -> str:
    """A URL safe to show: credentials, tokens in host/path and query values are hidden.

    ``json://user:pw@host:8080/hook?token=x`` → ``json://***@host:8080/***?token=***``;
    ``tgram://123:ABC/456`` → ``tgram://***``.
    """
    scheme = scheme_of(url)
    if not scheme:
        return "***"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{scheme}://***"
    if scheme not in _HOST_IS_PUBLIC or not host:
        return f"{scheme}://***"
    cred = "***@" if "@" in parts.netloc else ""
    path = "/***" if parts.path.strip("/") else ""
    query = ""
    if parts.query:
        query = "?" + "&".join(f"{kv.split('=', 1)[0]}=***" for kv in parts.query.split("&") if kv)
    return f"{scheme}://{cred}{host}{port}{path}{query}"


def format_for(channel: str, url: str | None) -> Format:
    """Template family of a channel: Markdown for chat apps, HTML for email, JSON for webhooks, else text."""
    if url is None:
        return "json" if channel == "jsonl" else "text"
    scheme = scheme_of(url)
    if scheme in _JSON_SCHEMES:
        return "json"
    if scheme in _HTML_SCHEMES:
        return "html"
    if scheme in _MARKDOWN_SCHEMES:
        return "markdown"
    return "text"


# ---- templates -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """What a target sends: a title and a body in ``format`` (for json, ``body`` is the JSON document)."""

    title: str
    body: str
    format: Format


# The characters that change meaning in every Markdown flavour we feed (Telegram's legacy Markdown, Discord, Slack);
# escaping more (".", "-", "(") would show backslashes on Telegram.
_MD_SPECIAL = re.compile(r"([_*\[\]`\\])")


def _md(text: object) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _title(alerts: Sequence[Alert]) -> str:
    if len(alerts) == 1:
        a = alerts[0]
        tf = f" {a.timeframe}" if a.timeframe else ""
        resolved = " resolved" if a.state == "resolved" else ""
        return f"[{a.severity.upper()}] {a.rule}{resolved}: {a.symbol}{tf} @ {plain(a.price)}"
    worst = max(alerts, key=lambda a: ("info", "warning", "critical").index(a.severity)).severity
    symbols = sorted({a.symbol for a in alerts})
    shown = ", ".join(symbols[:5]) + (f" +{len(symbols) - 5}" if len(symbols) > 5 else "")
    return f"[{worst.upper()}] {len(alerts)} alerts: {shown}"


def render(fmt: Format, alerts: Sequence[Alert]) -> Message:
    """Render one message for a group of alerts (one or more) in a channel's format."""
    if not alerts:
        raise ValueError("render needs at least one alert")
    title = _title(alerts)
    if fmt == "json":
        doc = {"title": title, "count": len(alerts), "alerts": [alert_record(a) for a in alerts]}
        return Message(title, json.dumps(doc, separators=(",", ":")), "json")
    if fmt == "markdown":
        lines = []  # the title travels separately (Apprise shows it in bold)
        for a in alerts:
            tf = f" {_md(a.timeframe)}" if a.timeframe else ""
            lines.append(f"• *{_md(a.rule)}* {_md(a.exchange)} `{a.symbol}`{tf} price `{plain(a.price)}` "
                         f"{_md(a.severity)} {_md(_utc(a.fired_at))}" + (f" — {_md(a.message)}" if a.message else ""))
        return Message(title, "\n".join(lines), "markdown")
    if fmt == "html":
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                _utc(a.fired_at), a.severity, a.rule, a.exchange, a.symbol, a.timeframe or "-",
                plain(a.price), a.message)) + "</tr>"
            for a in alerts)
        body = (f"<h3>{html.escape(title)}</h3><table border=\"1\" cellpadding=\"4\"><tr><th>time</th><th>severity"
                f"</th><th>rule</th><th>exchange</th><th>symbol</th><th>timeframe</th><th>price</th><th>message</th>"
                f"</tr>{rows}</table>")
        return Message(title, body, "html")
    return Message(title, "\n".join(console_line(a) for a in alerts), "text")


# ---- routing ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    channels: tuple[str, ...]
    severity: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, alert: Alert) -> bool:
        if self.severity and alert.severity not in self.severity:
            return False
        return all(alert.labels.get(k) == v for k, v in self.labels)


def route(alert: Alert, routes: Iterable[Route], default: Sequence[str], always: Sequence[str] = ()) -> list[str]:
    """Channels an alert goes to: the rule's own ``channels`` if it names any, else every matching route's, else
    ``default``; plus ``always`` (the audit channels every alert reaches). Order kept, duplicates removed. Unknown
    names are returned too (the app dead-letters them)."""
    if alert.channels:
        return list(dict.fromkeys([*alert.channels, *always]))
    chosen: list[str] = []
    for r in routes:
        if r.matches(alert):
            chosen.extend(r.channels)
    return list(dict.fromkeys([*(chosen or default), *always]))


# ---- delivery decisions ----------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date; ``now`` is epoch seconds)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True, slots=True)
class Decision:
    """After a failed attempt: ``retry`` after ``delay`` seconds, or give up (dead letter) with ``reason``."""

    retry: bool
    delay: float
    reason: str


def after_failure(*, attempt: int, max_attempts: int, permanent: bool, retry_after: float | None, reason: str,
                  base: float, cap: float, retry_after_cap: float, jitter: float) -> Decision:
    """Decide what follows failed attempt number ``attempt`` (1-based). ``jitter`` is a random number in [0, 1).

    Permanent errors are not retried. A Retry-After (429/503) is honoured up to ``retry_after_cap``; otherwise the
    delay is capped exponential backoff with full jitter: ``jitter * min(cap, base * 2**(attempt-1))``.
    """
    if permanent:
        return Decision(False, 0.0, f"permanent: {reason}")
    if attempt >= max_attempts:
        return Decision(False, 0.0, f"gave up after {attempt} attempts: {reason}")
    if retry_after is not None:
        return Decision(True, min(retry_after, retry_after_cap), reason)
    return Decision(True, jitter * min(cap, base * 2 ** min(attempt - 1, 30)), reason)


def is_permanent_status(status: int) -> bool:
    """4xx other than 408 (timeout), 425 (too early) and 429 (rate limited) will not succeed on retry."""
    return 400 <= status < 500 and status not in (408, 425, 429)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored. ``take(now)`` returns how long to wait (0 = go now)."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated: float | None = None

    def take(self, now: float) -> float:
        """Reserve one token; the wait is how long until it exists (the reservation is made either way)."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def hold(self, now: float, seconds: float) -> None:
        """The target asked us to wait (Retry-After): the next token exists no earlier than ``now + seconds``."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens = min(self.tokens, 1.0 - seconds * self.rate)
