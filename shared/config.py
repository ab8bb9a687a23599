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

import contextlib
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from shared.bus import (
    DEFAULT_MAXLEN,
    BusSettings,
    ClaimIdleMs,
    ConsumerSettings,
    DeadConsumerIdleMs,
    DeadLetterKeepBytes,
    DeadLetterMaxlen,
    MaxEntryBytes,
    SilentConsumerIdleMs,
)
from shared.durability import Replication
from shared.errors import ConfigError
from shared.runtime import consumer_name
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
    consumer_name: str | None = Field(
        default=None, description="This instance's name in consumer groups and leases. Default: <service>-<hostname>, "
        "stable across restarts (under compose the container's hostname), so a restarted instance resumes its own "
        "pending entries at once. Two instances of one service on one host need their own.")
    redis_cluster: bool = Field(
        default=False, description="redis_url names a node of a Redis Cluster (redis-py's RedisCluster finds the "
        "others). A redis+sentinel://host:port[,host:port]/master[/db] URL reaches the master Redis Sentinel names.")
    partitions: int = Field(
        default=16, ge=1, le=4096, description="Pairs are split into this many partitions, each owned by one replica "
        "of every stateful service at a time; the same for every service (the first to start records it).")
    redis_wait_replicas: int = Field(
        default=0, ge=0, le=16, description="With Redis replicas (Sentinel): a commit that makes something done (a "
        "trade published, candles committed, an alert's exactly-once records, a notification's sent record) counts "
        "only once this many replicas hold it (WAIT after the commit; fewer in time = not done, retried). 0 = the "
        "master's acknowledgement is enough (a failover can lose the last writes). Not with redis_cluster.")
    redis_wait_ms: int = Field(
        default=1000, ge=1, le=10_000, description="How long one WAIT for redis_wait_replicas may take before the "
        "commit is retried (keep it under the client's socket timeout: 2 s on a redis+sentinel:// URL).")
    lease_ttl_ms: int = Field(
        default=6000, ge=500, description="A replica's hold on a partition lasts this long unless renewed (every "
        "third of it): a killed replica's partitions move to the others within about this time.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus metrics on this port (/metrics); unset or 0 = off. "
        "The API also serves /metrics on its own port.")
    metrics_host: str = Field(default="127.0.0.1", description="Address of the metrics endpoint (0.0.0.0 in a "
                              "container, so Prometheus can reach it).")
    metrics_per_symbol: bool = Field(
        default=False, description="Label per-pair metrics with the symbol (and consumer metrics with the stream); "
        "off: `all`, so thousands of pairs do not make thousands of series.")
    # the bus's options (shared.bus, shared.consumer hold what each means)
    claim_idle_ms: ClaimIdleMs = 30_000
    dead_consumer_idle_ms: DeadConsumerIdleMs = 3_600_000
    silent_consumer_idle_ms: SilentConsumerIdleMs = 30_000
    max_entry_bytes: MaxEntryBytes = 1_000_000
    dead_letter_maxlen: DeadLetterMaxlen = 10_000
    dead_letter_keep_bytes: DeadLetterKeepBytes = 1024

    @model_validator(mode="after")
    def _wait_needs_replicas(self) -> Self:
        if self.redis_wait_replicas and self.redis_cluster:
            raise ValueError("redis_wait_replicas: not supported with redis_cluster (WAIT would have to name each "
                             "commit's node); set it to 0 or use one master with replicas under Sentinel")
        if self.redis_wait_replicas and self.redis_url is None:
            raise ValueError("redis_wait_replicas: the embedded Redis (no redis_url) has no replica, so no commit "
                             "would ever count as done; set it to 0 or name a Redis with replicas in redis_url")
        return self

    @property
    def durability(self) -> Replication:
        """What a commit waits for before it counts as done (``shared.durability``)."""
        return Replication(self.redis_wait_replicas, self.redis_wait_ms)

    def bus_settings(self, maxlen: int = DEFAULT_MAXLEN) -> BusSettings:
        """The publisher's limits from these settings."""
        return BusSettings(maxlen=maxlen, max_entry_bytes=self.max_entry_bytes,
                           dead_letter_maxlen=self.dead_letter_maxlen,
                           dead_letter_keep_bytes=self.dead_letter_keep_bytes)

    def consumer_settings(self, group: str, service: str, **options: Any) -> ConsumerSettings:
        """A consumer's settings: its group, this instance's name, the claim and pruning times set here, and
        ``options`` (count, block_ms, ...)."""
        values: dict[str, Any] = {"claim_idle_ms": self.claim_idle_ms, "service": service,
                                  "dead_consumer_idle_ms": self.dead_consumer_idle_ms,
                                  "silent_consumer_idle_ms": self.silent_consumer_idle_ms, **options}
        return ConsumerSettings(group=group, consumer=consumer_name(service, self.consumer_name), **values)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _LenientEnv(settings_cls), _YamlSection(settings_cls), file_secret_settings

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Self:
        """Build settings; ConfigError listing every problem in one go: each as ``file:line: field — expected``,
        ``environment SENTINEL_X: field — expected`` for a value from the environment, and every ``SENTINEL_*``
        variable no service reads (a typo such as ``SENTINEL_API_TOKN`` for ``SENTINEL_API_TOKEN``)."""
        path = config_file or os.environ.get(CONFIG_ENV)
        problems = unknown_environment(os.environ)
        token = _CURRENT_FILE.set(Path(path) if path else None)
        try:
            settings = cls(**overrides)
        except ValidationError as exc:
            problems += _problems(cls, exc, path)
        except ConfigError as exc:  # the file itself (unreadable, not YAML, a section that is not a mapping)
            problems += exc.problems
        finally:
            _CURRENT_FILE.reset(token)
        if problems:
            raise ConfigError(problems)
        return settings


# The file being loaded is passed to the source through a context variable, so Settings() stays the normal API.
import contextvars  # noqa: E402

_CURRENT_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("sentinel_config_file", default=None)


#: ``SENTINEL_*`` variables read outside the settings classes (the CLI, the embedded Redis, the tests).
OTHER_ENV = frozenset({CONFIG_ENV, "SENTINEL_REDIS_SERVER", "SENTINEL_SHARED_DATA", "SENTINEL_API_URL",
                       "SENTINEL_SCREENSHOTS"})


def _env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable (upper case) -> field name, for every field of ``cls``."""
    out: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        out[f"SENTINEL_{name.upper()}"] = name
        alias = info.validation_alias
        for choice in alias.choices if isinstance(alias, AliasChoices) else ():
            if isinstance(choice, str):
                out[choice.upper()] = name
    return out


def _known_env() -> set[str]:
    """Every ``SENTINEL_*`` variable some service reads. One environment often serves every service (``sentinel up``,
    a shared .env), so a variable is known when ANY service's settings have it: their modules are imported by name
    here (no service module is imported at load time otherwise)."""
    import importlib

    known = set(OTHER_ENV) | set(_env_names(ServiceSettings))
    for section in SECTIONS:
        with contextlib.suppress(ImportError):
            known |= set(_env_names(importlib.import_module(f"services.{section}.settings").Settings))
    return known


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A problem line for each ``SENTINEL_*`` environment variable no service reads, with the nearest known name."""
    known: set[str] | None = None
    problems = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith("SENTINEL_"):
            continue
        known = _known_env() if known is None else known
        if upper in known or any(upper.startswith(k + "__") for k in known):  # nested: SENTINEL_FIELD__SUB
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"environment: {key} — unknown setting (check the spelling{hint})")
    return problems


def _problems(cls: type[ServiceSettings], exc: ValidationError, path: str | Path | None) -> list[str]:
    """Locate each error: a value from the environment names its variable; one from the file its line there (a
    service's own keys live under its section)."""
    env_fields = {name: var for var, name in _env_names(cls).items()
                  if any(key.upper() == var for key in os.environ)}
    _, lines = load_yaml_file(path) if path else (None, {})
    common = set(ServiceSettings.model_fields)

    def prefix_for(loc: tuple[Any, ...]) -> tuple[Any, ...]:
        first = loc[0] if loc else ""
        return (cls.section,) if cls.section and first not in common and (cls.section, first) in lines else ()

    in_file = describe_errors(exc, str(path) if path else "settings", lines, prefix=prefix_for)
    problems = []
    for i, err in enumerate(exc.errors(include_url=False)):  # describe_errors gives one line per error, in order
        var = env_fields.get(str(err["loc"][0])) if err["loc"] else None
        problems.append(describe_errors(exc, f"environment {var}", {})[i] if var else in_file[i])
    return problems


class _LenientEnv(EnvSettingsSource):
    """The environment source, except that a value that is not valid JSON for a list/dict field is passed on as
    text: validation then reports it with every other problem (pydantic-settings would stop at the first)."""

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError:
            return value


class _YamlSection(PydanticBaseSettingsSource):
    """Reads the common keys and the service's own section of the YAML settings file."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = _CURRENT_FILE.get()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # (ABC; unused)
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
