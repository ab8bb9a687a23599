"""Per-channel body templates, as TradingView's webhook alerts have them: the user writes the body, with
``{{placeholders}}``; a body that is JSON after substitution is sent as ``application/json``, any other as text.

::

    notifier:
      channels:
        desk_bot:
          url: json://hooks.example.com/tv
          body: '{"ticker": "{{ticker}}", "price": {{close}}, "text": "{{rule}}: {{message}}"}'

A placeholder inside a JSON string is escaped for it (a message with quotes stays valid JSON); one outside a string
becomes a JSON value: a number for prices (``{{close}}`` → ``61000.5``), a quoted string for text, ``null`` when the
alert has no value. Numbers are exact, without trailing zeros. Pure logic: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.errors import ConfigError
from shared.fmt import plain
from shared.schemas import Alert


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Placeholder → the alert's value. TradingView's names (ticker, interval, close, time, timenow) beside sentinel's.
FIELDS: dict[str, Callable[[Alert], Any]] = {
    "id": lambda a: a.id, "rule": lambda a: a.rule, "exchange": lambda a: a.exchange,
    "symbol": lambda a: a.symbol, "ticker": lambda a: a.symbol.replace("/", ""),
    "timeframe": lambda a: a.timeframe, "interval": lambda a: a.timeframe,
    "price": lambda a: a.price, "close": lambda a: a.price, "value": lambda a: a.value,
    "condition": lambda a: a.condition, "message": lambda a: a.message, "severity": lambda a: a.severity,
    "state": lambda a: a.state, "ts": lambda a: a.ts, "fired_at": lambda a: a.fired_at,
    "time": lambda a: _iso(a.ts), "timenow": lambda a: _iso(a.fired_at),
}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_.\-]+)?)\s*\}\}")


def _lookup(alert: Alert, name: str) -> Any:
    if name.startswith("labels."):
        return alert.labels.get(name[len("labels."):])
    return FIELDS[name](alert)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        return plain(value)
    return str(value)


def _json_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        return plain(value)
    return json.dumps(str(value), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A compiled body template (``compile_body`` checks it); ``render(alert)`` gives (body, is_json)."""

    text: str
    json: bool  # the template is meant as JSON (starts with { or [): placeholders are escaped for where they stand

    def render(self, alert: Alert) -> tuple[str, bool]:
        if not self.json:
            return _PLACEHOLDER.sub(lambda m: _text(_lookup(alert, m.group(1))), self.text), False
        out: list[str] = []
        in_string = escaped = False
        pos = 0
        text = self.text
        while pos < len(text):
            match = _PLACEHOLDER.match(text, pos)
            if match:
                value = _lookup(alert, match.group(1))
                out.append(json.dumps(_text(value), ensure_ascii=False)[1:-1] if in_string else _json_value(value))
                pos = match.end()
                continue
            char = text[pos]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            out.append(char)
            pos += 1
        return "".join(out), True


def compile_body(text: str, channel: str) -> BodyTemplate:
    """Check a channel's body template: known placeholders, and JSON that stays valid for any alert.
    ConfigError naming ``notifier.channels.<channel>.body`` and the problem."""
    where = f"notifier.channels.{channel}.body"
    unknown = sorted({name for name in _PLACEHOLDER.findall(text)
                      if name not in FIELDS and not name.startswith("labels.")})
    if unknown:
        raise ConfigError(f"{where} — unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)}; known: "
                          + ", ".join("{{" + f + "}}" for f in FIELDS) + ", {{labels.NAME}}")
    start = text.lstrip()
    template = BodyTemplate(text, start[:1] == "[" or (start[:1] == "{" and not start.startswith("{{")))
    if template.json:
        for sample in _SAMPLES:
            body, _ = template.render(sample)
            try:
                json.loads(body)
            except ValueError as exc:
                raise ConfigError(f"{where} — not valid JSON once filled in ({exc.msg} at character {exc.pos} of "
                                  f"{body[:200]!r}); quote text placeholders, leave numeric ones bare") from None
    return template


# Alerts a template is tried with: every field set (quotes and backslashes in text), and every optional field empty.
_SAMPLES = (
    Alert(id="sample", rule="sample_rule", exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=0, fired_at=60_000,
          price=Decimal("61000.5"), value=Decimal("-1.25"), condition='close > "x"', message='say "hi" \\ bye',
          labels={"desk": "a\"b"}),
    Alert(id="sample", rule="r", exchange="e", symbol="S", ts=0, fired_at=0),
)
