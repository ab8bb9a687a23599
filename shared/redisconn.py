"""One way to connect to Redis: a single server, a Redis Cluster, or a master found through Redis Sentinel.

- ``redis://host:port/db`` (or ``rediss://``, ``unix://``): one server.
- ``redis_cluster: true`` (env ``SENTINEL_REDIS_CLUSTER=true``) with ``redis_url`` naming any node: redis-py's
  ``RedisCluster`` discovers the others and routes each command to its slot's node.
- ``redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]``: the current master of ``master_name``
  as the Sentinels report it; after a failover the client reconnects to the new master (a write that reached the
  old master after it became a replica fails with a connection error, which every service retries). Every
  reconnection asks the Sentinels (``_SentinelConnection``): redis-py 8.1 reconnects a connection that failed while
  in use (its own retries, a single-connection client such as the alert commit's) to the address it had, so after
  a failover that brought the old master back as a replica such a connection met READONLY on every attempt and
  never reached the new master.

Clients speak bytes (``decode_responses=False``) and use hiredis when it is installed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection

from shared.errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"


def connect(url: str, *, cluster: bool = False) -> Any:
    """A redis-py asyncio client for ``url`` (see the module docstring); ConfigError for a URL it cannot use."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        if cluster:
            raise ConfigError(["redis_cluster: a Redis Cluster is not reached through Sentinel; use a node's "
                               "redis:// URL"])
        return _sentinel_master(url)
    if cluster:
        return RedisCluster.from_url(url, decode_responses=False, socket_keepalive=True)
    tcp = {} if url.startswith("unix:") else {"socket_keepalive": True}  # (a Unix socket has no keepalive option)
    return Redis.from_url(url, decode_responses=False, health_check_interval=30, **tcp)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """``redis+sentinel://[:pw@]h1:p1,h2:p2/master[/db]`` → (sentinel addresses, master name, db, password)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1]) if ":" in auth else unquote(auth)
    hosts: list[tuple[str, int]] = []
    for item in filter(None, netloc.split(",")):
        host, _, port = item.rpartition(":")
        try:
            hosts.append((host or item, int(port) if host else 26379))
        except ValueError as exc:
            raise ConfigError([f"redis_url: {url!r} — expected host:port pairs of Sentinels, got {item!r}"]) from exc
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise ConfigError([f"redis_url: {url!r} — expected redis+sentinel://host:port[,host:port]/master_name[/db]"])
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError as exc:
        raise ConfigError([f"redis_url: {url!r} — the database after the master name must be a number"]) from exc
    return hosts, unquote(path[0]), db, password


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the master the Sentinels name *now*, also when it reconnects while in use (redis-py's
    ``send_packed_command`` reconnects a dropped connection to its last address, bypassing the Sentinel lookup of
    ``connect``: after a failover that address may be a replica, forever)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


def _sentinel_master(url: str) -> Any:
    hosts, master, db, password = parse_sentinel_url(url)
    sentinel = Sentinel(hosts, socket_timeout=2.0, socket_keepalive=True)  # type: ignore[no-untyped-call]
    return sentinel.master_for(master, db=db, password=password, decode_responses=False, socket_keepalive=True,
                               health_check_interval=30, connection_class=_SentinelConnection)
