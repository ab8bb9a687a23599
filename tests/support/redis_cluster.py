"""A real Redis Cluster of three masters on loopback, for tests.

Three ``redis-server --cluster-enabled yes`` processes on free ports; slots are split in three ranges with
``CLUSTER ADDSLOTSRANGE`` and the nodes introduced with ``CLUSTER MEET`` (what ``redis-cli --cluster create`` does,
without needing redis-cli). Ready when every node reports ``cluster_state:ok``.

``replicas=1`` adds a replica node per master (``CLUSTER REPLICATE``); ``failover(port)`` then promotes the replica of
that master with ``CLUSTER FAILOVER`` (the old master becomes its replica), as an operator's planned failover does.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis

from shared.embedded_redis import find_redis_server

SLOTS = 16384


def _cluster_port() -> int:
    """A free port P with P + 10000 (the cluster bus) free as well; Redis refuses ports above 55535."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisClusterServers:
    """``with RedisClusterServers(tmp) as cluster: cluster.url`` (any node's URL; the client discovers the rest)."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.replicas = replicas
        self.ports: list[int] = []  # the masters' (at start)
        self.replica_ports: dict[int, list[int]] = {}  # master port (at start) -> its replicas' ports
        self.processes: dict[int, subprocess.Popen] = {}
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}/0" for p in self.ports]

    def _spawn(self, port: int) -> None:
        node_dir = self.data_dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir.resolve()),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--loglevel", "warning", "--logfile", str((node_dir / "redis.log").resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 30.0) -> str:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # no node left running behind a failed start
            raise

    def all_ports(self) -> list[int]:
        return self.ports + [p for ports in self.replica_ports.values() for p in ports]

    def _start(self, timeout: float) -> str:
        self.ports = []
        taken: list[int] = []
        while len(taken) < self.masters * (1 + self.replicas):
            port = _cluster_port()
            if port not in taken:
                taken.append(port)
        self.ports = taken[:self.masters]
        spare = taken[self.masters:]
        self.replica_ports = {m: [spare.pop() for _ in range(self.replicas)] for m in self.ports}
        for port in self.all_ports():
            self._spawn(port)
        clients = [self._client(p, timeout) for p in self.ports]
        step = SLOTS // self.masters
        for i, client in enumerate(clients):
            first = i * step
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * step - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        self._wait_ok(clients, timeout, known=self.masters)
        if self.replicas:
            ids = {p: _text(c.execute_command("CLUSTER", "MYID")) for p, c in zip(self.ports, clients)}
            for master, ports in self.replica_ports.items():
                for port in ports:
                    replica = self._client(port, timeout)
                    replica.execute_command("CLUSTER", "MEET", "127.0.0.1", master)
                    self._replicate(replica, ids[master], timeout)
                    replica.close()
            every = [self._client(p, timeout) for p in self.all_ports()]
            self._wait_ok(every, timeout)
            self._wait_synced(timeout)
            for client in every:
                client.close()
        for client in clients:
            client.close()
        return self.url

    def _replicate(self, replica: redis.Redis, master_id: str, timeout: float) -> None:
        """CLUSTER REPLICATE once the new node has learnt the master (gossip after MEET)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                replica.execute_command("CLUSTER", "REPLICATE", master_id)
                return
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _wait_synced(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for ports in self.replica_ports.values():
            for port in ports:
                client = self._client(port, timeout)
                while client.info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"replica {port} did not sync with its master")
                    time.sleep(0.1)
                client.close()

    def role(self, port: int) -> str:
        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            return str(client.info("replication").get("role"))
        finally:
            client.close()

    def replica_of(self, master_port: int) -> int:
        """A node replicating ``master_port`` now (roles change with failovers)."""
        for port in self.all_ports():
            if port == master_port or port not in self.processes:
                continue
            info = redis.Redis(host="127.0.0.1", port=port).info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master_port:
                return port
        raise LookupError(f"no replica of {master_port}")

    def failover(self, master_port: int, timeout: float = 30.0) -> dict:
        """``CLUSTER FAILOVER`` on a replica of ``master_port``: the replica takes its slots over (after catching
        up with the master, so no acknowledged write is lost). Returns the ports and how long until every node saw
        ``cluster_state:ok`` with the new master."""
        replica = self.replica_of(master_port)
        started = time.monotonic()
        client = redis.Redis(host="127.0.0.1", port=replica)
        client.execute_command("CLUSTER", "FAILOVER")
        deadline = started + timeout
        while client.info("replication").get("role") != "master":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica} was not promoted")
            time.sleep(0.05)
        promoted = time.monotonic() - started
        client.close()
        every = [self._client(p, timeout) for p in self.all_ports() if p in self.processes]
        self._wait_ok(every, timeout)
        for c in every:
            c.close()
        return {"old_master": master_port, "new_master": replica, "promoted_s": round(promoted, 3),
                "cluster_ok_s": round(time.monotonic() - started, 3)}

    def _client(self, port: int, timeout: float) -> redis.Redis:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                process = self.processes.get(port)
                if time.monotonic() > deadline or (process is not None and process.poll() is not None):
                    raise
                time.sleep(0.05)

    def _wait_ok(self, clients: list[redis.Redis], timeout: float, known: int | None = None) -> None:
        known = known or self.masters * (1 + self.replicas)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [c.execute_command("CLUSTER", "INFO") for c in clients]
            texts = [s.decode() if isinstance(s, bytes) else str(s) for s in states]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{known}" in t for t in texts):
                return
            time.sleep(0.1)
        raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")

    def kill(self, port: int) -> None:
        """SIGKILL one node (as a crash would)."""
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again on its port; it rejoins from its nodes.conf and AOF."""
        self._spawn(port)
        self._client(port, timeout).close()
        clients = [self._client(p, timeout) for p in self.all_ports() if p in self.processes]
        self._wait_ok(clients, timeout)
        for client in clients:
            client.close()

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
