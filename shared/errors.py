"""Exceptions raised by sentinel.

Hierarchy::

    SentinelError
    ├── ConfigError          settings or rules file invalid (carries every problem found)
    ├── DecodeError          a bus message that cannot be decoded (goes to the dead-letter stream)
    ├── RedisUnavailableError no redis-server binary, or the embedded one would not start
    ├── ExchangeError        an exchange adapter failed (translated from ccxt at the boundary)
    │   └── UnknownSymbolError / UnknownExchangeError
    └── NotifyError          a notification target failed
        └── PermanentNotifyError  not worth retrying (4xx other than 429)

Adapters translate library errors at the boundary: ``raise ExchangeError(...) from exc``.
"""

from __future__ import annotations


class SentinelError(Exception):
    """Base of every error sentinel raises on purpose."""


class ConfigError(SentinelError):
    """A configuration or rules file is invalid.

    ``problems`` holds one line per problem, formatted ``file:line: field.path — what was expected``.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DecodeError(SentinelError):
    """A message on the bus could not be decoded into its schema."""


class RedisUnavailableError(SentinelError):
    """No usable redis-server could be found or started."""


class ExchangeError(SentinelError):
    """An exchange call failed."""


class UnknownExchangeError(ExchangeError, ConfigError):
    """The configured exchange id is not one ccxt knows."""


class UnknownSymbolError(ExchangeError, ConfigError):
    """The configured symbol is not listed by the exchange."""


class NotifyError(SentinelError):
    """Sending a notification failed; may be retried."""


class PermanentNotifyError(NotifyError):
    """Sending a notification failed in a way retrying will not fix."""
