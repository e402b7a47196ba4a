from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import fixture_plugins


def pytest_configure(config: pytest.Config) -> None:
    fixture_plugins.install()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The builders read PYWATS_TRANSPORT_* variables; a developer's shell must not change test results.
    for name in list(os.environ):
        if name.startswith(("PYWATS_TRANSPORT_", "WATS_")):
            monkeypatch.delenv(name)


def free_port(port: int = 0) -> int:
    """A port free on 127.0.0.1 now (``port`` itself, if given and free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on 127.0.0.1 that a test may kill and start again on the same port."""

    def __init__(self, binary: str, workdir: Path, *args: str, port: int = 0) -> None:
        self.binary, self.workdir, self.args = binary, workdir, args
        self.port = free_port(port)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    pytest.fail(f"redis-server could not start (exit code {self.proc.poll()})")
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs the Debian package redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real three-node Redis Cluster for the module."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        pytest.skip("redis-server and redis-cli are not installed (.ci/run installs the Debian package redis-server)")
    cluster = RedisCluster(binary, cli, tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.kill()


@pytest.fixture(scope="module")
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The cluster's URL, naming one node that does not hold our keys' slot."""
    return redis_cluster.url_without(b"{pwt}")


@pytest.fixture(params=["server", "cluster"])
def fleet_url(request: pytest.FixtureRequest) -> str:
    """The fleet tier's Redis: one server, or a Redis Cluster."""
    return str(request.getfixturevalue("redis_url" if request.param == "server" else "redis_cluster_url"))


@pytest.fixture
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs the Debian package redis-server)")
    return binary


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone, which it may kill and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs the Debian package redis-server)")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.kill()


def _bus_port_free() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, so both below 65536."""
    import random

    for _ in range(200):
        port = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A real three-node Redis Cluster on 127.0.0.1 (no replicas), made with ``redis-cli --cluster create``."""

    def __init__(self, binary: str, cli: str, workdir: Path) -> None:
        self.nodes = [RedisServer(binary, workdir / f"node{i}", "--cluster-enabled", "yes", "--cluster-config-file",
                                  str(workdir / f"node{i}" / "nodes.conf"), "--cluster-node-timeout", "2000",
                                  port=_bus_port_free()) for i in range(3)]
        for node in self.nodes:
            node.workdir.mkdir(parents=True)
        self.cli = cli

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        made = subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                               "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if made.returncode != 0:
            self.kill()
            pytest.fail(f"redis-cli --cluster create failed: {made.stdout[-500:]} {made.stderr[-500:]}")
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every node says the cluster is whole (after a start, or a node's restart)."""
        deadline = time.monotonic() + 20
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _ok(self, node: RedisServer) -> bool:
        info = subprocess.run([self.cli, "-p", str(node.port), "cluster", "info"], capture_output=True, text=True,
                              timeout=10).stdout
        return "cluster_state:ok" in info

    def owner(self, key: bytes) -> RedisServer:
        """The node that holds ``key``'s slot."""
        import redis
        from redis.crc import key_slot

        slot = key_slot(key)
        client = redis.Redis(port=self.nodes[0].port)
        try:
            port = next(int(primary[1]) for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS")
                        if start <= slot <= end)
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)

    def url_without(self, key: bytes) -> str:
        """A cluster URL whose one startup node does not own ``key``'s slot: the client must find the owner."""
        owner = self.owner(key)
        other = next(n for n in self.nodes if n is not owner)
        return f"redis+cluster://127.0.0.1:{other.port}"

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class RedisSentinelSetup:
    """A primary, its replica and one sentinel watching them as ``pwt``, all on 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path) -> None:
        for name in ("primary", "replica", "sentinel"):
            (workdir / name).mkdir(parents=True)
        self.binary, self.workdir = binary, workdir
        self.primary = RedisServer(binary, workdir / "primary")
        self.replica = RedisServer(binary, workdir / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/pwt"

    def start(self) -> None:
        import redis

        self.primary.start()
        self.replica.start()
        conf = self.workdir / "sentinel" / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {conf.parent}\n"
                        f"sentinel monitor pwt 127.0.0.1 {self.primary.port} 1\n"
                        "sentinel down-after-milliseconds pwt 500\nsentinel failover-timeout pwt 3000\n")
        self.proc = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:  # until the sentinel answers and knows the replica (it learns it from the primary)
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as sentinel:
                    if sentinel.sentinel_slaves("pwt"):
                        return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail("the sentinel did not start watching the primary and its replica")
            time.sleep(0.1)

    def primary_port(self) -> int:
        import redis

        with redis.Redis(port=self.port, socket_timeout=1) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name("pwt")[1])

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.primary.kill()
        self.replica.kill()


@pytest.fixture
def redis_sentinel(tmp_path: Path, redis_binary: str) -> Iterator[RedisSentinelSetup]:
    """A fresh sentinel setup for one test, which may kill the primary."""
    setup = RedisSentinelSetup(redis_binary, tmp_path)
    setup.start()
    yield setup
    setup.kill()
