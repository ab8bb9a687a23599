"""One way to run a service: signals set a stop event, work drains within a grace period, Redis is closed.

A service's ``app.run(settings, stop)`` consumes until ``stop`` is set and returns. ``run_service`` gives it
``grace`` seconds after SIGTERM/SIGINT, then cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from shared import metrics, redisconn, streams
from shared.partitioned import check_partitions
from shared.embedded_redis import EmbeddedRedis
from shared.outage import REDIS_DOWN, Outage, backoff_delay

logger = logging.getLogger(__name__)


def connect(url: str, *, cluster: bool = False) -> Any:
    """A redis-py asyncio client for ``url`` (one server, a Redis Cluster node with ``cluster``, or a
    ``redis+sentinel://`` master): ``shared.redisconn.connect``."""
    return redisconn.connect(url, cluster=cluster)


def consumer_name(service: str, configured: str | None = None) -> str:
    """This instance's name in consumer groups: ``configured``, else ``<service>-<hostname>``. Stable across restarts
    (under compose a container keeps its hostname), so a restarted instance re-reads its own pending entries at once
    instead of waiting for another to claim them; replicas on other hosts (or containers) get their own."""
    return configured or f"{service}-{socket.gethostname()}"


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None, data_dir: Path) -> Any:
    """Yield ``url``, or start an embedded redis-server (AOF in ``data_dir/redis``) and yield its URL."""
    if url:
        yield url
        return
    with EmbeddedRedis(Path(data_dir) / "redis", persist=True) as server:
        logger.warning("REDIS_URL is not set: started an embedded redis-server at %s", server.url)
        yield server.url


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run_service(name: str, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], *,
                      grace: float = 10.0, stop: asyncio.Event | None = None) -> None:
    """Run ``main(stop)`` until it returns or a signal sets ``stop``; then allow ``grace`` seconds and cancel."""
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    task = asyncio.create_task(main(stop), name=name)
    stopper = asyncio.create_task(stop.wait(), name=f"{name}-stop")
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            logger.info("%s: stopping (grace %.0fs)", name, grace)
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=grace)
            except TimeoutError:
                logger.warning("%s: did not stop within %.0fs; cancelling", name, grace)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        else:
            task.result()
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper


async def heartbeat(redis: Redis, service: str, stop: asyncio.Event,
                    status: Callable[[], dict[str, Any]] | None = None, every: float = 2.0,
                    outage: Outage | None = None,
                    beat: Callable[[], Awaitable[None]] | None = None) -> None:
    """Write the service's heartbeat hash every ``every`` seconds (``ts`` in ms plus ``status()`` fields); then
    ``beat()`` (what else lives as long as this instance: its subscriptions). Redis errors go to ``outage``."""
    key = streams.heartbeat(service)
    me = asyncio.current_task()
    # redis-py can swallow a cancellation that lands inside a command; stop on a pending cancel as well.
    while not stop.is_set() and not (me is not None and me.cancelling()):
        fields: dict[Any, Any] = {"ts": int(time.time() * 1000), "pid": os.getpid(), "host": socket.gethostname()}
        if status:
            fields.update({k: str(v) for k, v in status().items()})
        try:
            await redis.hset(key, mapping=fields)
            await redis.pexpire(key, int(every * 5000))
            await metrics.beat(redis, service)
            if beat is not None:
                await beat()
            if outage is not None:
                outage.ok()
        except REDIS_DOWN as exc:
            if outage is not None:
                outage.lost(exc, "heartbeat")
        except Exception as exc:  # heartbeats must never kill a service
            logger.warning("heartbeat of %s failed: %s", service, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


@contextlib.asynccontextmanager
async def tasks_until_done(*coros: Awaitable[None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start tasks, keep references, and on exit cancel whatever is still running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_STARTING: tuple[type[BaseException], ...] = (*REDIS_DOWN, redis_errors.BusyLoadingError)


async def wait_for_redis(name: str, redis: Any, partitions: int, stop: asyncio.Event) -> bool:
    """Before a service starts: wait (capped backoff, one warning) until Redis answers, then check the partition
    count (ConfigError if it differs). A service started while Redis is down or loading waits instead of exiting.
    False if ``stop`` was set meanwhile."""
    outage = Outage(name)
    attempt = 0
    while not stop.is_set():
        try:
            await check_partitions(redis, partitions)
            outage.ok()
            return True
        except _STARTING as exc:
            outage.lost(exc, "start-up")
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff_delay(attempt, base=0.1, cap=5.0))
    return False


def service_main(name: str, settings_cls: Any, app_cls: Any, config_file: str | None = None, *,
                 extra_grace: float = 0.0) -> None:
    """What ``sentinel <service>`` runs: load settings, log, connect (embedded Redis without REDIS_URL), run until
    SIGTERM/SIGINT with the service's ``shutdown_grace_s`` (default 10 s) for in-flight work, close Redis."""
    from shared.logs import setup_logging

    settings = settings_cls.load(config_file)
    setup_logging(settings.log_level)
    grace = getattr(settings, "shutdown_grace_s", 10.0) + extra_grace
    metrics.serve(settings)

    async def serve(url: str) -> None:
        redis = connect(url, cluster=settings.redis_cluster)
        app = app_cls(settings, redis)

        async def main(stop: asyncio.Event) -> None:
            if await wait_for_redis(name, redis, settings.partitions, stop):
                await app.run(stop)

        try:
            await run_service(name, main, grace=grace)
        finally:
            await redis.aclose()

    with redis_url_or_embedded(settings.redis_url, settings.data_dir) as url:
        asyncio.run(serve(url))
