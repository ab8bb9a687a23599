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
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
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
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
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

    def restart_as_replica(self, name: str, timeout: float = 30.0) -> None:
        """Start the server ``name`` again (same port and directory: it loads its AOF) as a replica of the current
        master; return once its link is up and the Sentinel sees it healthy (so the next failover can use it)."""
        master = self.master_port()
        self._server(name, "--replicaof", "127.0.0.1", str(master))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = redis.Redis(port=self.ports[name]).info("replication")
                if info.get("master_link_status") == "up" and self._sentinel_knows_replica():
                    return
            except redis.ConnectionError:
                pass
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
    replica. Each "Redis kill" is then a crash of the master and a failover, with a replica again afterwards."""

    def __init__(self, data_dir: Path) -> None:
        self.servers = RedisWithSentinel(data_dir)
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
        while time.monotonic() < deadline:
            try:
                current = self.servers.master_port()
                if current != port and redis.Redis(port=current).info("replication").get("role") == "master":
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError("the Sentinel did not promote the replica")
        self.failovers += 1
        self.servers.restart_as_replica(name, max(1.0, deadline - time.monotonic()))
        self.killed = None

    def kill(self) -> None:
        port = self.servers.master_port()
        process = self.servers.by_port[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.servers.processes.remove(process)
        self.killed = (self.servers.name_of(port), port)

    def stop(self) -> None:
        self.servers.stop()
