"""Delivering a group of alerts to one target and recording the outcome (``Delivery``), for the notifier's per-target
workers (``services.notifier.app``).

A group is formed from the head of a target's lane: alerts already recorded as delivered are skipped, the rest (up to
``max_group``) are sent as one message (console/JSONL: one line per alert), respecting the target's token bucket,
retrying transient failures with capped exponential backoff and jitter (a 429 waits Retry-After), never retrying
permanent ones. A group that succeeds gets one record per (alert id, target) (``streams.notify_sent``, value
``done``); one given up goes to ``streams.NOTIFY_DEAD_LETTER`` with the reason, in the same MULTI/EXEC as its records
(value ``dead``).

Idempotency and the one duplicate window: the record is written after the target confirmed. A notifier killed (or
its Redis write lost) after the target took the message and before the record landed sends it again when the alert
is re-read (its own pending on restart, or claimed by another replica after ``claim_idle_ms``). That window is the
send itself plus one Redis round trip: an HTTP server usually processes a request even when the client died while
waiting for the answer, so a kill at any moment of an in-flight send can yield one duplicate of that one group
(per target; one group is in flight per target). So a SIGKILL repeats a message with probability ≈ the share of
time a send is in flight; ``bench/chaos_notifier.py`` (receiver taking 10 ms, kills at random moments of a 60-alert
burst, one alert per message) measured 16 raw repeats in 60 kills (0.27 per kill), 0 lost; with ``max_group=5``,
0 in 18 kills. SIGTERM never repeats
(in-flight sends finish within the grace period). It is closed where the receiver cooperates:
- JSON webhooks carry ``Idempotency-Key`` (a hash of target and the group's alert ids: stable across retries and
  restarts; a group's ids are written before it is sent, so the group in flight at a crash re-forms with the same
  alerts even when new ones have come, ``_planned``) and every alert's deterministic ``id`` in the body, so a
  receiver that dedups on either sees exactly once;
- the JSONL file: the restarted target reads the ids in its file's tail and skips those (and drops a torn last line);
- console lines and Apprise services (Telegram, e-mail, …) have no such hook: a kill mid-send can repeat one message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.notifier import core
from services.notifier.settings import Settings
from services.notifier.targets import RetryableSendError, Target
from shared import metrics, streams
from shared.bus import backoff_delay
from shared.errors import NotifyError, PermanentNotifyError
from shared.logs import redact
from shared.outage import REDIS_DOWN
from shared.schemas import Alert

logger = logging.getLogger(__name__)

DONE = b"done"
DEAD = b"dead"
HISTORY_MAXLEN = 10_000


class Stopping(Exception):
    """Stop was requested while waiting to retry: leave the alerts pending for the next run."""


class Delivery:
    """Sends groups of alerts to targets (``settle``, ``send_group``) and records them (``record``), counting what it
    delivered, skipped (recorded before) and dead-lettered. A wait before a retry ends with ``Stopping`` once ``stop``
    is set."""

    def __init__(self, settings: Settings, redis: Redis, targets: dict[str, Target], stop: asyncio.Event) -> None:
        self.settings = settings
        self.redis = redis
        self.stop = stop
        self.buckets = {name: core.TokenBucket(settings.rate_overrides.get(name, settings.rate_per_s), settings.burst)
                        for name, t in targets.items() if t.remote}
        # one bucket per service (scheme) shared by its targets, e.g. Telegram's ~30 messages/s per bot
        self.scheme_buckets = {scheme: core.TokenBucket(rate, max(1, int(rate)))
                               for scheme, rate in settings.scheme_rates.items()
                               if any(getattr(t, "scheme", None) == scheme for t in targets.values())}
        self.delivered = 0  # (alert, target) pairs sent
        self.skipped = 0  # (alert, target) pairs already recorded
        self.dead = 0  # (alert, target) pairs dead-lettered

    async def settle(self, target: Target, head: list[Alert], size: int) -> int:
        """Deliver (or dead-letter) the first ``size`` alerts of ``head`` not yet recorded for ``target`` as one
        group, and record them. Returns how many alerts of ``head`` are settled: those alerts and the
        already-recorded ones before them.

        Groups are formed from unrecorded alerts only, in the order of the merged alerts log (the lane's order,
        ``app._in_log_order``), so after a crash the group that was in flight re-forms with the same alerts (and the
        same Idempotency-Key) unless new alerts have joined it, whatever order the partitions' pending entries come
        back in.
        """
        keys = [streams.notify_sent(alert.id, target.name) for alert in head]
        # (on a Redis Cluster the records are in many slots: read one slot at a time)
        states = await (self.redis.mget_nonatomic(keys) if isinstance(self.redis, RedisCluster) else
                        self.redis.mget(keys))
        grouped = target.remote and size > 1  # (a group of one has a stable key: nothing to plan)
        planned = None
        if grouped:
            unrecorded = list(dict.fromkeys(alert.id for alert, state in zip(head, states) if state is None))
            planned = await self._planned(target.name, unrecorded, size)
            if planned is not None:
                size = len(planned)
        todo: dict[str, Alert] = {}
        settled = 0
        for alert, state in zip(head, states):
            if state is None and alert.id not in todo:
                if len(todo) == size:
                    break
                todo[alert.id] = alert
            elif state is not None:
                self.skipped += 1
            settled += 1
        if todo:
            group = list(todo.values())
            if grouped and planned != list(todo):  # (a group re-formed as planned is planned already)
                await self.redis.set(streams.notify_group(group[0].id, target.name), " ".join(todo),
                                     ex=self.settings.sent_ttl_s)
            state, attempts, reason = await self.send_group(target, group)
            await self._record_once_redis_is_back(target.name, group, state, attempts, reason)
        return settled

    async def _planned(self, target: str, unrecorded: list[str], size: int) -> list[str] | None:
        """The alert ids of the group planned before a crash, if ``unrecorded`` (the ids not recorded yet for
        ``target``, in log order) start with it and it holds at most ``size``.

        A group's ids are written (``streams.notify_group``, by its first alert) before it is sent. A notifier
        killed during the send re-reads those alerts, and more may have come meanwhile: the group would re-form
        bigger, under another Idempotency-Key, and a receiver honouring the key would take its first alerts twice.
        So the first unrecorded alert's plan, when the unrecorded alerts begin with exactly its ids, sets the group
        again. (Split between two replicas by a claim, the plan's alerts are not all here: a new group then.)"""
        if not unrecorded:
            return None
        raw = await self.redis.get(streams.notify_group(unrecorded[0], target))
        ids = raw.decode().split() if raw else []
        return ids if ids and len(ids) <= size and unrecorded[:len(ids)] == ids else None

    async def _record_once_redis_is_back(self, target: str, group: Sequence[Alert], state: bytes, attempts: int,
                                         reason: str) -> None:
        """``record`` a group already sent, retried while Redis is unavailable: going back to ``settle`` would send
        it again, and under another Idempotency-Key if alerts have joined it meanwhile. Only a stop (or a crash)
        leaves it unrecorded: the group that re-forms then is the crash window the JSONL target's tail check and
        the key cover."""
        failures = 0
        while True:
            try:
                await self.record(target, group, state, attempts, reason)
                return
            except REDIS_DOWN as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                logger.warning("notifier: %s: sent %d alert(s), recording them waits for Redis (%s); retrying in "
                               "%.1fs", target, len(group), exc, delay)
                await self._wait(delay)

    async def send_group(self, target: Target, group: Sequence[Alert]) -> tuple[bytes, int, str]:
        """Send one message with the retry policy; returns (DONE | DEAD, attempts, reason)."""
        s = self.settings
        message = core.render(target.format, group)
        bucket = self.buckets.get(target.name)
        shared_bucket = self.scheme_buckets.get(getattr(target, "scheme", ""))
        attempt = 0
        while True:
            attempt += 1
            if bucket is not None:
                await self._wait(bucket.take(time.monotonic()))
            if shared_bucket is not None:
                await self._wait(shared_bucket.take(time.monotonic()))
            permanent, retry_after = False, None
            try:
                await asyncio.wait_for(target.send(message, group), timeout=s.timeout_s + 1)
            except PermanentNotifyError as exc:
                permanent, reason = True, str(exc)
            except RetryableSendError as exc:
                retry_after, reason = exc.retry_after, str(exc)
            except NotifyError as exc:
                reason = str(exc)
            except (TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__} sending to {target.shown_url}"
            else:
                return DONE, attempt, "ok"
            reason = redact(reason)
            decision = core.after_failure(attempt=attempt, max_attempts=s.max_attempts, permanent=permanent,
                                          retry_after=retry_after, reason=reason, base=s.backoff_base_s,
                                          cap=s.backoff_cap_s, retry_after_cap=s.retry_after_cap_s,
                                          jitter=random.random())
            if not decision.retry:
                logger.warning("notifier: %s: dead-lettering %d alert(s): %s", target.name, len(group),
                               decision.reason)
                return DEAD, attempt, decision.reason
            logger.info("notifier: %s: attempt %d failed (%s); retrying in %.2fs", target.name, attempt, reason,
                        decision.delay)
            if retry_after is not None and bucket is not None:
                bucket.hold(time.monotonic(), decision.delay)
            await self._wait(decision.delay)

    async def _wait(self, seconds: float) -> None:
        if seconds > 0 and await sleep_or_stop(self.stop, seconds):
            raise Stopping()

    async def record(self, target: str, group: Sequence[Alert], state: bytes, attempts: int, reason: str) -> None:
        """Delivery records (and dead letters) for a group, plus the recent-deliveries log: in one MULTI/EXEC (on a
        Redis Cluster one after the other, the records last)."""
        now = int(time.time() * 1000)
        commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        if state == DEAD:
            commands += [("xadd", (streams.NOTIFY_DEAD_LETTER, {
                b"alert_id": alert.id, b"target": target, b"reason": reason[:2000], b"attempts": attempts, b"ts": now,
                b"d": alert.encode()}), {"maxlen": HISTORY_MAXLEN, "approximate": True}) for alert in group]
        commands.append(("xadd", (streams.NOTIFY_DELIVERIES, {
            b"target": target, b"alert_ids": ",".join(a.id for a in group)[:4000], b"count": len(group),
            b"status": "delivered" if state == DONE else "dead", b"attempts": attempts, b"reason": reason[:500],
            b"ts": now}), {"maxlen": HISTORY_MAXLEN, "approximate": True}))
        commands += [("set", (streams.notify_sent(alert.id, target), state), {"ex": self.settings.sent_ttl_s})
                     for alert in group]
        if isinstance(self.redis, RedisCluster):
            # the records, the dead letters and the log live in different slots: no MULTI there. The records go
            # last, so a crash in between leaves the group unrecorded (sent again, as the crash window above)
            # rather than recorded without its dead letters.
            for name, args, options in commands:
                await getattr(self.redis, name)(*args, **options)
        else:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, args, options in commands:
                    getattr(pipe, name)(*args, **options)
                await pipe.execute()
        await self.settings.durability.wait(self.redis)  # the records on redis_wait_replicas replicas before "sent"
        metrics.count_delivery(target, group, state == DONE, attempts)
        if state == DONE:
            self.delivered += len(group)
        else:
            self.dead += len(group)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False
