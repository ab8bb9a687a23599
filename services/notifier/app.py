"""Notifier wiring: read every partition's ``streams.part_alerts`` (group ``notifier``), route, deliver per target, ack
when all are settled.

Reading: one consumer per partition stream (``shared.bus.Consumer``), each with its own XREADGROUP, so on a Redis
Cluster every read, claim and ack names one slot; on one Redis the reads simply run side by side. Alerts of different
partitions are independent (no order between pairs is promised); within a partition they are taken in order.

Flow: the bus hands decoded alerts to ``_take``, which routes each (``core.route``) and appends it to the lane of
every target it goes to, without acking. Each target has its own lane and worker, so a slow or failing target never
delays the others. A worker waits for the grouping window (``group_window_s``, from the oldest alert in its lane;
remote targets only), takes up to ``max_group`` alerts, skips those already recorded as delivered, and sends the
rest as one message (console/JSONL: one line per alert), respecting the target's token bucket, retrying transient
failures with capped exponential backoff and jitter (a 429 waits Retry-After), never retrying permanent ones. A
group that succeeds gets one record per (alert id, target) (``streams.notify_sent``, value ``done``); one given up
goes to ``streams.NOTIFY_DEAD_LETTER`` with the reason, in the same MULTI/EXEC as its records (value ``dead``). An
alert is XACKed when every one of its targets is ``done`` or ``dead``. ``max_inflight`` unacked alerts at most: the
reader waits beyond that.

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
A killed notifier never loses an alert: unacked alerts stay pending in the group.

Replicas: while an alert is being delivered its owner re-claims it to itself every ``claim_idle_ms / 3`` (XCLAIM
JUSTID), so other replicas only claim alerts of a notifier that stopped working, however long its retries take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.notifier import core
from services.notifier.settings import Settings
from services.notifier.targets import RetryableSendError, Target, build_targets
from shared import metrics, streams
from shared.alert_streams import parse_id
from shared.bus import Batch, Bus, Consumer, backoff_delay
from shared.errors import NotifyError, PermanentNotifyError
from shared.logs import redact
from shared.runtime import heartbeat
from shared.schemas import Alert

logger = logging.getLogger(__name__)

DONE = b"done"
DEAD = b"dead"
HISTORY_MAXLEN = 10_000
_REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


class _Stopping(Exception):
    """Stop was requested while waiting to retry: leave the alerts pending for the next run."""


Key = tuple[str, bytes]  # (stream, entry id): ids are unique per stream only


@dataclass(slots=True)
class _Job:
    key: Key
    alert: Alert
    arrived: float
    position: tuple[tuple[int, int], str]  # in the merged alerts log: (entry id, stream)


@dataclass
class _Lane:
    """One target's FIFO of alerts to deliver; only its worker pops from it."""

    target: Target
    jobs: deque[_Job] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class NotifierApp:
    def __init__(self, settings: Settings, redis: Redis, *, targets: dict[str, Target] | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = Bus(redis, settings.bus_settings(), service="notifier")
        self.targets = targets if targets is not None else build_targets(settings)
        self.routes = [core.Route(tuple(r.channels), frozenset(r.severity), tuple(sorted(r.labels.items())))
                       for r in settings.routes]
        self.buckets = {name: core.TokenBucket(settings.rate_overrides.get(name, settings.rate_per_s), settings.burst)
                        for name, t in self.targets.items() if t.remote}
        # one bucket per service (scheme) shared by its targets, e.g. Telegram's ~30 messages/s per bot
        self.scheme_buckets = {scheme: core.TokenBucket(rate, max(1, int(rate)))
                               for scheme, rate in settings.scheme_rates.items()
                               if any(getattr(t, "scheme", None) == scheme for t in self.targets.values())}
        consumer_settings = settings.consumer_settings(streams.GROUP_NOTIFIER, "notifier", count=settings.count,
                                                       block_ms=settings.block_ms)
        self.consumers = [Consumer(self.bus, consumer_settings, decode=Alert.decode, handler=self._take,
                                   streams=[streams.part_alerts(p)]) for p in range(settings.partitions)]
        self.name = consumer_settings.consumer
        self._lanes = {name: _Lane(t) for name, t in self.targets.items()}
        self._remaining: dict[Key, set[str]] = {}  # (stream, entry id) -> targets not yet settled
        self._room = asyncio.Event()
        self._stop = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self.delivered = 0  # (alert, target) pairs sent
        self.skipped = 0  # (alert, target) pairs already recorded
        self.dead = 0  # (alert, target) pairs dead-lettered
        self.acked = 0

    # ---- loop ------------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and deliver until ``stop`` is set; unfinished alerts stay pending for the next run."""
        self._start(stop)
        helpers = [asyncio.create_task(heartbeat(self.redis, "notifier", stop, self.status, instance=self.name),
                                       name="notifier-heartbeat"),
                   asyncio.create_task(self._keep_claimed(stop), name="notifier-keep-claimed")]
        try:
            await asyncio.gather(*(c.run(stop) for c in self.consumers))
        finally:
            await self._finish()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _keep_claimed(self, stop: asyncio.Event) -> None:
        """Reset the idle time of the alerts we are still delivering (XCLAIM JUSTID to ourselves), so another
        replica does not claim and send them while we retry; a dead notifier stops doing this and loses them."""
        every = self.settings.claim_idle_ms / 3000
        while not await _sleep(stop, every):
            for stream, ids in _by_stream(list(self._remaining)).items():
                for i in range(0, len(ids), 1000):
                    with contextlib.suppress(*_REDIS_DOWN):
                        await self.redis.xclaim(stream, streams.GROUP_NOTIFIER, self.name, 0, ids[i:i + 1000],
                                                justid=True)

    async def drain(self) -> int:
        """Burst mode (tests, backtests): deliver everything available now; returns how many alerts were acked."""
        before = self.acked
        self._start(asyncio.Event())
        try:
            while True:
                n = 0
                for consumer in self.consumers:
                    n += await consumer.poll(None)
                if n == 0 and not self._remaining:
                    return self.acked - before
                if n == 0:
                    await asyncio.sleep(0.01)
        finally:
            self._stop.set()
            await self._finish()

    def _start(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._workers = [asyncio.create_task(self._work(lane), name=f"notifier-{name}")
                         for name, lane in self._lanes.items()]

    async def _finish(self) -> None:
        """Let in-flight sends finish (and be recorded) within the send timeout, then cancel; close targets."""
        self._stop.set()
        for lane in self._lanes.values():
            lane.wake.set()
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=self.settings.timeout_s + 2)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        for target in self.targets.values():
            with contextlib.suppress(Exception):
                await target.close()

    def status(self) -> dict[str, int]:
        return {"delivered": self.delivered, "skipped": self.skipped, "dead": self.dead, "acked": self.acked,
                "inflight": len(self._remaining), "queued": sum(len(lane.jobs) for lane in self._lanes.values())}

    async def _take(self, batch: Batch[Alert]) -> None:
        """Route each alert into its targets' lanes. The ack comes when all are settled, so the bus must not ack."""
        batch.acked = True
        settled: list[Key] = []
        now = time.monotonic()
        for entry in batch.entries:
            key = (entry.stream, entry.id)
            position = (parse_id(entry.id), entry.stream)
            if key in self._remaining:  # our own entry claimed back while in flight
                continue
            alert = entry.value
            lanes = []
            for channel in core.route(alert, self.routes, self.settings.default_channels,
                                         self.settings.always_channels):
                if channel in self._lanes:
                    lanes.append(channel)
                elif channel not in core.BUILTIN_CHANNELS:  # a disabled built-in is skipped silently
                    await self._dead_letter_unknown(channel, alert)
            if not lanes:
                settled.append(key)
                continue
            self._remaining[key] = set(lanes)
            for channel in lanes:
                lane = self._lanes[channel]
                lane.jobs.append(_Job(key, alert, now, position))
                lane.wake.set()
        if settled:
            await self._ack(settled)
        while len(self._remaining) >= self.settings.max_inflight and not self._stop.is_set():
            self._room.clear()
            await _wait_any(self._room, self._stop)

    async def _ack(self, keys: list[Key]) -> None:
        for stream, ids in _by_stream(keys).items():
            await self.redis.xack(stream, streams.GROUP_NOTIFIER, *ids)
            self.acked += len(ids)

    # ---- per-target worker -----------------------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        target, jobs = lane.target, lane.jobs
        window = self.settings.group_window_s if target.remote else 0.0
        size = getattr(target, "max_group", None) or (self.settings.max_group if target.remote else 500)
        failures = 0
        while not self._stop.is_set():
            if not jobs:
                lane.wake.clear()
                await _wait_any(lane.wake, self._stop)
                continue
            wait = window - (time.monotonic() - jobs[0].arrived)
            if wait > 0 and len(jobs) < size:
                await _sleep(self._stop, wait)
                continue
            try:
                _in_log_order(jobs)
                chunk = await self._settle(target, list(islice(jobs, size + 64)), size)
                failures = 0
            except _Stopping:
                return
            except _REDIS_DOWN as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                logger.warning("notifier: %s: redis unavailable (%s); retrying in %.1fs", target.name, exc, delay)
                await _sleep(self._stop, delay)
                continue
            except Exception:  # a lane that ended here would hold its alerts (re-claimed by us) forever
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                logger.exception("notifier: %s: delivery step failed; retrying in %.1fs", target.name, delay)
                await _sleep(self._stop, delay)
                continue
            for _ in chunk:
                jobs.popleft()
            finished = []
            for job in chunk:
                left = self._remaining.get(job.key)
                if left is not None:
                    left.discard(target.name)
                    if not left:
                        del self._remaining[job.key]
                        finished.append(job.key)
            if finished:
                self._room.set()
                with contextlib.suppress(*_REDIS_DOWN):  # unacked entries come back by claim; records skip them
                    await self._ack(finished)

    async def _settle(self, target: Target, head: list[_Job], size: int) -> list[_Job]:
        """Deliver (or dead-letter) the first ``size`` alerts of ``head`` not yet recorded for ``target`` as one
        group, and record them. Returns the jobs settled: those alerts and the already-recorded ones before them.

        Groups are formed from unrecorded alerts only, in the order of the merged alerts log (``_in_log_order``), so
        after a crash the group that was in flight re-forms with the same alerts (and the same Idempotency-Key)
        unless new alerts have joined it, whatever order the partitions' pending entries come back in.
        """
        keys = [streams.notify_sent(job.alert.id, target.name) for job in head]
        # (on a Redis Cluster the records are in many slots: read one slot at a time)
        states = await (self.redis.mget_nonatomic(keys) if isinstance(self.redis, RedisCluster) else
                        self.redis.mget(keys))
        grouped = target.remote and size > 1  # (a group of one has a stable key: nothing to plan)
        planned = None
        if grouped:
            unrecorded = list(dict.fromkeys(job.alert.id for job, state in zip(head, states) if state is None))
            planned = await self._planned(target.name, unrecorded, size)
            if planned is not None:
                size = len(planned)
        todo: dict[str, Alert] = {}
        settled = 0
        for job, state in zip(head, states):
            if state is None and job.alert.id not in todo:
                if len(todo) == size:
                    break
                todo[job.alert.id] = job.alert
            elif state is not None:
                self.skipped += 1
            settled += 1
        if todo:
            group = list(todo.values())
            if grouped and planned != list(todo):  # (a group re-formed as planned is planned already)
                await self.redis.set(streams.notify_group(group[0].id, target.name), " ".join(todo),
                                     ex=self.settings.sent_ttl_s)
            state, attempts, reason = await self._send_group(target, group)
            await self._record_once_redis_is_back(target.name, group, state, attempts, reason)
        return head[:settled]

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
        """``_record`` a group already sent, retried while Redis is unavailable: going back to ``_settle`` would send
        it again, and under another Idempotency-Key if alerts have joined it meanwhile. Only a stop (or a crash)
        leaves it unrecorded: the group that re-forms then is the crash window the JSONL target's tail check and
        the key cover."""
        failures = 0
        while True:
            try:
                await self._record(target, group, state, attempts, reason)
                return
            except _REDIS_DOWN as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                logger.warning("notifier: %s: sent %d alert(s), recording them waits for Redis (%s); retrying in "
                               "%.1fs", target, len(group), exc, delay)
                await self._wait(delay)

    async def _send_group(self, target: Target, group: Sequence[Alert]) -> tuple[bytes, int, str]:
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
        if seconds > 0 and await _sleep(self._stop, seconds):
            raise _Stopping()

    async def _record(self, target: str, group: Sequence[Alert], state: bytes, attempts: int, reason: str) -> None:
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

    async def redeliver(self, channel: str, alert: Alert) -> str:
        """Send one alert to one channel again (dead-letter retry), ignoring its record; ``delivered`` or ``dead``."""
        state, attempts, reason = await self._send_group(self.targets[channel], [alert])
        await self._record(channel, [alert], state, attempts, reason)
        return "delivered" if state == DONE else "dead"

    async def _dead_letter_unknown(self, channel: str, alert: Alert) -> None:
        if await self.redis.get(streams.notify_sent(alert.id, channel)) is None:
            logger.warning("notifier: rule %s names unknown channel %r; dead-lettering", alert.rule, channel)
            await self._record(channel, [alert], DEAD, 0, f"unknown channel {channel!r}")


def _in_log_order(jobs: deque[_Job]) -> None:
    """Sort a lane by entry id (then stream), as one alerts stream would have it: the partitions' consumers hand
    over their entries in whatever order their reads complete (and a restart re-reads its pending entries partition
    by partition), so the groups formed from the lane's head are the same before and after a crash."""
    if any(a.position > b.position for a, b in zip(jobs, islice(jobs, 1, None))):
        ordered = sorted(jobs, key=lambda job: job.position)
        jobs.clear()
        jobs.extend(ordered)


def _by_stream(keys: list[Key]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for stream, entry_id in keys:
        out.setdefault(stream, []).append(entry_id)
    return out


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
