"""Any Apprise URL (``tgram://``, ``discord://``, ``slack://``, ``mailto://``, ``ntfy://`` …): one Apprise object
per target, so this target's outcome is known on its own.

Apprise (pinned 2.x: ``async_notify`` returns an ``AppriseResult``) does not expose the HTTP status, so a failure
here is treated as transient and retried by the app with backoff until ``max_attempts``; only a URL Apprise rejects
is permanent (and that is caught at start-up). Apprise's own retries are left at its default (none).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import apprise

# Apprise's email plugin imports the stdlib ``imghdr`` (deprecated since 3.11): import it once quietly, so the
# DeprecationWarning (an error under our test settings) is not raised from inside Apprise at the first mailto:// URL.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import imghdr  # noqa: F401
    except ImportError:  # Python >= 3.13: Apprise ships its own shim
        pass

from services.notifier import core
from services.notifier.core import Format, Message
from services.notifier.templates import BodyTemplate
from shared.errors import ConfigError
from shared.schemas import Alert

logger = logging.getLogger(__name__)

_BODY_FORMAT = {"text": apprise.NotifyFormat.TEXT, "markdown": apprise.NotifyFormat.MARKDOWN,
                "html": apprise.NotifyFormat.HTML, "json": apprise.NotifyFormat.TEXT}
_TYPE = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
         "critical": apprise.NotifyType.FAILURE}


class AppriseTarget:
    remote = True

    def __init__(self, name: str, url: str, body: BodyTemplate | None = None) -> None:
        self.name = name
        self.body = body
        self.max_group: int | None = None
        self.shown_url = core.redact_url(url)
        self.scheme = core.scheme_of(url)
        self.format: Format = core.format_for(name, url)
        self.apobj = apprise.Apprise()
        # Apprise logs the URL it rejects; keep its logger quiet while validating.
        apprise_logger = logging.getLogger("apprise")
        level = apprise_logger.level
        apprise_logger.setLevel(logging.CRITICAL)
        try:
            ok = self.apobj.add(url)
        finally:
            apprise_logger.setLevel(level)
        if not ok or len(self.apobj) != 1:
            raise ConfigError(f"notifier.channels.{name}: Apprise does not accept the URL {self.shown_url} "
                              f"(unknown scheme or missing/invalid parts)")

    async def send(self, message: Message, alerts: Sequence[Alert]) -> None:
        from services.notifier.targets import RetryableSendError

        worst = max(alerts, key=lambda a: ("info", "warning", "critical").index(a.severity)).severity
        text, body_format = message.body, _BODY_FORMAT[message.format]
        if self.body is not None:  # the channel's own template (one alert per message), sent as written
            text, body_format = self.body.render(alerts[0])[0], apprise.NotifyFormat.TEXT
        result = await self.apobj.async_notify(body=text, title=message.title, body_format=body_format,
                                               notify_type=_TYPE[worst])
        if not result:
            raise RetryableSendError(f"{self.shown_url} did not accept the message (Apprise reported failure)")

    async def close(self) -> None:
        return None
