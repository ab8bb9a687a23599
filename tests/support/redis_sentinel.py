"""A real Redis master, one replica and one Sentinel on loopback, for failover tests.

``failover()`` asks the Sentinel to promote the replica (SENTINEL FAILOVER, which needs no quorum of other
Sentinels); the old master becomes a replica of the new one. ``kill_master()`` is the crash instead: SIGKILL of the
master's process, the Sentinel sees it down after 1 s and promotes the replica. ``cut_replica()`` stops replication
while both stay up (the replica falls behind: what the master acknowledges meanwhile is on the master alone).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from shared.embedded_redis import find_redis_server, free_port

MASTER_NAME = "sentinel-test"


class RedisWithSentinel:
    def __init__(self, data_dir: Path, *, down_after_ms: int = 1000) -> None:
        self.data_dir = Path(data_dir)
        self.down_after_ms = down_after_ms
        self.binary = find_redis_server()
        self.ports: dict[str, int] = {}
        self.processes: list[subprocess.Popen] = []
        self.by_port: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.ports['sentinel']}/{MASTER_NAME}/0"

    def _server(self, name: str, *extra: str) -> None:
        node = self.data_dir / name
        node.mkdir(parents=True, exist_ok=True)
        self.processes.append(process := subprocess.Popen(
            [self.binary, "--port", str(self.ports[name]), "--bind", "127.0.0.1", "--dir", str(node.resolve()),
             "--save", "", "--appendonly", "yes", "--loglevel", "warning",
             # (one replica: nothing to wait for before a full sync; the default 5 s stalls every WAIT after a failover)
             "--repl-diskless-sync-delay", "0",
             "--logfile", str((node / "redis.log").resolve()), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.by_port[self.ports[name]] = process

    def start(self, timeout: float = 20.0) -> str:
        self.ports = {name: free_port() for name in ("a", "b", "sentinel")}
        self._server("a")
        self._server("b", "--replicaof", "127.0.0.1", str(self.ports["a"]))
        conf = self.data_dir / "sentinel.conf"
        conf.write_text(
            f"port {self.ports['sentinel']}\nbind 127.0.0.1\ndir {self.data_dir.resolve()}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.ports['a']} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n")
        self.processes.append(subprocess.Popen(
            [self.binary, str(conf), "--sentinel", "--logfile", str((self.data_dir / "sentinel.log").resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                replica = redis.Redis(port=self.ports["b"]).info("replication")
                known = redis.Redis(port=self.ports["sentinel"]).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                if replica.get("master_link_status") == "up" and known and self._sentinel_knows_replica():
                    return self.url
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("master, replica and sentinel did not come up")

    def _sentinel_knows_replica(self) -> bool:
        """The Sentinel has discovered the replica and sees it healthy (else a FAILOVER answers NOGOODSLAVE)."""
        replicas = redis.Redis(port=self.ports["sentinel"]).execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        for fields in replicas or []:
            info = dict(zip(fields[::2], fields[1::2])) if isinstance(fields, list) else fields
            flags = info.get(b"flags", info.get("flags", b""))
            flags = flags.decode() if isinstance(flags, bytes) else str(flags)
            if "slave" in flags and "down" not in flags and "disconnected" not in flags:
                return True
        return False

    def master_port(self) -> int:
        host, port = redis.Redis(port=self.ports["sentinel"]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def failover(self, timeout: float = 20.0) -> int:
        """Promote the replica; return the new master's port once the Sentinel reports it and it accepts writes."""
        before = self.master_port()
        deadline = time.monotonic() + timeout
        while True:  # the Sentinel refuses while its view of the replica is stale (NOGOODSLAVE): ask again
            try:
                redis.Redis(port=self.ports["sentinel"]).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
                break
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while time.monotonic() < deadline:
            port = self.master_port()
            if port != before and redis.Redis(port=port).info("replication").get("role") == "master":
                return port
            time.sleep(0.1)
        raise TimeoutError("the failover did not complete")

    def replica_port(self) -> int:
        master = self.master_port()
        return next(port for name, port in self.ports.items() if name in ("a", "b") and port != master)

    def cut_replica(self) -> None:
        """Stop replication without stopping either server: the replica drops its link to the master and cannot
        come back (it now authenticates with a password the master does not have), so it falls behind; it keeps
        what it had and can still be promoted."""
        replica = redis.Redis(port=self.replica_port())
        replica.config_set("masterauth", "not-the-masters")
        replica.execute_command("CLIENT", "KILL", "TYPE", "master")
        deadline = time.monotonic() + 10
        while replica.info("replication").get("master_link_status") == "up":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica's link did not go down")
            time.sleep(0.05)

    def kill_master(self, timeout: float = 30.0) -> int:
        """SIGKILL the master's process (no shutdown, no last write); return the new master's port once the
        Sentinel has promoted the replica and it accepts writes."""
        before = self.master_port()
        process = self.by_port[before]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.master_port()
                if port != before and redis.Redis(port=port).info("replication").get("role") == "master":
                    return port
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the Sentinel did not promote the replica")

    def name_of(self, port: int) -> str:
        return next(name for name, p in self.ports.items() if p == port)

    def settled(self) -> bool:
        """No failover in progress, the master the Sentinel names is a master, and it has a replica with its link up
        that the Sentinel sees healthy (a failover could happen now)."""
        try:
            info = redis.Redis(port=self.ports["sentinel"]).execute_command("SENTINEL", "MASTER", MASTER_NAME)
            fields = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
            flags = fields.get(b"flags", fields.get("flags", b""))
            flags = flags.decode() if isinstance(flags, bytes) else str(flags)
            if "failover" in flags or "down" in flags:
                return False
            replication = redis.Redis(port=self.master_port()).info("replication")
            up = any(isinstance(v, dict) and v.get("state") == "online" for k, v in replication.items()
                     if k.startswith("slave"))
            return replication.get("role") == "master" and up and self._sentinel_knows_replica()
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def restart_as_replica(self, name: str, timeout: float = 30.0) -> None:
        """Start the server ``name`` again (same port and directory: it loads its AOF) as a replica of the current
        master; return once ``settled()`` (the Sentinel may meanwhile have failed over again, on a loaded machine:
        any master with a healthy replica will do)."""
        self._server(name, "--replicaof", "127.0.0.1", str(self.master_port()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.settled():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} did not come back as a replica")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


class FailoverOnKill:
    """``RedisWithSentinel`` behind the ``kill()`` / ``start()`` / ``url`` / ``stop()`` of ``EmbeddedRedis``, for
    harnesses that SIGKILL their Redis and start it again (the chaos run): ``kill()`` SIGKILLs the master,
    ``start()`` waits for the Sentinel to promote the replica, then brings the killed server back as the new master's
    replica. Each "Redis kill" is then a crash of the master and a failover, with a replica again afterwards.

    ``lag_s``: before each kill, replication is cut (``cut_replica``) for that long, so the master dies ahead of the
    replica: what it acknowledged meanwhile is lost in the failover unless the writers waited for the replica (the
    harness's event loop is blocked meanwhile; the services run in their own processes)."""

    def __init__(self, data_dir: Path, *, down_after_ms: int = 2000, lag_s: float = 0.0) -> None:
        self.servers = RedisWithSentinel(data_dir, down_after_ms=down_after_ms)
        self.lag_s = lag_s
        self.killed: tuple[str, int] | None = None  # (name, port) of the master killed and not back yet
        self.failovers = 0

    @property
    def url(self) -> str:
        return self.servers.url

    def start(self, timeout: float = 60.0) -> None:
        if not self.servers.processes:
            self.servers.start(timeout)
            return
        if self.killed is None:
            return
        name, port = self.killed
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the promotion done (not merely under way) before the restart
            try:
                current = self.servers.master_port()
                info = redis.Redis(port=self.servers.ports["sentinel"]).execute_command(
                    "SENTINEL", "MASTER", MASTER_NAME)
                flags = (dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info).get(b"flags", b"")
                if (current != port and b"failover" not in flags
                        and redis.Redis(port=current).info("replication").get("role") == "master"):
                    break
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError("the Sentinel did not promote the replica")
        self.failovers += 1
        self.servers.restart_as_replica(name, max(1.0, deadline - time.monotonic()))
        self.killed = None

    def kill(self) -> None:
        if self.lag_s:
            self.servers.cut_replica()
            time.sleep(self.lag_s)
        port = self.servers.master_port()
        process = self.servers.by_port[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.servers.processes.remove(process)
        self.killed = (self.servers.name_of(port), port)

    def stop(self) -> None:
        self.servers.stop()
