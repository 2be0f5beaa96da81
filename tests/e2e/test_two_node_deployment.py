"""Two API nodes and a scrubber beside each, on one PostgreSQL and Redis with Sentinel; the Redis master dies mid-run.

The deployment of docs/deployment.md, on one machine: two gunicorn masters (deploy/gunicorn.conf.py, two
workers each, each node with its own .ini, environment and prometheus multiprocess directory), a
`locquota scrub --daemon` beside each (delayed delete, a wake-up every second), one PostgreSQL, and Redis as
a master, a replica and three sentinels, named to locquota by its Sentinel settings. Tenants' clients
(tests/e2e/deployment_workload.py) create, upload, show, download, read usage and delete over both nodes in
turn; once they are well under way the Redis master is SIGKILLed, and they go on through the outage and
after the sentinels promoted the replica, until a bounded number of requests.

What must hold: every answer right (no 5xx, no request near the client's timeout, every 2xx body what the
tenant holds, a cached usage copy at most its TTL old), the cache used again after the failover, every
deleted image's data scrubbed exactly once by one of the two scrubbers (files gone, rows deleted, the
daemons' deletion counts summing to the deleted locations), usage on both nodes equal to the database's
recount of what remains (and `locquota reconcile --check` finding no drift), both nodes' /metrics whole,
and both daemons ending cleanly on SIGTERM.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from locations.models import Image, ImageStatus, Location, LocationStatus
from locquota.cli import cli
from locquota.db import make_engine
from tests.conftest import identity, write_ini
from tests.e2e.deployment_nodes import (
    ScrubberDaemon,
    api_node,
    get,
    samples_of,
    scrubber_daemon,
    value_of,
    wait_until_serving,
)
from tests.e2e.deployment_workload import REQUEST_TIMEOUT_SECONDS, Nodes, Progress, TenantClient
from tests.e2e.sentinel_cluster import (
    SERVICE,
    SentinelCluster,
    poll_until,
    sentinel_cluster_fixture,  # noqa: F401  (the fixture, by its name)
)

pytestmark = pytest.mark.engines("postgresql")

NODES = 2
WORKERS_PER_NODE = 2
THREADS_PER_WORKER = 4
TENANTS = 4
KILL_AFTER_REQUESTS = 80  # the master dies once the clients are well under way
REQUESTS_AFTER_FAILOVER = 120  # and they go on this long on the promoted replica
MAX_CYCLES = 60  # per client: the run's bound, whatever happens (about 8 requests a cycle)
CACHE_TTL_SECONDS = 5
# This test found a usage read that took its totals and its split in two snapshots (a scrubber's commit between
# them gave totals that were not the split's sum): fixed, and pinned by tests/functional/test_usage_read_consistency.py.
TORN_USAGE_READS_TOLERATED = False
# Bounds for waits; reaching one is a failure, never a synchronisation.
RUN_DEADLINE = 60
SETTLE_DEADLINE = 30


def node_settings(database_url: str, store_root: Path, sentinels: str) -> dict[str, str]:
    """One node's .ini: the shared database and store, the cache through Sentinel, delayed delete."""
    return {
        "locquota.database_url": database_url,
        "locquota.redis_url": "redis:///0",  # with sentinels the URL gives only the database (and credentials)
        "locquota.redis_sentinels": sentinels,
        "locquota.redis_sentinel_service": SERVICE,
        "locquota.usage_cache_ttl_seconds": str(CACHE_TTL_SECONDS),
        "locquota.auth_strategy": "noauth",
        "locquota.allow_insecure_noauth": "true",
        "locquota.enabled_stores": "file",
        "locquota.default_store": "file",
        "locquota.store.file.datadir": str(store_root),
        "locquota.delayed_delete": "true",
        "locquota.scrub_time": "0",
        "locquota.wakeup_time": "1",
    }


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


class Run:
    """The clients' run, with the Redis master killed in its middle."""

    def __init__(self, nodes: Nodes) -> None:
        self.progress, self.stop = Progress(TENANTS), threading.Event()
        self.clients = [
            TenantClient(n, nodes, self.progress, CACHE_TTL_SECONDS, torn_reads_tolerated=TORN_USAGE_READS_TOLERATED)
            for n in range(TENANTS)
        ]
        self.threads = [
            threading.Thread(target=self._run, args=(client,), name=client.tenant) for client in self.clients
        ]
        self.killed_at = self.failed_over_at = 0
        self.killed_when = 0.0  # monotonic
        self.failover_seconds = 0.0
        self.cache_reads_at_failover = 0

    def _run(self, client: TenantClient) -> None:
        try:
            client.run(self.stop, MAX_CYCLES)
        finally:
            self.progress.finish()

    def failures(self) -> list[str]:
        return [f"{client.tenant}: {client.failure!r}" for client in self.clients if client.failure is not None]

    def cache_reads(self) -> int:
        return sum(client.usage_reads["cache"] for client in self.clients)

    def through_failover(self, cluster: SentinelCluster) -> None:
        """Start the clients, kill the master mid-run, wait for the failover, let them go on, stop them."""
        for thread in self.threads:
            thread.start()
        try:
            assert self.progress.wait_for(KILL_AFTER_REQUESTS, RUN_DEADLINE), self.failures()
            self.killed_at, self.killed_when = self.progress.count, time.monotonic()
            cluster.kill_master()
            self.failover_seconds = cluster.wait_for_failover()
            self.failed_over_at, self.cache_reads_at_failover = self.progress.count, self.cache_reads()
            assert self.progress.wait_for(self.failed_over_at + REQUESTS_AFTER_FAILOVER, RUN_DEADLINE), self.failures()
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(RUN_DEADLINE)
        assert not any(thread.is_alive() for thread in self.threads), "a client never stopped"


def test_two_nodes_answer_right_through_a_redis_failover_and_scrub_each_deletion_once(
    database_url, store_root, engine, sentinel_cluster, tmp_path
):
    store_root.mkdir()
    settings = node_settings(database_url, store_root, sentinel_cluster.sentinels)
    with ExitStack() as stack:
        nodes = [
            stack.enter_context(
                api_node(f"node-{n}", settings, tmp_path / f"node-{n}", WORKERS_PER_NODE, THREADS_PER_WORKER)
            )
            for n in range(NODES)
        ]
        daemons = [
            stack.enter_context(scrubber_daemon(f"scrubber-{n}", settings, tmp_path / f"node-{n}"))
            for n in range(NODES)
        ]
        sentinel_cluster.wait_until_ready()  # meanwhile the nodes and daemons boot
        for node in nodes:
            wait_until_serving(node)
        for daemon in daemons:
            daemon.wait_for_first_pass()

        calls = Nodes([node.address for node in nodes])
        run = Run(calls)
        run.through_failover(sentinel_cluster)

        assert not run.failures(), "\n".join(run.failures())
        answers = calls.answers
        print(
            f"{len(answers)} requests; master killed after {run.killed_at}, failed over in "
            f"{run.failover_seconds:.1f} s ({run.failed_over_at - run.killed_at} requests meanwhile); slowest "
            f"{max(answer.seconds for answer in answers):.2f} s; usage reads "
            f"{[client.usage_reads for client in run.clients]}"
        )
        assert [answer for answer in answers if answer.status >= 500] == []
        assert max(answer.seconds for answer in answers) < REQUEST_TIMEOUT_SECONDS
        assert run.cache_reads() > run.cache_reads_at_failover, "no fresh usage copy came from the promoted replica"
        # Before the outage every drop reached Redis: a client never saw totals older than its own last change.
        # (Only the split by status could lag: a delayed delete moves bytes from active to pending_delete without
        # dropping the cached copy, a product bug: tests/functional/test_usage_read_consistency.py.)
        stale_totals_before_the_outage = [
            when
            for client in run.clients
            for when, totals_are_current in client.stale_reads
            if when < run.killed_when and not totals_are_current
        ]
        assert stale_totals_before_the_outage == []

        deleted = {image_id: size for client in run.clients for image_id, size in client.deleted.items()}
        kept = {image_id: size for client in run.clients for image_id, size in client.live.items()}
        assert deleted
        assert kept
        poll_until(
            lambda: pending_locations(engine) == 0, "the scrubbers left pending_delete locations", SETTLE_DEADLINE
        )
        assert_scrubbed_exactly_once(daemons, len(deleted))
        assert_store_and_rows(engine, store_root, deleted, kept)

        expected = {client.tenant: (sum(client.live.values()), len(client.live)) for client in run.clients}
        counted = recount(engine)
        assert {tenant: counted.pop(tenant, (0, 0)) for tenant in expected} == expected
        assert counted == {}
        assert_usage_settles_on_every_node(calls, expected)
        check_ini = write_ini(tmp_path / "check.ini", settings)
        reconciled = CliRunner().invoke(cli, ["--config", str(check_ini), "reconcile", "--check"])
        assert reconciled.exit_code == 0, reconciled.output
        for node in nodes:
            assert_metrics_whole(node.address)

        assert [daemon.stop() for daemon in daemons] == [0] * NODES  # SIGTERM: the pass in flight ends, exit 0


def pending_locations(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(
            select(func.count()).select_from(Location).where(Location.status == LocationStatus.PENDING_DELETE)
        )


def assert_scrubbed_exactly_once(daemons: list[ScrubberDaemon], deleted_locations: int) -> None:
    """The daemons' deletion counts sum to the deleted locations: none deleted twice, none failed."""

    def counted() -> list[float]:
        return [
            value_of(daemon.scrape() or {}, "locquota_scrubber_deletions_total", store="file") for daemon in daemons
        ]

    # A daemon counts a deletion as it records it: the last pass may still be counting when the rows show it.
    poll_until(lambda: sum(counted()) >= deleted_locations, lambda: f"deletions counted {counted()}", SETTLE_DEADLINE)
    print(f"deletions per scrubber: {counted()} of {deleted_locations}")
    assert sum(counted()) == deleted_locations
    for daemon in daemons:
        samples = daemon.scrape() or {}
        failures = [value for (name, _), value in samples.items() if name == "locquota_scrubber_failures_total"]
        assert sum(failures) == 0, (daemon.name, samples)


def assert_store_and_rows(engine: Engine, store_root: Path, deleted: dict[str, int], kept: dict[str, int]) -> None:
    """Deleted images: rows deleted, data gone. Kept ones: active, data there. Nothing else in the store."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(Image.id, Image.status, Location.status, Location.url, Location.size_bytes, Location.attempts)
            .join(Location, Location.image_id == Image.id)
        ).all()  # fmt: skip
    found = {str(row[0]): row for row in rows}
    assert sorted(found) == sorted([*deleted, *kept])  # one location each
    kept_files = set()
    for image_id, (_, image_status, status, url, size, attempts) in found.items():
        path = Path(unquote(url.removeprefix("file://")))
        if image_id in deleted:
            assert (image_status, status, attempts) == (ImageStatus.DELETED, LocationStatus.DELETED, 0), image_id
            assert not path.exists(), image_id
        else:
            assert (image_status, status, size) == (ImageStatus.ACTIVE, LocationStatus.ACTIVE, kept[image_id])
            assert path.stat().st_size == size
            kept_files.add(path)
    assert set(store_root.iterdir()) == kept_files  # no scratch file, no orphan


def recount(engine: Engine) -> dict[str, tuple[int, int]]:
    """Each tenant's charged bytes and counted images, recounted from the rows."""
    charged = (LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE)
    with engine.connect() as connection:
        size_by_owner = dict(
            connection.execute(
                select(Image.owner, func.sum(Location.size_bytes))
                .join(Location, Location.image_id == Image.id)
                .where(Location.status.in_(charged))
                .group_by(Image.owner)
            ).all()
        )
        images_by_owner = dict(
            connection.execute(
                select(Image.owner, func.count())
                .where(Image.status.not_in((ImageStatus.DELETED, ImageStatus.KILLED)))
                .group_by(Image.owner)
            ).all()
        )
    return {owner: (int(size_by_owner.get(owner, 0)), images_by_owner.get(owner, 0)) for owner in images_by_owner}


def assert_usage_settles_on_every_node(calls: Nodes, expected: dict[str, tuple[int, int]]) -> None:
    """Usage read from each node equals the recount; a cached copy may lag, by its TTL at most."""
    lagging: list[str] = []

    def settled() -> bool:
        lagging.clear()
        for tenant, (size, images) in expected.items():
            for node in range(len(calls.addresses)):
                answer = calls.call(node, "GET", "/v1/usage", identity(tenant))
                assert answer.status == 200, answer
                usage = answer.json()
                figures = (
                    usage["resources"]["image_size_total"]["usage"],
                    usage["resources"]["image_count_total"]["usage"],
                    usage["by_status"]["active"]["size_bytes"],
                    usage["by_status"]["pending_delete"]["size_bytes"],
                )
                if figures != (size, images, size, 0):
                    assert usage["freshness"]["source"] == "cache", (tenant, node, usage)
                    lagging.append(f"{tenant} on node {node}: {figures}")
        return not lagging

    poll_until(settled, lambda: f"usage never matched the recount {expected}: {lagging}", CACHE_TTL_SECONDS + 10)


def assert_metrics_whole(address: tuple[str, int]) -> None:
    """The node's scrape answers with every part up (the cache on the promoted replica), and no 5xx counted."""
    status, body = get(address, "/metrics", REQUEST_TIMEOUT_SECONDS)
    assert status == 200
    samples = samples_of(body)
    up = {
        dict(labels)["collector"]: value for (name, labels), value in samples.items() if name == "locquota_collector_up"
    }
    assert set(up.values()) == {1}, up
    assert "cache" in up
    assert value_of(samples, "locquota_cache_up") == 1
    server_errors = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "locquota_http_request_duration_seconds_count" and dict(labels)["status"].startswith("5")
    }
    assert server_errors == {}
    cache_errors = {
        dict(labels)["operation"]: value
        for (name, labels), value in samples.items()
        if name == "locquota_cache_errors_total" and value
    }
    print(f"{address}: cache errors {cache_errors}")
