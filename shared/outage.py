"""Redis outages, told once: one warning when Redis goes away and one when it is back, per service.

Every loop of a service that talks to Redis (its consumer, discovery, housekeeping, heartbeat) reports to the
service's one ``Outage`` (``Bus.outage``): ``lost(exc, where)`` after a connection error, ``ok()`` after a command
that worked. Only the transitions are logged, so a 30 s outage gives two lines, not a traceback per loop and second.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator

from redis import exceptions as redis_errors

from shared import metrics

logger = logging.getLogger(__name__)

#: What "Redis is unreachable" looks like from redis-py: retried quietly, never a traceback.
REDIS_DOWN: tuple[type[BaseException], ...] = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def redis_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "Redis is not there right now" (retry later), not "this command is wrong": Redis
    unreachable (``REDIS_DOWN``), or a node that cannot take writes yet (a read-only replica during a failover, a
    node loading its data, a cluster slot moving)."""
    if isinstance(exc, (*REDIS_DOWN, redis_errors.ReadOnlyError)):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).split(" ", 1)[0] in ("LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")
    return False


@contextlib.contextmanager
def suppress_unavailable() -> Iterator[None]:
    """``contextlib.suppress`` of what ``redis_unavailable`` names (a loop that tries again next round, e.g. a lease
    balance); any other error propagates."""
    try:
        yield
    except Exception as exc:
        if not redis_unavailable(exc):
            raise


def backoff_delay(attempt: int, *, base: float = 0.1, cap: float = 10.0) -> float:
    """Capped exponential backoff with full jitter: a random delay in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class Outage:
    """Whether Redis is reachable for one service, as its loops last found it.

    A connection error within ``settle_s`` after Redis came back (a pooled connection opened before the outage, used
    for the first time since) is the tail of the same outage: it is retried without another pair of lines."""

    def __init__(self, service: str, *, settle_s: float = 5.0) -> None:
        self.service = service
        self.settle_s = settle_s
        self.down_since: float | None = None
        self.outages = 0  # how many times Redis went away while this service ran
        self._back_at = float("-inf")
        self._quiet = False  # down again right after coming back: not told

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def lost(self, exc: BaseException, where: str) -> None:
        """A loop (``where``) could not reach Redis: warn if it was up until now; otherwise only a debug line."""
        now = time.monotonic()
        metrics.REDIS_ERRORS.labels(self.service).inc()
        if self.down_since is None:
            self.down_since = now
            if now - self._back_at < self.settle_s:
                self._quiet = True
                logger.debug("%s: Redis connection error right after recovery in %s: %s", self.service, where, exc)
                return
            self.outages += 1
            logger.warning("%s: Redis is unreachable (%s: %s, in %s); retrying quietly until it is back",
                           self.service, type(exc).__name__, exc, where)
        else:
            logger.debug("%s: Redis still unreachable in %s: %s", self.service, where, exc)

    def ok(self) -> None:
        """A command reached Redis: if it was down, say once that it is back and for how long it was gone."""
        since = self.down_since
        if since is not None:
            self.down_since = None
            now = time.monotonic()
            if not self._quiet:
                self._back_at = now
                logger.warning("%s: Redis is back after %.1f s", self.service, now - since)
            self._quiet = False
