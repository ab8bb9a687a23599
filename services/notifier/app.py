"""Notifier wiring: read ``streams.ALERTS`` (group ``notifier``), route, deliver per target, ack when all are settled.

Flow: the bus hands decoded alerts to ``_take``, which buffers them without acking. When the grouping window has
passed since the oldest buffered alert (immediately with ``group_window_s = 0``), ``_flush`` routes every alert
(``core.route``), and for each target, concurrently: skips alerts already recorded as delivered, sends the rest in
groups of up to ``max_group`` (one message per group for remote targets, one line per alert for console/JSONL),
respecting the target's token bucket, retrying transient failures with capped exponential backoff and jitter (a 429
waits Retry-After), never retrying permanent ones. A group that succeeds gets one record per (alert id, target)
(``streams.notify_sent``, value ``done``); one that is given up goes to ``streams.NOTIFY_DEAD_LETTER`` with the
reason, in the same MULTI/EXEC as its records (value ``dead``). Only when every (alert, target) is ``done`` or
``dead`` are the alerts XACKed.

Idempotency and the one duplicate window: the record is written after the target confirmed. A notifier killed (or
its Redis write lost) after the target took the message and before the record landed sends it again when the alert
is re-read (its own pending on restart, or claimed by another replica after ``claim_idle_ms``). That window is the
send itself plus one Redis round trip: an HTTP server usually processes a request even when the client died while
waiting for the answer, so a kill at any moment of an in-flight send can yield one duplicate of that one group
(per target; one group is in flight per target). So a SIGKILL repeats a message with probability ≈ the share of
time a send is in flight; ``bench/chaos_notifier.py`` (receiver taking 10 ms, kills at random moments of a 60-alert
burst, one alert per message) measured 10 raw repeats in 36 kills (0.28 per kill), 0 lost. SIGTERM never repeats
(in-flight sends finish within the grace period). It is closed where the receiver cooperates:
- JSON webhooks carry ``Idempotency-Key`` (a hash of target and the group's alert ids: stable across retries and
  restarts for ``max_group=1``; for larger groups the first unrecorded group re-forms identically unless new alerts
  join it) and every alert's deterministic ``id`` in the body, so a receiver that dedups on either sees exactly once;
- the JSONL file: the restarted target reads the ids in its file's tail and skips those (and drops a torn last line);
- console lines and Apprise services (Telegram, e-mail, …) have no such hook: a kill mid-send can repeat one message.
A killed notifier never loses an alert: unacked alerts stay pending in the group.

Known limits: one flush at a time, so a target that is retrying delays the next flush for the others (bounded by
``max_attempts`` and ``backoff_cap_s``); two replicas that both hold the same alert (a claim while the first is still
retrying, i.e. a flush longer than ``claim_idle_ms``) may both send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from services.notifier import core
from services.notifier.settings import Settings
from services.notifier.targets import RetryableSendError, Target, build_targets
from shared import streams
from shared.bus import Batch, Bus, Consumer, Entry, backoff_delay
from shared.errors import NotifyError, PermanentNotifyError
from shared.logs import redact
from shared.runtime import consumer_name, heartbeat
from shared.schemas import Alert

logger = logging.getLogger(__name__)

DONE = b"done"
DEAD = b"dead"
HISTORY_MAXLEN = 10_000


class _Stopping(Exception):
    """Stop was requested while waiting to retry: leave the alerts pending for the next run."""


class NotifierApp:
    def __init__(self, settings: Settings, redis: Redis, *, targets: dict[str, Target] | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.bus = Bus(redis)
        self.targets = targets if targets is not None else build_targets(settings)
        self.routes = [core.Route(tuple(r.channels), frozenset(r.severity), tuple(sorted(r.labels.items())))
                       for r in settings.routes]
        self.buckets = {name: core.TokenBucket(settings.rate_overrides.get(name, settings.rate_per_s), settings.burst)
                        for name, t in self.targets.items() if t.remote}
        self.consumer = Consumer(
            self.bus, group=streams.GROUP_NOTIFIER, consumer=consumer_name("notifier", settings.consumer_name),
            decode=Alert.decode, handler=self._take, streams=[streams.ALERTS], count=settings.count,
            block_ms=settings.block_ms, claim_idle_ms=settings.claim_idle_ms,
        )
        self._buffer: list[Entry[Alert]] = []
        self._buffered_ids: set[bytes] = set()
        self._oldest = 0.0
        self._stop = asyncio.Event()
        self.delivered = 0  # (alert, target) pairs sent
        self.skipped = 0  # (alert, target) pairs already recorded
        self.dead = 0  # (alert, target) pairs dead-lettered
        self.acked = 0

    # ---- loop ------------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and deliver until ``stop`` is set; unfinished alerts stay pending for the next run."""
        self._stop = stop
        hb = asyncio.create_task(heartbeat(self.redis, "notifier", stop, self.status), name="notifier-heartbeat")
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._step()
                    failures = 0
                except _Stopping:
                    break
                except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                    failures += 1
                    delay = backoff_delay(failures, base=0.2, cap=5.0)
                    logger.warning("notifier: redis unavailable (%s); retrying in %.1fs", exc, delay)
                    await _sleep(stop, delay)
        finally:
            hb.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hb
            for target in self.targets.values():
                with contextlib.suppress(Exception):
                    await target.close()

    async def _step(self) -> None:
        block = self.settings.block_ms
        if self._buffer:
            remaining = self.settings.group_window_s - (time.monotonic() - self._oldest)
            if remaining <= 0 or len(self._buffer) >= self.settings.count:
                await self._flush()
                return
            block = max(1, min(block, int(remaining * 1000)))
        await self.consumer.poll(block)
        if self._buffer and self.settings.group_window_s <= 0:
            await self._flush()

    async def drain(self) -> int:
        """Burst mode (tests, backtests): deliver everything available now, then return how many alerts were acked."""
        before = self.acked
        while True:
            n = await self.consumer.poll(None)
            if self._buffer:
                await self._flush()
            elif n == 0:
                return self.acked - before

    def status(self) -> dict[str, int]:
        return {"delivered": self.delivered, "skipped": self.skipped, "dead": self.dead, "acked": self.acked,
                "buffered": len(self._buffer)}

    async def _take(self, batch: Batch[Alert]) -> None:
        """Buffer; the ack comes after delivery (``_flush``), so the bus must not ack now."""
        for entry in batch.entries:
            if entry.id in self._buffered_ids:  # our own entry claimed back: already buffered
                continue
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(entry)
            self._buffered_ids.add(entry.id)
        batch.acked = True

    # ---- delivery --------------------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        entries = self._buffer
        alerts = {e.value.id: e.value for e in entries}  # a replayed alert id appears once
        plan: dict[str, list[Alert]] = {}
        for alert in alerts.values():
            for channel in core.route(alert, self.routes, self.settings.default_channels):
                plan.setdefault(channel, []).append(alert)
        jobs = []
        for channel, routed in plan.items():
            target = self.targets.get(channel)
            if target is not None:
                jobs.append(self._deliver(target, routed))
            elif channel not in core.BUILTIN_CHANNELS:  # a disabled built-in is skipped silently
                jobs.append(self._dead_letter_unknown(channel, routed))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # nothing acked: every (alert, target) already settled is recorded and will be skipped
            stopping = any(isinstance(r, _Stopping) for r in errors)
            raise _Stopping() if stopping else errors[0]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(streams.ALERTS, streams.GROUP_NOTIFIER, *[e.id for e in entries])
            await pipe.execute()
        self.acked += len(entries)
        self._buffer = []
        self._buffered_ids.clear()

    async def _deliver(self, target: Target, alerts: list[Alert]) -> None:
        keys = [streams.notify_sent(a.id, target.name) for a in alerts]
        states = await self.redis.mget(keys)
        todo = [a for a, s in zip(alerts, states) if s is None]
        self.skipped += len(alerts) - len(todo)
        size = self.settings.max_group if target.remote else len(todo) or 1
        for i in range(0, len(todo), size):
            await self._send_group(target, todo[i:i + size])

    async def _send_group(self, target: Target, group: Sequence[Alert]) -> None:
        s = self.settings
        message = core.render(target.format, group)
        bucket = self.buckets.get(target.name)
        attempt = 0
        while True:
            attempt += 1
            if bucket is not None:
                await self._wait(bucket.take(time.monotonic()))
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
                await self._record(target, group, DONE, attempt, "ok")
                return
            reason = redact(reason)
            decision = core.after_failure(attempt=attempt, max_attempts=s.max_attempts, permanent=permanent,
                                          retry_after=retry_after, reason=reason, base=s.backoff_base_s,
                                          cap=s.backoff_cap_s, retry_after_cap=s.retry_after_cap_s,
                                          jitter=random.random())
            if not decision.retry:
                logger.warning("notifier: %s: dead-lettering %d alert(s): %s", target.name, len(group),
                               decision.reason)
                await self._record(target, group, DEAD, attempt, decision.reason)
                return
            logger.info("notifier: %s: attempt %d failed (%s); retrying in %.2fs", target.name, attempt, reason,
                        decision.delay)
            if retry_after is not None and bucket is not None:
                bucket.hold(time.monotonic(), decision.delay)
            await self._wait(decision.delay)

    async def _wait(self, seconds: float) -> None:
        if seconds > 0 and await _sleep(self._stop, seconds):
            raise _Stopping()

    async def _record(self, target: Target, group: Sequence[Alert], state: bytes, attempts: int,
                      reason: str) -> None:
        """Delivery records (and dead letters) for a group, in one MULTI/EXEC, plus the recent-deliveries log."""
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            for alert in group:
                pipe.set(streams.notify_sent(alert.id, target.name), state, ex=self.settings.sent_ttl_s)
                if state == DEAD:
                    pipe.xadd(streams.NOTIFY_DEAD_LETTER, {
                        b"alert_id": alert.id, b"target": target.name, b"reason": reason[:2000],
                        b"attempts": attempts, b"ts": now, b"d": alert.encode()}, maxlen=HISTORY_MAXLEN,
                        approximate=True)
            pipe.xadd(streams.NOTIFY_DELIVERIES, {
                b"target": target.name, b"alert_ids": ",".join(a.id for a in group)[:4000], b"count": len(group),
                b"status": "delivered" if state == DONE else "dead", b"attempts": attempts, b"reason": reason[:500],
                b"ts": now}, maxlen=HISTORY_MAXLEN, approximate=True)
            await pipe.execute()
        if state == DONE:
            self.delivered += len(group)
        else:
            self.dead += len(group)

    async def redeliver(self, channel: str, alert: Alert) -> str:
        """Send one alert to one channel again (dead-letter retry), ignoring its record; ``delivered`` or ``dead``."""
        target = self.targets[channel]
        await self.redis.delete(streams.notify_sent(alert.id, channel))
        await self._send_group(target, [alert])
        state = await self.redis.get(streams.notify_sent(alert.id, channel))
        return "delivered" if state == DONE else "dead"

    async def _dead_letter_unknown(self, channel: str, alerts: list[Alert]) -> None:
        keys = [streams.notify_sent(a.id, channel) for a in alerts]
        states = await self.redis.mget(keys)
        todo = [a for a, st in zip(alerts, states) if st is None]
        if todo:
            logger.warning("notifier: rule(s) %s name unknown channel %r; dead-lettering",
                           ", ".join(sorted({a.rule for a in todo})), channel)
            await self._record(_Unknown(channel), todo, DEAD, 0, f"unknown channel {channel!r}")


class _Unknown:
    def __init__(self, name: str) -> None:
        self.name = name


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False
