"""The chaos schedule: random SIGKILLs of every service process, SIGKILLs of redis-server (restarted from its AOF),
one longer Redis outage, rounds of malformed entries, and dropped exchange connections; and the recovery time of each
(from the restart to the point where what had piled up is handled)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared import streams
from shared.embedded_redis import EmbeddedRedis
from tests.support.chaos.processes import Service
from tests.support.chaos.progress import Probe, wait_for

GROUPS = {"candle_builder": streams.GROUP_CANDLE_BUILDER, "alert_engine": streams.GROUP_ALERT_ENGINE,
          "notifier": streams.GROUP_NOTIFIER}


@dataclass
class Event:
    at: float  # seconds after the start of the schedule
    what: str  # kill | redis_kill | outage | inject | drop
    target: str = ""  # service kind for a kill
    down_s: float = 0.0


def schedule(rng: random.Random, *, window: tuple[float, float], kinds: list[str], kills: int, redis_kills: int,
             outage_s: float, injections: int, drops: int, down: tuple[float, float]) -> list[Event]:
    """Events at random times within ``window``: ``kills`` service kills dealt over ``kinds`` in turn (so each kind
    gets its share), ``redis_kills`` Redis kills, an outage in the middle, injections and drops."""
    lo, hi = window
    events = []
    order = []
    while len(order) < kills:
        order += rng.sample(kinds, len(kinds))
    times = sorted(rng.uniform(lo, hi) for _ in range(kills))  # round after round: each kind killed in turn
    for kind, at in zip(order[:kills], times):
        events.append(Event(at, "kill", kind, rng.uniform(*down)))
    events += [Event(rng.uniform(lo, hi), "redis_kill", down_s=rng.uniform(*down)) for _ in range(redis_kills)]
    if outage_s:
        events.append(Event((lo + hi) / 2, "outage", down_s=outage_s))
    events += [Event(lo + (hi - lo) * (i + 0.5) / injections, "inject") for i in range(injections)]
    events += [Event(rng.uniform(lo, hi), "drop") for _ in range(drops)]
    return sorted(events, key=lambda e: e.at)


@dataclass
class Chaos:
    """Carries out a schedule on the running pipeline and records what it did and how long recovery took."""

    services: list[Service]
    redis: EmbeddedRedis
    probe: Probe
    paused: set[str]
    rng: random.Random
    inject: Callable[[], Awaitable[int]]
    sim_url: str | None = None
    recovery_timeout_s: float = 60.0
    restart_grace_s: float = 0.0
    log: list[dict] = field(default_factory=list)
    _pending: dict[str, asyncio.Task] = field(default_factory=dict)

    async def run(self, events: list[Event], until: asyncio.Event) -> None:
        """Each event at its time, one after another; once ``until`` is set (the sources ended: the consumers are
        draining) the rest follow without waiting for their times."""
        started = time.monotonic()
        for event in events:
            delay = started + event.at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(until.wait(), delay)
                except TimeoutError:
                    pass
            await getattr(self, f"_{event.what}")(event)

    async def finish(self) -> None:
        """Wait for the recoveries still being measured."""
        await asyncio.gather(*self._pending.values(), return_exceptions=True)

    def _record(self, **entry) -> dict:
        entry["t"] = round(time.time(), 3)
        self.log.append(entry)
        return entry

    # ---- services ----------------------------------------------------------------------------------------------

    async def _kill(self, event: Event) -> None:
        def candidates() -> list[Service]:
            return [s for s in self.services if s.kind == event.target and s.running and s.name not in self.paused]
        # one being restarted by the supervisor (it exited by itself) is back within seconds
        await wait_for(lambda: _true(bool(candidates())), 15.0, every=0.1)
        if not candidates():
            self._record(what="kill", target=event.target, skipped="no process of it running")
            return
        svc = self.rng.choice(candidates())
        previous = self._pending.get(svc.name)
        if previous is not None:  # one recovery at a time per process, so each time means something
            await asyncio.wait({previous}, timeout=self.recovery_timeout_s)
        if not svc.running:
            self._record(what="kill", target=svc.name, skipped="it had finished")
            return
        self.paused.add(svc.name)
        try:
            await svc.kill()
            await asyncio.sleep(event.down_s)
            entry = self._record(what="kill", kind=svc.kind, target=svc.name, down_s=round(event.down_s, 2))
            check = await self._recovered_check(svc)
            await svc.start()
        finally:
            self.paused.discard(svc.name)
        self._measure(svc.name, entry, check)

    async def _recovered_check(self, svc: Service) -> Callable[[], Awaitable[bool]]:
        """What "caught up" means for ``svc`` after a restart: a consumer has handled every entry its streams had at
        the restart; a replaying feed has published a trade past the last one it had; a live feed has published every
        trade the exchange had released by then."""
        probe = self.probe
        if svc.kind in GROUPS:
            tips = await _retrying(probe.stream_tips)
            return lambda: probe.caught_up_to(tips, GROUPS[svc.kind])
        pair = svc.pair
        assert pair is not None
        if svc.live and self.sim_url:
            target = await asyncio.to_thread(_released_last_id, self.sim_url, pair.symbol)
        else:
            target = (await _retrying(lambda: probe.last_id(pair)) or 0) + 1

        async def fed() -> bool:
            last = await probe.last_id(pair)
            return svc.finished or (last is not None and target is not None and last >= target)
        return fed

    def _measure(self, name: str, entry: dict, check: Callable[[], Awaitable[bool]]) -> None:
        async def measure() -> None:
            took = await wait_for(check, self.recovery_timeout_s)
            entry["recovered_s"] = None if took is None else round(took, 3)
        self._pending[name] = asyncio.create_task(measure())

    # ---- redis -------------------------------------------------------------------------------------------------

    async def _redis_kill(self, event: Event) -> None:
        await self._redis_down(event, "redis_kill")

    async def _outage(self, event: Event) -> None:
        await self._redis_down(event, "outage")

    async def _redis_down(self, event: Event, what: str) -> None:
        if self.restart_grace_s:  # let processes just restarted connect first (a start-up with Redis down is a
            # different fault: see the report's crashes)
            youngest = max((s.started_at for s in self.services if s.running), default=0.0)
            await asyncio.sleep(max(0.0, youngest + self.restart_grace_s - time.monotonic()))
        live = [s.name for s in self.services if s.running and s.live]
        self.redis.kill()
        await asyncio.sleep(event.down_s)
        await asyncio.to_thread(self.redis.start, 60.0)  # loads the AOF; the harness's loop keeps serving
        restarted_ms = int(time.time() * 1000)
        entry = self._record(what=what, down_s=round(event.down_s, 2), live_feed_running=bool(live))
        probe = self.probe
        tips = await _retrying(probe.stream_tips)
        running = [s for s in self.services if s.running]

        async def check() -> bool:
            # a beat since the restart from each kind still at work: a replaying feed that reached the end of its
            # recording meanwhile (finished: it exits without a last beat, and its kind's heartbeat hash expires
            # 10 s later) has nothing left to show; waiting for its beat would never end
            beating = sorted({s.kind for s in running if not s.finished})
            return await probe.caught_up_to(tips) and await probe.beats_since(beating, restarted_ms)
        self._measure("redis", entry, check)

    # ---- inputs --------------------------------------------------------------------------------------------------

    async def _inject(self, event: Event) -> None:
        n = await _retrying(self.inject)
        self._record(what="inject", entries=n)

    async def _drop(self, event: Event) -> None:
        if not self.sim_url:
            return
        reply = await asyncio.to_thread(_post, f"{self.sim_url}/_sim/drop")
        self._record(what="drop", dropped=reply.get("dropped"))


async def _true(value: bool) -> bool:
    return value


async def _retrying(fn: Callable[[], Awaitable], timeout: float = 60.0):
    """``fn()``, retried while Redis is down or loading."""
    result = []

    async def attempt() -> bool:
        result.append(await fn())
        return True
    if await wait_for(attempt, timeout) is None:
        raise TimeoutError(f"Redis did not answer within {timeout}s")
    return result[-1]


def _post(url: str) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=10) as reply:
        return json.loads(reply.read())


def _released_last_id(sim_url: str, symbol: str) -> int | None:
    """The id of the last trade the exchange simulator has released (its REST ``trades``)."""
    market = symbol.replace("/", "")
    with urllib.request.urlopen(f"{sim_url}/api/v3/trades?symbol={market}&limit=1", timeout=10) as reply:
        rows = json.loads(reply.read())
    return int(rows[-1]["id"]) if rows else None
