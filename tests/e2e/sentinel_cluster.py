"""Redis with Sentinel as a deployment runs it: a master, a replica and three sentinels, all on 127.0.0.1.

The master and the replica are tests/servers.py's RedisServer (the replica told `REPLICAOF` once it runs);
the sentinels are `redis-server <conf> --sentinel`, as tests/functional/test_redis_sentinel.py starts one,
with a quorum of two so that a failover needs two of them to agree. The cluster is ready only once every
sentinel names the master, knows the replica and knows the two other sentinels: before that, a killed
master could not be failed over. Every wait polls an observed state against a deadline.
"""

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import port_for
import pytest
import redis

from tests.servers import REDIS_SERVER, STOP_DEADLINE, RedisServer

SERVICE = "locquota-cache"
SENTINELS = 3
QUORUM = 2
DOWN_AFTER_MILLISECONDS = 1000  # how long the master may be silent before a sentinel calls it down
# Bounds for waits on the servers; reaching one is a failure, never a synchronisation.
READY_DEADLINE = 30  # sentinels find each other through hello messages sent every 2 s
FAILOVER_DEADLINE = 30
POLL_SECONDS = 0.05


class SentinelCluster:
    """A master, its replica and three sentinels watching them as SERVICE."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master = RedisServer(self._directory("master"))
        self.replica = RedisServer(self._directory("replica"))
        self.sentinel_ports = [port_for.select_random() for _ in range(SENTINELS)]
        self.sentinel_processes: list[subprocess.Popen[bytes]] = []

    def _directory(self, name: str) -> Path:
        """A directory of its own for each server: their RDB files must not meet."""
        directory = self.workdir / name
        directory.mkdir(parents=True)
        return directory

    @property
    def sentinels(self) -> str:
        """The sentinels as locquota.redis_sentinels takes them."""
        return ", ".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        """Start the master, the replica (in sync), then the sentinels (see wait_until_ready)."""
        self.master.start()
        self.replica.start()
        self.replica.client().replicaof("127.0.0.1", self.master.port)
        poll_until(self._replica_in_sync, "the replica never came in sync with the master")
        for port in self.sentinel_ports:
            self.sentinel_processes.append(self._start_sentinel(port))

    def wait_until_ready(self) -> None:
        """Return once the cluster can fail over: the sentinels find each other in a few seconds, so a test
        may start its other servers meanwhile."""
        poll_until(
            self._sentinels_ready,
            lambda: f"the sentinels never all knew the master, the replica and each other:\n{self.logs()}",
        )

    def _start_sentinel(self, port: int) -> subprocess.Popen[bytes]:
        directory = self._directory(f"sentinel-{port}")
        config = directory / "sentinel.conf"  # the sentinel rewrites its config, so it must be writable
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MILLISECONDS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_DEADLINE * 1000}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        with (directory / "sentinel.log").open("wb") as log:
            return subprocess.Popen([REDIS_SERVER, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)

    def _replica_in_sync(self) -> bool:
        return self.replica.client().info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for process in self.sentinel_processes:
            assert process.poll() is None, f"a sentinel exited: {self.logs()}"
        states = [self._sentinel_state(port) for port in self.sentinel_ports]
        return all(
            state is not None
            and state["port"] == self.master.port
            and state["num-slaves"] == 1
            and state["num-other-sentinels"] == SENTINELS - 1
            for state in states
        )

    def _sentinel_state(self, port: int) -> dict[str, object] | None:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as sentinel:
                return sentinel.sentinel_master(SERVICE)
        except redis.RedisError:
            return None

    def named_masters(self) -> list[tuple[str, int] | None]:
        """The master each sentinel names now (None: it did not answer)."""
        named = []
        for port in self.sentinel_ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as sentinel:
                    address = sentinel.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                address = None
            named.append((redis_text(address[0]), int(address[1])) if address else None)
        return named

    def kill_master(self) -> None:
        """SIGKILL the master, as a crashed host would vanish; its port is closed once this returns."""
        process = self.master.process
        assert process is not None
        process.kill()
        process.wait(STOP_DEADLINE)
        process.stdout.close()
        self.master.process = None

    def wait_for_failover(self) -> float:
        """Poll until every sentinel names the replica and the replica says it is master; seconds it took."""
        started = time.monotonic()
        promoted = ("127.0.0.1", self.replica.port)

        def failed_over() -> bool:
            if any(named != promoted for named in self.named_masters()):
                return False
            return self.replica.client().info("replication").get("role") == "master"

        poll_until(
            failed_over,
            lambda: f"the sentinels did not fail over to the replica: {self.named_masters()}\n{self.logs()}",
            FAILOVER_DEADLINE,
        )
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the sentinels first (so they fail nothing over meanwhile), then whatever Redis still runs."""
        for process in self.sentinel_processes:
            process.terminate()
        for process in self.sentinel_processes:
            try:
                process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_DEADLINE)
        for server in (self.master, self.replica):
            if server.process is not None:
                server.stop()

    def logs(self) -> str:
        """The sentinels' logs, for a failure message."""
        return "\n".join(
            f"--- sentinel {port}:\n{(self.workdir / f'sentinel-{port}' / 'sentinel.log').read_text(errors='replace')}"
            for port in self.sentinel_ports
        )


def redis_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def poll_until(
    condition: Callable[[], bool], failure: str | Callable[[], str], deadline_seconds: float = READY_DEADLINE
) -> None:
    """Return once condition() holds; fail with `failure` (or what it returns) at the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(failure if isinstance(failure, str) else failure())
        time.sleep(POLL_SECONDS)  # polling an observed condition (a poll interval, not a synchronisation)


@pytest.fixture(name="sentinel_cluster")
def sentinel_cluster_fixture(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "redis")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
