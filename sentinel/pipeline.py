"""Run sentinel's services in one process on one event loop (``sentinel up``, ``demo``, ``backtest``).

Each service is its ``*App(settings, redis)`` with ``run(stop)``, exactly what ``sentinel <service>`` runs alone, so
the demo and backtests exercise the same code paths as production. ``wait_drained`` tells when a finite source (a
recording, a simulation) has been processed by every consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared import streams
from shared.bus import Bus
from shared.errors import ConfigError, SentinelError
from shared.partitioned import caught_up
from shared.partitions import DEFAULT_PARTITIONS

logger = logging.getLogger(__name__)


class ServiceFailed(SentinelError):
    """A service of the pipeline stopped with an error; ``error`` is that error (its traceback is kept for --debug)."""

    def __init__(self, service: str, error: BaseException) -> None:
        # a user's mistake (a bad file, an unknown symbol) already names what is wrong: it is shown as it is
        super().__init__(str(error) if isinstance(error, SentinelError) else
                         f"{service} stopped: {type(error).__name__}: {error}")
        self.service = service
        self.error = error


@dataclass
class Pipeline:
    """A set of service apps sharing one Redis and one stop event."""

    redis: Redis
    apps: dict[str, Any] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def add(self, name: str, app: Any) -> None:
        self.apps[name] = app

    def start(self) -> None:
        for name, app in self.apps.items():
            self.tasks[name] = asyncio.create_task(app.run(self.stop), name=name)

    def failed(self) -> ServiceFailed | None:
        """The error of a service task that died, if any (raise it: the CLI shows its message, --debug the cause)."""
        for name, task in self.tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                failure = ServiceFailed(name, task.exception())
                failure.__cause__ = task.exception()
                return failure
        return None

    async def shutdown(self, grace: float = 10.0) -> None:
        self.stop.set()
        if not self.tasks:
            return
        done, pending = await asyncio.wait(self.tasks.values(), timeout=grace)
        for task in pending:
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for name, task in self.tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                # the caller raises it (Pipeline.failed) and the CLI shows it once; the traceback is for --debug
                logger.debug("%s ended with %r", name, task.exception())


async def builder_caught_up(redis: Redis) -> bool:
    """candle_builder (no consumer group: an offset per partition) has processed every partition's trades."""
    partitions = await redis.hget(streams.META, "partitions")
    return await caught_up(redis, int(partitions or DEFAULT_PARTITIONS), streams.GROUP_CANDLE_BUILDER,
                           streams.part_trades)


async def engine_caught_up(redis: Redis) -> bool:
    """alert_engine (an offset per partition, like candle_builder) has processed every partition's closed candles."""
    partitions = await redis.hget(streams.META, "partitions")
    return await caught_up(redis, int(partitions or DEFAULT_PARTITIONS), streams.GROUP_ALERT_ENGINE,
                           streams.part_candles)


#: Streams kept for people, not consumed by a group: no stream of work left to do.
NOT_WORK = frozenset((streams.DEAD_LETTER, streams.NOTIFY_DEAD_LETTER, streams.ALERT_HISTORY))


async def work_streams(redis: Redis) -> list[str]:
    """Every sentinel stream that consumer groups work through (``NOT_WORK`` left out), by SCAN."""
    names = [k.decode() async for k in redis.scan_iter(match=f"{streams.PREFIX}:*", _type="STREAM", count=10_000)]
    return [n for n in names if n not in NOT_WORK]


async def consumer_groups_idle(redis: Redis) -> bool:
    """True when every consumer group of every sentinel stream has consumed and acked everything, candle_builder
    has processed every partition's trades (``builder_caught_up``) and alert_engine every partition's candles
    (``engine_caught_up``)."""
    if not await builder_caught_up(redis) or not await engine_caught_up(redis):
        return False
    bus = Bus(redis)
    for name in await work_streams(redis):
        try:
            groups = await redis.xinfo_groups(name)
        except Exception:
            continue
        for g in groups:
            group = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if not await bus.caught_up(name, group):
                return False
    return True


async def wait_drained(redis: Redis, source_done: Callable[[], bool], pipeline: Pipeline | None = None, *,
                       settle: float = 1.5, poll: float = 0.1, timeout: float | None = None,
                       on_tick: Callable[[], None] | None = None) -> None:
    """Wait until ``source_done()`` and every consumer group has stayed idle for ``settle`` seconds.

    The settle time covers consumers that discover new streams by polling (a group not created yet is not lag).
    Raises ServiceFailed if a service task died, TimeoutError after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    idle_since: float | None = None
    while True:
        if on_tick:
            on_tick()
        if pipeline is not None and (failure := pipeline.failed()):
            raise failure
        now = loop.time()
        if source_done() and await consumer_groups_idle(redis):
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= settle:
                return
        else:
            idle_since = None
        if timeout is not None and now - start > timeout:
            raise TimeoutError(f"pipeline not drained after {timeout:.0f}s")
        await asyncio.sleep(poll)


#: Service name -> its app class in ``services.<name>.app``; settings are ``services.<name>.settings.Settings``.
APP_CLASSES = {"market_feed": "MarketFeedApp", "candle_builder": "CandleBuilderApp",
               "alert_engine": "AlertEngineApp", "notifier": "NotifierApp", "api": "ApiApp"}


def service_classes(name: str) -> tuple[type, type]:
    """(Settings class, App class) of a service, imported on demand."""
    import importlib

    settings_cls = importlib.import_module(f"services.{name}.settings").Settings
    app_cls = getattr(importlib.import_module(f"services.{name}.app"), APP_CLASSES[name])
    return settings_cls, app_cls


def load_settings(name: str, config_file: Any, **overrides: Any) -> Any:
    """A service's settings from the file/environment, with ``overrides`` on top (only the settings module is
    imported: the backtest loads every section before the alert engine's heavy modules)."""
    import importlib

    return importlib.import_module(f"services.{name}.settings").Settings.load(config_file, **overrides)


def load_all_settings(overrides: dict[str, dict[str, Any]], config_file: Any, **common: Any) -> dict[str, Any]:
    """Each named service's settings (``common`` and its ``overrides`` on top); every problem of every section in
    one ConfigError."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, extra in overrides.items():
        try:
            out[name] = load_settings(name, config_file, **common, **extra)
        except ConfigError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    return out


@contextlib.contextmanager
def data_dir_or_temp(path: Path | None) -> Iterator[Path]:
    """``path`` (created if missing), or a temporary folder removed afterwards: where a finite run keeps its Redis."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sentinel-") as tmp:
        yield Path(tmp)


def add_service(pipeline: Pipeline, name: str, settings: Any) -> None:
    """Add the app of service ``name``, built from its ``settings``, to ``pipeline``."""
    pipeline.add(name, service_classes(name)[1](settings, pipeline.redis))
