"""Replication before "done": a commit counts as done only once ``redis_wait_replicas`` replicas hold it.

With a master and replicas under Redis Sentinel, a write the master acknowledged may not have reached a replica when
the master dies; the replica Sentinel promotes then lacks it. For most of sentinel's writes that is harmless (the
input is still pending and is processed again), but not for what a service counts as *done* and never redoes: a
trade market_feed counted as published (it does not fetch it again), candle_builder's fenced commit (its offsets,
hence what it will not read again), alert_engine's exactly-once records (alert fired / open / cooldown) and the
notifier's ``notify_sent`` records (a lost one sends the alert again). Each of these commits calls
``Replication.wait`` once it returned, and counts the work done only when that returns.

``wait`` issues ``WAIT n timeout`` on the master. WAIT waits for the writes of *its own connection*; a pooled
client may run a commit and the WAIT on different connections, so the WAIT goes in one pipeline after a write of
its own (``SET streams.REPLICATION_MARK``): that write's replication offset is past every write the master had
acknowledged before it, the commit's included. Fewer replicas than asked within the timeout raises
``NotReplicatedError``: the commit is **not** done. It is a ``redis.exceptions.TimeoutError``, so every service's
"Redis unavailable" path takes it (one warning per outage, capped backoff) and runs the commit again, which is
idempotent in each of them (the feed's write token, the fence + offsets, alert ids, the sent record) and waits
again. So with ``redis_wait_replicas: 1`` and no replica reachable, those writers stall (and say so) until one is
back or the setting is lowered: availability traded for the guarantee, as Redis' own ``min-replicas-to-write``
does.

Not on a Redis Cluster (``redis_cluster: true``): its replication is per shard, and a WAIT there would have to name
the node of each commit's slot; settings refuse the combination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from shared import streams


class NotReplicatedError(redis_errors.TimeoutError):
    """A commit reached the master but fewer replicas than required acknowledged it in time: not done yet."""


@dataclass(frozen=True, slots=True)
class Replication:
    """How many replicas must hold a commit before it counts as done (0: the master's acknowledgement is enough),
    and how long one WAIT may take."""

    replicas: int = 0
    timeout_ms: int = 1000

    async def wait(self, redis: Any) -> None:
        """Return once ``replicas`` replicas hold every write the master acknowledged before this call;
        NotReplicatedError if fewer do within ``timeout_ms``. Nothing (no round trip) when ``replicas`` is 0."""
        if not self.replicas:
            return
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(streams.REPLICATION_MARK, b"1")  # (moves this connection's offset past the commit)
            pipe.wait(self.replicas, self.timeout_ms)
            _, acked = await pipe.execute()
        if int(acked) < self.replicas:
            raise NotReplicatedError(f"WAIT: {int(acked)} of {self.replicas} replica(s) acknowledged within "
                                     f"{self.timeout_ms} ms; the commit is not counted as done")


#: No waiting: what every ``Ownership`` and commit does unless settings ask for replicas.
NO_REPLICATION = Replication()
