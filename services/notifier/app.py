"""Notifier wiring: read every partition's ``streams.part_alerts`` (group ``notifier``), route, deliver per target, ack
when all are settled.

Reading: one consumer per partition stream (``shared.bus.Consumer``), each with its own XREADGROUP, so on a Redis
Cluster every read, claim and ack names one slot; on one Redis the reads simply run side by side. Alerts of different
partitions are independent (no order between pairs is promised); within a partition they are taken in order.

Flow: the bus hands decoded alerts to ``_take``, which routes each (``core.route``) and appends it to the lane of
every target it goes to, without acking. Each target has its own lane and worker, so a slow or failing target never
delays the others. A worker waits for the grouping window (``group_window_s``, from the oldest alert in its lane;
remote targets only), takes up to ``max_group`` alerts and has them delivered and recorded as one group
(``services.notifier.delivery``: skipped when recorded before, sent with the target's rate limit and retry policy,
recorded ``done``, or dead-lettered and recorded ``dead``). An alert is XACKed when every one of its targets is
``done`` or ``dead``. ``max_inflight`` unacked alerts at most: the reader waits beyond that.

A killed notifier never loses an alert: unacked alerts stay pending in the group (the one duplicate window a kill
leaves, and where it is closed: ``services.notifier.delivery``).

Replicas: while an alert is being delivered its owner re-claims it to itself every ``claim_idle_ms / 3`` (XCLAIM
JUSTID), so other replicas only claim alerts of a notifier that stopped working, however long its retries take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice

from redis.asyncio import Redis

from services.notifier import core
from services.notifier.delivery import DEAD, DONE, Delivery, Stopping, sleep_or_stop
from services.notifier.settings import Settings
from services.notifier.targets import Target, build_targets
from shared import streams
from shared.alert_streams import parse_id
from shared.bus import Batch, Bus, Consumer, backoff_delay
from shared.outage import REDIS_DOWN
from shared.runtime import heartbeat
from shared.schemas import Alert

logger = logging.getLogger(__name__)

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
        self._stop = asyncio.Event()
        self.delivery = Delivery(settings, redis, self.targets, self._stop)
        consumer_settings = settings.consumer_settings(streams.GROUP_NOTIFIER, "notifier", count=settings.count,
                                                       block_ms=settings.block_ms)
        self.consumers = [Consumer(self.bus, consumer_settings, decode=Alert.decode, handler=self._take,
                                   streams=[streams.part_alerts(p)]) for p in range(settings.partitions)]
        self.name = consumer_settings.consumer
        self._lanes = {name: _Lane(t) for name, t in self.targets.items()}
        self._remaining: dict[Key, set[str]] = {}  # (stream, entry id) -> targets not yet settled
        self._room = asyncio.Event()
        self._workers: list[asyncio.Task] = []
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
        while not await sleep_or_stop(stop, every):
            for stream, ids in _by_stream(list(self._remaining)).items():
                for i in range(0, len(ids), 1000):
                    with contextlib.suppress(*REDIS_DOWN):
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
        self._stop = self.delivery.stop = stop
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
        d = self.delivery
        return {"delivered": d.delivered, "skipped": d.skipped, "dead": d.dead, "acked": self.acked,
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
                await sleep_or_stop(self._stop, wait)
                continue
            try:
                _in_log_order(jobs)
                head = list(islice(jobs, size + 64))
                chunk = head[:await self.delivery.settle(target, [job.alert for job in head], size)]
                failures = 0
            except Stopping:
                return
            except REDIS_DOWN as exc:
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                logger.warning("notifier: %s: redis unavailable (%s); retrying in %.1fs", target.name, exc, delay)
                await sleep_or_stop(self._stop, delay)
                continue
            except Exception:  # a lane that ended here would hold its alerts (re-claimed by us) forever
                failures += 1
                delay = backoff_delay(failures, base=0.2, cap=5.0)
                logger.exception("notifier: %s: delivery step failed; retrying in %.1fs", target.name, delay)
                await sleep_or_stop(self._stop, delay)
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
                with contextlib.suppress(*REDIS_DOWN):  # unacked entries come back by claim; records skip them
                    await self._ack(finished)

    async def redeliver(self, channel: str, alert: Alert) -> str:
        """Send one alert to one channel again (dead-letter retry), ignoring its record; ``delivered`` or ``dead``."""
        state, attempts, reason = await self.delivery.send_group(self.targets[channel], [alert])
        await self.delivery.record(channel, [alert], state, attempts, reason)
        return "delivered" if state == DONE else "dead"

    async def _dead_letter_unknown(self, channel: str, alert: Alert) -> None:
        if await self.redis.get(streams.notify_sent(alert.id, channel)) is None:
            logger.warning("notifier: rule %s names unknown channel %r; dead-lettering", alert.rule, channel)
            await self.delivery.record(channel, [alert], DEAD, 0, f"unknown channel {channel!r}")


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


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
