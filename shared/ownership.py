"""Who owns which partition: leases with fencing tokens, shared fairly between the live replicas of a service.

Work is partitioned by (exchange, symbol) → partition (``shared.partitions``). Each partition of a *group* (a
service, e.g. ``candle_builder``) is owned by at most one replica at a time:

- a replica announces itself in the group's member set (``streams.members(group)``: name → last seen, ms) and holds
  at most its fair share, ``ceil(partitions / live members)``;
- it takes a free partition with a lease: ``streams.lease(group, p)`` set NX with a TTL to ``"<instance>|<token>"``,
  where the token comes from ``INCR streams.fence(group, p)`` in the same script, so every owner of a partition has a
  larger token than every owner before it;
- it renews its leases every ``ttl / 3`` and hands back the ones over its share (a replica joined), so the others can
  take them; a dead replica's leases expire after ``ttl`` and the survivors take its partitions over;
- every fenced write also extends its partition's lease by ``ttl`` (a replica that writes is alive), and a lease that
  expired while its owner was too busy to renew it is taken back by the next renewal or write if no other replica took
  it meanwhile (the fence counter still holds the owner's token): a busy owner keeps its partitions; a paused one
  whose partitions were taken over is fenced;
- every write an owner makes for a partition runs behind the one lease check, ``LEASE_CHECK``, in the same script
  (atomically, in the partition's hash slot): ``fenced`` for a list of commands (run once, even when the client
  sends the call again after a lost reply), or a service's own script made by
  ``fenced_script`` and run by ``call_fenced`` (alert_engine's commit, market_feed's publish); the renewal is the
  same check with no write. An owner paused past its TTL whose partition was taken over cannot write
  (``FencedError``), whatever it believes;
- with ``replication`` (``shared.durability``, from ``redis_wait_replicas``) a fenced write returns only once that
  many replicas hold it (``NotReplicatedError`` otherwise: the write is not done, the caller redoes it).

All keys of a partition share its hash tag, so the scripts are single-slot on a Redis Cluster.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis import exceptions as redis_errors

from shared import streams
from shared.durability import NO_REPLICATION, Replication
from shared.resp import RespClient, Script

logger = logging.getLogger(__name__)

_packb = msgpack.Packer(use_bin_type=False).pack  # (raw strings: Redis' cmsgpack reads no bin type)

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
# The one lease check of every fenced write (and of the renewal), prepended to a script's own text by
# ``fenced_script``. KEYS[1] the partition's lease (``streams.lease(group, p)``), KEYS[2] its fence counter
# (``streams.fence(group, p)``: same hash tag, so the script stays in one Cluster slot); ARGV[1] this replica's lease
# value (``instance|token``), ARGV[2] the TTL (ms), ARGV[3] its token. It passes if the lease holds the value, or if
# the lease expired untaken while its owner was too busy to renew it (a long CPU-bound read): the fence counter still
# holds this owner's token, so no other replica has taken the partition since (every taker INCRs it first). A pass
# sets the lease again with the TTL (an owner that writes is alive); a fail is the error ``FENCED lease <key> lost``
# and the script writes nothing. A replica paused past the TTL and taken over fails the token check.
LEASE_CHECK = """
do
  local held = redis.call('GET', KEYS[1])
  if held ~= ARGV[1] and (held or redis.call('GET', KEYS[2]) ~= ARGV[3]) then
    return redis.error_reply('FENCED lease ' .. KEYS[1] .. ' lost')
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""


def fenced_script(body: str) -> str:
    """The text of a script that runs ``body`` only once ``LEASE_CHECK`` passed. ``body`` leaves KEYS[1..2] and
    ARGV[1..3] to the check (its own keys start at KEYS[3], its arguments at ARGV[4]); call it through
    ``Ownership.call_fenced``, which passes the check's keys and arguments first."""
    return LEASE_CHECK + body


_RENEW = fenced_script("return 1")  # (a renewal is a fenced write of nothing)
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# After the check (KEYS[1..2], ARGV[1..3]): KEYS[3] the id of the partition's last fenced write
# (``streams.written(group, p)``), ARGV[4] this write's id, ARGV[5] the commands as one msgpack array (``cmsgpack``,
# built into Redis' Lua): each command an array of k (0, or the position of the argument to replace with the previous
# command's reply: ``PREVIOUS``) then its arguments. Replies in order; nil, running nothing, when the last write has
# this write's id (a retry whose first attempt ran and lost its reply). One blob, not an argument per command word:
# redis-py packed a commit of 1,000 candles (3,000 commands) in ~15 ms, msgpack in ~2.6 ms.
_FENCED = fenced_script("""
if redis.call('GET', KEYS[3]) == ARGV[4] then return false end
redis.call('SET', KEYS[3], ARGV[4])
local commands = cmsgpack.unpack(ARGV[5])
local out = {}
for i = 1, #commands do
  local command = commands[i]
  local at = table.remove(command, 1)
  if at > 0 then command[at] = out[#out] end
  out[#out + 1] = redis.call(unpack(command))
end
return out
""")


#: An argument of a fenced command that stands for the reply of the command before it (e.g. an ``XADD`` to a second
#: stream with the entry id the first ``XADD ... *`` got): ``("XADD", key, PREVIOUS, "d", data)``.
PREVIOUS = object()


class FencedError(Exception):
    """A write for a partition whose lease this replica no longer holds: another replica owns it now."""


Command = Sequence[Any]


@dataclass(frozen=True, slots=True)
class Lease:
    """This replica's hold on one partition: the value written in the lease key (``instance|token``)."""

    partition: int
    token: int
    value: str


class Ownership:
    """The partitions of ``group`` held by the replica ``instance``.

    ``balance(now_ms)`` (call it every ``ttl_ms / 3``) renews, hands back and takes leases and returns what changed;
    ``fenced(p, commands)`` runs writes for partition ``p`` only while this replica holds its lease.
    """

    def __init__(self, redis: Any, group: str, instance: str, partitions: int, *, ttl_ms: int = 6000,
                 wanted: Iterable[int] | None = None, replication: Replication = NO_REPLICATION) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.redis = redis
        self.group = group
        self.instance = instance
        self.partitions = partitions
        self.ttl_ms = ttl_ms
        self.replication = replication
        self.leases: dict[int, Lease] = {}
        #: the partitions this replica has work in (a feed: those of its pairs); None = all. Others are never taken.
        self.wanted: set[int] | None = None if wanted is None else set(wanted)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        # fenced writes are on the path of every candle: through the small client where it serves (one server by TCP
        # or a Unix socket; ~4x less CPU per call than redis-py's asyncio client), else redis-py
        self._small = RespClient.of(redis)
        self._fenced = Script(redis, _FENCED, self._small)
        self._writes = 0  # fenced writes made: with the lease's token, each one's id

    @property
    def owned(self) -> set[int]:
        return set(self.leases)

    def holds(self, partition: int) -> bool:
        return partition in self.leases

    # ---- balancing -------------------------------------------------------------------------------------------------

    async def live_members(self, now_ms: int) -> int:
        """Announce this replica (and drop members silent for longer than the TTL); how many are alive."""
        key = streams.members(self.group)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.instance: now_ms})
            pipe.zremrangebyscore(key, "-inf", now_ms - self.ttl_ms)
            pipe.zcard(key)
            replies = await pipe.execute()
        return max(int(replies[-1]), 1)

    async def balance(self, now_ms: int) -> tuple[list[int], list[int]]:
        """Renew what is held, hand back what is over the fair share, take free partitions up to it.

        Returns ``(gained, lost)``: partitions this replica now owns that it did not, and ones it no longer owns
        (handed back, or taken by another replica after this one failed to renew in time).
        """
        lost = await self._renew_all()
        share = math.ceil(self.partitions / await self.live_members(now_ms))
        unwanted = [p for p in self.leases if self.wanted is not None and p not in self.wanted]
        # over the share: hand back the highest-numbered ones (any stable choice works)
        for partition in unwanted + sorted(set(self.leases) - set(unwanted), reverse=True)[
                :max(0, len(self.leases) - len(unwanted) - share)]:
            await self.release(partition)
            lost.append(partition)
        gained: list[int] = []
        free = [p for p in range(self.partitions)
                if p not in self.leases and (self.wanted is None or p in self.wanted)]
        random.shuffle(free)  # replicas starting together do not all race for partition 0 first
        for partition in free:
            if len(self.leases) >= share:
                break
            if await self.acquire(partition):
                gained.append(partition)
        return sorted(gained), sorted(lost)

    async def _renew_all(self) -> list[int]:
        # all at once, in one pipeline: one after the other, each renewal waited for a turn of the event loop, and a
        # busy replica (16 partition workers evaluating, on an overloaded machine) let its last leases expire before
        # renewing them; one command each (asyncio.gather) took a pooled connection each, beside every worker's
        # blocking read (a backtest's two services neared redis-py's 100 at 500 symbols; 5,000 ended in "Too many
        # connections"). EVAL, not EVALSHA: a cluster pipeline does not load scripts (a few hundred bytes a round).
        held = list(self.leases.items())
        if not held:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, _lease in held:
                keys, args = self.check(partition)
                pipe.eval(_RENEW, len(keys), *keys, *args)
            answers = await pipe.execute(raise_on_error=False)
        lost = []
        failed: BaseException | None = None
        for (partition, _lease), renewed in zip(held, answers, strict=True):
            if isinstance(renewed, redis_errors.ResponseError) and str(renewed).startswith("FENCED"):
                self.leases.pop(partition, None)  # (a fenced write may have dropped it meanwhile)
                lost.append(partition)
                logger.warning("%s/%s: lease of partition %d was lost (expired and taken over)", self.group,
                               self.instance, partition)
            elif isinstance(renewed, BaseException):
                failed = failed or renewed
        if failed is not None:
            raise failed
        return lost

    async def acquire(self, partition: int) -> bool:
        token = await self._acquire(keys=[streams.lease(self.group, partition), streams.fence(self.group, partition)],
                                    args=[self.instance, self.ttl_ms])
        if not token:
            return False
        self.leases[partition] = Lease(partition, int(token), f"{self.instance}|{int(token)}")
        return True

    async def release(self, partition: int) -> None:
        lease = self.leases.pop(partition, None)
        if lease is not None:
            await self._release(keys=[streams.lease(self.group, partition)], args=[lease.value])

    async def leave(self) -> None:
        """Hand every partition back at once (a clean shutdown): the others take over without waiting for the TTL."""
        for partition in list(self.leases):
            await self.release(partition)
        await self.redis.zrem(streams.members(self.group), self.instance)
        if self._small is not None:  # (its connections; a later call opens new ones)
            await self._small.aclose()

    async def owners(self) -> dict[int, str | None]:
        """Every partition's current owner (instance name) or None: for /health and tests."""
        out: dict[int, str | None] = {}
        for partition in range(self.partitions):
            value = await self.redis.get(streams.lease(self.group, partition))
            out[partition] = value.decode().rsplit("|", 1)[0] if value else None
        return out

    # ---- fenced writes ---------------------------------------------------------------------------------------------

    def check(self, partition: int) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``LEASE_CHECK`` for ``partition`` (the first ones of a ``fenced_script`` call):
        its lease and fence keys; this replica's lease value, the TTL, its token. FencedError if it is not held."""
        lease = self.leases.get(partition)
        if lease is None:
            raise FencedError(f"{self.group}/{self.instance} does not own partition {partition}")
        return ([streams.lease(self.group, partition), streams.fence(self.group, partition)],
                [lease.value, self.ttl_ms, lease.token])

    async def call_fenced(self, partition: int, script: Any, keys: Sequence[Any], args: Sequence[Any], *,
                          client: Any = None) -> Any:
        """Run ``script`` (registered from ``fenced_script(body)``) for ``partition`` with the check's keys and
        arguments in front of ``keys`` and ``args`` (every key in the partition's hash slot); its reply. FencedError
        if the check fails (the partition is dropped from ``leases``: its worker must stop). ``client``: the
        connection to run it on (redis-py's ``Script``), by default the script's own client."""
        check_keys, check_args = self.check(partition)
        try:
            return await script(keys=[*check_keys, *keys], args=[*check_args, *args], client=client)
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("FENCED"):
                self.leases.pop(partition, None)
                raise FencedError(f"{self.group}/{self.instance}: {exc}") from exc
            raise

    async def fenced(self, partition: int, commands: Iterable[Command]) -> list[Any] | None:
        """Run ``commands`` (each a sequence like ``("XADD", key, "*", "d", data)``, every key in the partition's
        hash slot; arguments str, bytes or int, an int exact as a Lua number, |n| < 2**53; an argument ``PREVIOUS`` is
        the previous command's reply) atomically, only if this replica still holds the partition's lease
        (``LEASE_CHECK``), and once: the write carries an id of its own, so a call that the client sent again after
        its connection failed (the small client and redis-py both do) runs nothing the second time if the first
        ran. The replies in order; None when the write had already run (its replies were lost with the connection).
        FencedError if the lease is lost (the partition is dropped from ``leases``: its worker must stop)."""
        packed = [[next(i for i, arg in enumerate(command) if arg is PREVIOUS) + 1,
                   *("" if arg is PREVIOUS else arg for arg in command)] if PREVIOUS in command else [0, *command]
                  for command in commands]
        self._writes += 1
        lease = self.leases.get(partition)  # (None: call_fenced raises FencedError)
        write_id = f"{lease.token if lease else 0}.{self._writes}"
        replies = await self.call_fenced(partition, self._fenced, [streams.written(self.group, partition)],
                                         [write_id, _packb(packed)])
        await self.replicated()
        return None if replies is None else list(replies)

    async def replicated(self) -> None:
        """Return once the replicas ``replication`` asks for hold every write made so far (``shared.durability``;
        NotReplicatedError if they do not in time). A fenced write does this itself; a writer with its own script
        (market_feed's publish) calls it after the script."""
        await self.replication.wait(self.redis)

