"""Settings: pydantic-settings, from the environment and an optional YAML file, unknown keys rejected.

One YAML file configures every service: common keys (``redis_url``, ``log_level``, ...) at the top level and one
section per service::

    redis_url: redis://127.0.0.1:6379/0
    market_feed:
      mode: replay
    alert_engine:
      rules_file: rules.yaml

Each service's ``Settings`` subclasses ``ServiceSettings`` and names its ``section``. Sources, strongest first:
arguments, environment (``SENTINEL_<FIELD>``, nested with ``__``; ``REDIS_URL`` too), the YAML file
(``SENTINEL_CONFIG`` or ``config_file=``), defaults. Errors name the file, line and field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.errors import ConfigError
from shared.yamlfile import describe_errors, line_of, load_yaml_file

CONFIG_ENV = "SENTINEL_CONFIG"
#: The top-level sections a settings file may have, one per service.
SECTIONS = ("market_feed", "candle_builder", "alert_engine", "notifier", "api", "exchange_sim")


class ServiceSettings(BaseSettings):
    """Knobs every service has. Subclasses add their own and set ``section``."""

    model_config = SettingsConfigDict(env_prefix="SENTINEL_", env_nested_delimiter="__", extra="forbid",
                                      populate_by_name=True)
    section: ClassVar[str] = ""

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("redis_url", "REDIS_URL", "SENTINEL_REDIS_URL"),
        description="Redis to use; unset = start an embedded redis-server (see README).",
    )
    data_dir: Path = Field(default=Path(".sentinel"), description="Where the embedded Redis keeps its AOF.")
    log_level: str = "INFO"
    consumer_name: str | None = Field(default=None, description="Consumer name in stream groups (default: host-pid).")
    cpu_affinity: list[int] | None = Field(
        default=None, description="CPUs the service's process may run on (Linux), e.g. [1] to give alert_engine a "
        "core of its own: at a bar boundary every service wakes at once, and one that shares its core waits for the "
        "others (bench_alerts, 2 cores, 5k trades/s: candle-close alerts p50 1.6 -> 1.3 ms, p99 2.9 -> 1.9 ms). For a "
        "service run as its own process (`sentinel <service>`); unset: any CPU.")
    realtime_priority: int | None = Field(
        default=None, ge=1, le=99, description="Run the service's process under Linux's SCHED_FIFO real-time policy "
        "at this priority (1-99), so that at a bar boundary it runs the moment its read returns instead of queueing "
        "behind the other services' CPU time (bench_alerts, 2 cores, 5k trades/s, alert_engine at 10: candle-close "
        "alerts p50 5.3 -> 4.0 ms, p99 14.9 -> 6.8 ms on a noisy day). Needs root or CAP_SYS_NICE (Docker: "
        "cap_add: [SYS_NICE]); the kernel still leaves other tasks 5% of each CPU (sched_rt_runtime_us). For a "
        "service run as its own process; unset: the normal policy.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _YamlSection(settings_cls), file_secret_settings

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any):
        """Build settings; ConfigError listing every problem as ``file:line: field — expected``."""
        path = config_file or os.environ.get(CONFIG_ENV)
        token = _CURRENT_FILE.set(Path(path) if path else None)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_problems(cls, exc, path)) from exc
        finally:
            _CURRENT_FILE.reset(token)


# The file being loaded is passed to the source through a context variable, so Settings() stays the normal API.
import contextvars  # noqa: E402

_CURRENT_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("sentinel_config_file", default=None)


def _problems(cls: type[ServiceSettings], exc: ValidationError, path: str | Path | None) -> list[str]:
    """Locate each error in the file: a service's own keys live under its section."""
    if not path:
        return describe_errors(exc, "settings (environment)", {})
    _, lines = load_yaml_file(path)
    common = set(ServiceSettings.model_fields)

    def prefix_for(loc: tuple) -> tuple:
        first = loc[0] if loc else ""
        return (cls.section,) if cls.section and first not in common and (cls.section, first) in lines else ()

    return describe_errors(exc, str(path), lines, prefix=prefix_for)


class _YamlSection(PydanticBaseSettingsSource):
    """Reads the common keys and the service's own section of the YAML settings file."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = _CURRENT_FILE.get()

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC, unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        data, lines = load_yaml_file(self.path)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}:1: (top level) — expected a mapping of settings")
        section = getattr(self.settings_cls, "section", "")
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == section:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"{self.path}:{line_of(lines, (key,))}: {key} — expected a mapping")
                out.update(value)
            elif key not in SECTIONS:  # common keys, and typos that extra="forbid" will report with their line
                out[key] = value
        return out
