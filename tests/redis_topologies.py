"""Real Redis Cluster and Sentinel set-ups on loopback, for the remote-tier tests.

Both run Debian's ``redis-server`` (Sentinel is ``redis-server <conf> --sentinel``),
one process per node, each in its own directory under the test's ``tmp_path``,
started and stopped by process id through :class:`RedisServer`'s lifecycle
(bounded waits everywhere: a set-up that is not healthy in time raises):

- :class:`RedisClusterSet`: 3 primaries + 3 replicas (``--cluster-replicas 1``),
  ``cluster-node-timeout`` 1000 ms, so a SIGKILLed primary's replica is promoted
  within a few seconds. ``url`` is LMCache's ``redis-cluster://`` form.
- :class:`RedisSentinelSet`: a primary, a replica and 3 sentinels
  (quorum 2, ``down-after-milliseconds`` 1000); ``url`` is LMCache's
  ``redis-sentinel://`` form, its service name :data:`SERVICE`, which LMCache
  reads from ``REDIS_SERVICE_NAME``.

Without ``redis-server`` the constructors raise ``FileNotFoundError`` naming the
Debian package; the tests that need it fail loudly instead of skipping.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.remote_servers import (
    HOST,
    RedisServer,
    redis_command,
)

SERVICE = "lmcache-primary"
NODE_TIMEOUT_MS = 1000
READY_S = 30.0


def redis_cli(port: int, *words: str, timeout_s: float = 10.0) -> str:
    """``redis-cli -p port words...``: its stdout (raises on a non-zero exit)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise FileNotFoundError("redis-cli is not installed (Debian: apt-get install -y redis-server)")
    out = subprocess.run([cli, "-h", HOST, "-p", str(port), *words], capture_output=True, text=True, timeout=timeout_s, check=True)
    return out.stdout


def running(setup: RedisClusterSet | RedisSentinelSet) -> Iterator[RedisClusterSet | RedisSentinelSet]:
    """Start ``setup``, yield it, stop it (by pid) however the test ended: a fixture body."""
    try:
        yield setup.start()
    finally:
        setup.stop()


def _wait(what: str, ok: object, timeout_s: float = READY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ok():  # type: ignore[operator]
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s")


def wait_replicated(port: int, timeout_s: float = READY_S) -> None:
    """Until the primary at ``port``'s writes reached a replica (``WAIT 1`` counts one).

    A replica just started may still be in its first full sync (on two busy
    cores, for longer than one ``WAIT``'s 5 s), when ``WAIT`` counts none; so it
    is asked again until ``timeout_s``.
    """
    _wait(f"primary {port}'s replica in sync (WAIT 1)", lambda: redis_cli(port, "wait", "1", "5000").strip() == "1", timeout_s)


def cluster_port(tries: int = 200) -> int:
    """A free port whose cluster-bus port (+10000, below 65536) is free too."""
    for _ in range(tries):
        port = random.randint(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class ClusterNode(RedisServer):
    """One cluster node: ``cluster-enabled``, its own directory for ``nodes.conf``."""

    def command(self, port: int) -> list[str]:
        return [*super().command(port), "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no"]  # fmt: skip


class SentinelNode(RedisServer):
    """One sentinel watching the primary at ``primary_port``."""

    def __init__(self, log_path: Path, primary_port: int) -> None:
        super().__init__(log_path)
        self.primary_port = primary_port

    def command(self, port: int) -> list[str]:
        conf = self.log_path.parent / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind {HOST}\nprotected-mode no\ndir {self.log_path.parent}\n"
            f"sentinel monitor {SERVICE} {HOST} {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        assert self.executable is not None
        return [self.executable, str(conf), "--sentinel"]


class RedisClusterSet:
    """3 primaries + 3 replicas on loopback."""

    def __init__(self, root: Path, size: int = 6) -> None:
        self.nodes = [ClusterNode(root / f"node{i}" / "redis.log") for i in range(size)]
        if self.nodes[0].executable is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install -y redis-server)")

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes[:3])

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.port = cluster_port()
            node.start()
        redis_cli(self.nodes[0].port, "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),  # type: ignore[arg-type]
                  "--cluster-replicas", "1", "--cluster-yes", timeout_s=60)  # fmt: skip
        self.wait_healthy()
        return self

    def roles(self) -> dict[int, str]:
        """port -> "master" / "slave" for every running node, from CLUSTER NODES of a live node."""
        live = next(n for n in self.nodes if n.is_running())
        out = {}
        for line in redis_cli(live.port, "cluster", "nodes").splitlines():  # type: ignore[arg-type]
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            flags = parts[2].split(",")
            if "fail" not in flags and "fail?" not in flags:
                out[port] = "master" if "master" in flags else "slave"
        return out

    def primaries(self) -> list[ClusterNode]:
        roles = self.roles()
        return [n for n in self.nodes if n.is_running() and roles.get(n.port) == "master"]  # type: ignore[arg-type]

    def wait_healthy(self, timeout_s: float = READY_S) -> None:
        """Every slot served by a live primary, as every live node sees it."""

        def ok() -> bool:
            live = [n for n in self.nodes if n.is_running()]
            infos = [redis_cli(n.port, "cluster", "info") for n in live]  # type: ignore[arg-type]
            return all("cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos) and len(self.primaries()) == 3

        _wait("a healthy cluster (3 primaries, 16384 slots ok)", ok, timeout_s)

    def replicate(self, timeout_s: float = READY_S) -> None:
        """Wait until every primary's writes reached its replica (see :func:`wait_replicated`)."""
        for node in self.primaries():
            wait_replicated(node.port, timeout_s)  # type: ignore[arg-type]

    def keys_per_primary(self) -> dict[int, int]:
        return {n.port: int(redis_cli(n.port, "dbsize")) for n in self.primaries()}  # type: ignore[misc]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinelSet:
    """A primary, its replica and 3 sentinels on loopback."""

    def __init__(self, root: Path) -> None:
        self.primary = RedisServer(root / "primary" / "redis.log")
        self.replica = RedisServer(root / "replica" / "redis.log")
        self.sentinels: list[SentinelNode] = []
        self.root = root
        if self.primary.executable is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install -y redis-server)")

    @property
    def url(self) -> str:
        return "redis-sentinel://" + ",".join(f"{HOST}:{s.port}" for s in self.sentinels)

    def start(self) -> RedisSentinelSet:
        self.primary.start()
        self.replica.start()
        redis_cli(self.replica.port, "replicaof", HOST, str(self.primary.port))  # type: ignore[arg-type]
        self.sentinels = [SentinelNode(self.root / f"sentinel{i}" / "sentinel.log", self.primary.port) for i in range(3)]  # type: ignore[arg-type]
        for s in self.sentinels:
            s.start()
        _wait("the replica in sync", lambda: "master_link_status:up" in redis_cli(self.replica.port, "info", "replication"))  # type: ignore[arg-type]
        _wait("sentinels that see each other", lambda: all(self._sentinel_field(s, "num-other-sentinels") == "2" for s in self.sentinels))
        return self

    def _sentinel_fields(self, sentinel: SentinelNode, *fields: str) -> list[str]:
        """``fields`` of the sentinel's ``SENTINEL MASTER`` reply (one query; "" for a missing one)."""
        lines = redis_cli(sentinel.port, "sentinel", "master", SERVICE).split()  # type: ignore[arg-type]
        return [lines[lines.index(f) + 1] if f in lines else "" for f in fields]

    def _sentinel_field(self, sentinel: SentinelNode, field: str) -> str:
        return self._sentinel_fields(sentinel, field)[0]

    def primary_port(self) -> int:
        """The port the sentinels name as primary now."""
        return int(redis_cli(self.sentinels[0].port, "sentinel", "get-master-addr-by-name", SERVICE).split()[1])  # type: ignore[arg-type]

    def wait_failover(self, old_port: int, timeout_s: float = READY_S) -> int:
        _wait(f"a new primary instead of {old_port}", lambda: self.primary_port() != old_port, timeout_s)
        port = self.primary_port()
        _wait(f"the new primary {port} taking writes", lambda: redis_command(port, "SET", "lmcache-ascend-probe", "1") == b"+OK", timeout_s)
        return port

    def replicate(self, timeout_s: float = READY_S) -> None:
        wait_replicated(self.primary_port(), timeout_s)

    def describe(self) -> str:
        """Each sentinel's primary and its flags, each live server's role and key count: what a
        failed failover test reports."""
        views = []
        for s in self.sentinels:
            try:
                views.append(f"sentinel {s.port}: ip/port/flags " + " ".join(self._sentinel_fields(s, "ip", "port", "flags")))
            except (OSError, subprocess.SubprocessError) as e:
                views.append(f"sentinel {s.port}: {e!r}")
        for name, server in (("primary", self.primary), ("replica", self.replica)):
            if not server.is_running():
                views.append(f"{name} {server.port}: not running")
                continue
            role = next((line for line in redis_cli(server.port, "info", "replication").splitlines() if line.startswith("role:")), "?")  # type: ignore[arg-type]
            views.append(f"{name} {server.port}: {role.strip()}, {redis_cli(server.port, 'dbsize').strip()} keys")  # type: ignore[arg-type]
        return "; ".join(views)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            server.stop()
