"""Deleting a consumer group's dead consumers (``DeadConsumerPruner``, run by each ``Consumer`` at its claim rounds).

Consumers of the group idle for longer than ``dead_consumer_idle_ms`` with nothing pending are deleted (XGROUP
DELCONSUMER, atomically with the check, by whichever live instance looks first): killed instances do not pile up;
sooner, after ``silent_consumer_idle_ms``, when the consumer's replica heartbeat (``streams.replica_heartbeat(service,
name)``, written by ``shared.runtime.heartbeat``) is missing or as old: a killed replica's entries are claimed after
``claim_idle_ms``, then its name leaves the group.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.stream_entries import as_text
from shared.streams import replica_heartbeat

if TYPE_CHECKING:
    from shared.consumer import ConsumerSettings

logger = logging.getLogger(__name__)

# Deletes the group's consumers with nothing pending that are idle for at least ARGV[2] ms, or for ARGV[4] ms when
# named in ARGV[5..] (no live heartbeat), but never ARGV[3] (the caller): the check and the delete in one atomic step,
# so a consumer that reads meanwhile is never deleted with entries pending (XGROUP DELCONSUMER would make them
# unclaimable).
_PRUNE = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local deleted = {}
if not ok then return deleted end
local silent = {}
for i = 5, #ARGV do silent[ARGV[i]] = true end
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  local idle = tonumber(f['idle'])
  local bound = tonumber(ARGV[2])
  if silent[f['name']] then bound = math.min(bound, tonumber(ARGV[4])) end
  if f['name'] ~= ARGV[3] and tonumber(f['pending']) == 0 and idle >= bound then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    deleted[#deleted + 1] = f['name']
  end
end
return deleted
"""


class DeadConsumerPruner:
    """Deletes the dead consumers of one ``Consumer``'s group on the streams it reads, at most once per the shorter of
    the idle times (and of a minute)."""

    def __init__(self, redis: Redis, settings: ConsumerSettings) -> None:
        self.redis = redis
        self.settings = settings
        self._prune = redis.register_script(_PRUNE)
        self._last_prune = float("-inf")
        self.pruned = 0  # dead consumers deleted from the group

    async def prune(self, streams: list[str], now: float) -> None:
        """Delete consumers with nothing pending idle longer than ``dead_consumer_idle_ms``, or than
        ``silent_consumer_idle_ms`` with no live replica heartbeat (killed instances)."""
        s = self.settings
        idle_ms, silent_ms = s.dead_consumer_idle_ms, s.silent_consumer_idle_ms
        if now - self._last_prune < min(idle_ms / 1000, silent_ms / 1000, 60.0):
            return
        self._last_prune = now
        for stream in streams:
            silent = await self._silent_consumers(stream) if s.service else []
            deleted = await self._prune(keys=[stream], args=[s.group, idle_ms, s.consumer, silent_ms, *silent])
            if deleted:
                self.pruned += len(deleted)
                logger.info("%s: deleted %d dead consumer(s) of %s (idle > %d ms, nothing pending): %s", s.group,
                            len(deleted), stream, idle_ms, ", ".join(map(as_text, deleted)))

    async def _silent_consumers(self, stream: str) -> list[str]:
        """Consumers of ``stream``'s group with nothing pending, idle past ``silent_consumer_idle_ms``, whose replica
        heartbeat is missing or as old (the script checks idle and pending again, atomically)."""
        silent_ms = self.settings.silent_consumer_idle_ms
        try:
            consumers: Any = await self.redis.xinfo_consumers(stream, self.settings.group)
        except ResponseError:  # no stream or group yet
            return []
        now_ms = int(time.time() * 1000)
        out: list[str] = []
        for c in consumers:
            name = as_text(c["name"])
            if name == self.settings.consumer or int(c["pending"]) or int(c["idle"]) < silent_ms:
                continue
            ts = await self.redis.hget(replica_heartbeat(self.settings.service or "", name), "ts")
            if ts is None or now_ms - int(ts) >= silent_ms:
                out.append(name)
        return out
