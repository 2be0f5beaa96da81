"""Admissions/s for one tenant on one engine: client threads creating images through gunicorn for a fixed time.

As benchmarks.quota.concurrency: each client is a thread of this process with its own keep-alive connection to
an API server (benchmarks.quota.server's gunicorn, gthread workers in processes of their own), and every
request is POST /v2/images for one fresh tenant whose image_count_total limit (10^9) is never reached: each
runs the ledger's conditional UPDATE of the tenant's usage row and is admitted. An API server is attached to
one database node; the clients go round-robin over a run's API servers (on Galera, one per node that takes
writes). They start together on a barrier and each sends requests until the run's time is up: the rate is
what was admitted over the wall time from the barrier to the last client's end. A 503 (the app gave up
retrying a write) is counted; any other answer but 201 fails the benchmark. Afterwards the tenant's stored
count must equal what was admitted, and a recount.
"""

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from benchmarks.engines.cpu import Busy, CpuWatch
from benchmarks.engines.servers import Server
from benchmarks.quota.client import Answer, QuotaClient
from benchmarks.quota.concurrency import CREATE_BODY, JSON
from benchmarks.quota.dataset import drift_of, stored_total
from benchmarks.quota.server import gunicorn_server, quota_settings
from benchmarks.server import CONSTANT_PATH

ADMITTED, UNAVAILABLE = 201, 503
LIMITS = json.dumps({"limits": {"image_count_total": 10**9}}).encode()  # never reached: every request is admitted


@dataclass(frozen=True)
class ApiTier:
    """The API servers of one engine, one per database node: their ports and gunicorn masters' pids, node order."""

    ports: list[int]
    masters: list[int]


@dataclass(frozen=True)
class Admissions:
    """One timed run: `clients` clients on the API servers of `nodes` database nodes of one engine."""

    engine: str
    nodes: int
    clients: int
    wall_seconds: float
    admitted: int
    unavailable: int  # 503 answers
    stored: int  # the tenant's stored image_count_total afterwards
    drift: int  # stored figures that differ from a recount
    conflicts: int | None  # Galera: transactions aborted for another node's write, summed over nodes
    busy: Busy

    @property
    def rate(self) -> float:
        """Images admitted per second of wall time."""
        return self.admitted / self.wall_seconds


@contextmanager
def api_tier(server: Server, store_root: Path, redis_url: str, log_dir: Path) -> Iterator[ApiTier]:
    """One gunicorn per node of the engine (benchmarks.quota.server), Redis on as in the quota part, then stopped."""
    with ExitStack() as stack:
        started = [
            stack.enter_context(
                gunicorn_server(
                    quota_settings(url, store_root, redis_url), log_dir / f"gunicorn-{server.engine}-{node}.log"
                )
            )
            for node, url in enumerate(server.urls, start=1)
        ]
        yield ApiTier([port for port, _pid in started], [pid for _port, pid in started])


def admit(
    server: Server, tier: ApiTier, check: Engine, *, tenant: str, nodes: int, clients: int, seconds: float
) -> Admissions:
    """Time `clients` clients over the API servers of the first `nodes` nodes, on `tenant` (fresh)."""
    ports, masters = tier.ports[:nodes], tier.masters[:nodes]
    admin = QuotaClient(ports[0], "bench-admin", "admin")
    try:
        admin.expect("PUT", f"/v1/tenants/{tenant}/limits", 200, LIMITS, JSON)
    finally:
        admin.close()
    server.wait_until_applied()  # every node knows the limit before its first admission
    connections = [QuotaClient(ports[number % nodes], tenant) for number in range(clients)]
    try:
        for connection in connections:
            connection.expect("GET", CONSTANT_PATH, 200)  # connected before the clock starts
        before = server.conflicts()
        watch = CpuWatch(server.pids, masters)
        wall, statuses = _race_for(connections, seconds)
        busy = watch.busy()
        after = server.conflicts()
    finally:
        for connection in connections:
            connection.close()
    admitted = statuses[ADMITTED]
    stored = stored_total(check, tenant, "image_count_total")
    drift = len(drift_of(check, tenant))
    if stored != admitted or drift:
        raise RuntimeError(f"{tenant}: {admitted} admitted but {stored} stored, {drift} figure(s) off a recount")
    conflicts = None if before is None or after is None else after - before
    return Admissions(
        server.engine, nodes, clients, wall, admitted, statuses[UNAVAILABLE], stored, drift, conflicts, busy
    )


def _race_for(clients: list[QuotaClient], seconds: float) -> tuple[float, Counter[int]]:
    """Each client in a thread from one barrier, sending creates until `seconds` have passed; wall and statuses."""
    counts: list[Counter[int]] = [Counter() for _ in clients]
    unexpected: list[Answer] = []
    errors: list[BaseException] = []
    clock: list[float] = []
    barrier = threading.Barrier(len(clients) + 1, action=lambda: clock.append(time.perf_counter()))

    def work(number: int) -> None:
        try:
            barrier.wait()
            deadline = clock[0] + seconds
            while True:
                answer = clients[number].send("POST", "/v2/images", CREATE_BODY, JSON)
                counts[number][answer.status] += 1
                if answer.status not in (ADMITTED, UNAVAILABLE):
                    unexpected.append(answer)
                    return
                if time.perf_counter() >= deadline:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(number,), name=f"client-{number}") for number in range(len(clients))]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - clock[0]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed") from errors[0]
    if unexpected:
        answer = unexpected[0]
        raise RuntimeError(f"an admission answered {answer.status}: {answer.body[:300]!r}")
    return wall, sum(counts, Counter())
