"""Concurrent admissions on one tenant: POST /v2/images from 1, 8 and 32 clients, beside the raw floor.

API: each client is a thread of this process with its own keep-alive connection to gunicorn (separate
processes, see benchmarks.quota.server), creating images for one fresh tenant whose image_count_total limit is a tenth
below the number of requests, so the last tenth is refused (413). Raw floor: the same number of threads,
each with its own psycopg connection, sending the ledger's conditional UPDATE and COMMIT on another fresh
tenant's usage row with the same limit. Both start together on a barrier; the rate is all requests
(admitted and refused) over the wall time from the barrier to the last thread's end.

Afterwards: the stored total must not pass the limit (overrun 0), and the API tenant's stored usage must
equal a recount (no drift).
"""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from sqlalchemy import Engine, text

from benchmarks import cpu
from benchmarks.quota.client import QuotaClient
from benchmarks.quota.dataset import drift_of, stored_total
from benchmarks.server import CONSTANT_PATH

CREATE_BODY = json.dumps({"name": "concurrent", "disk_format": "raw", "container_format": "bare"}).encode()
JSON = "application/json"
# The statement UsageLedger.charge sends for one image (without its updated_at), as the floor to compare with.
RAW_ADMISSION = (
    "UPDATE tenant_usage SET image_count_total = image_count_total + 1, version = version + 1"
    " WHERE tenant_id = %s AND image_count_total + 1 <= %s"
)
UNLIMITED = -1
WARMUP_REQUESTS = 25  # per client of the warm-up run: every gunicorn worker and thread has served a create


@dataclass(frozen=True)
class Run:
    """One concurrent run of `clients` clients on a fresh tenant."""

    path: str  # "api", "unlimited" (the same workload, the tenant without a limit) or "raw"
    clients: int
    requests: int
    admitted: int
    refused: int
    wall_seconds: float
    limit: int
    stored: int
    drift: int | None  # stored figures that differ from a recount (API only)
    cpus: cpu.Split
    server_cpus: float  # gunicorn's master and workers, average busy CPUs over the run

    @property
    def rate(self) -> float:
        """Admission decisions (admitted or refused) per second."""
        return self.requests / self.wall_seconds

    @property
    def overrun(self) -> int:
        """How far the stored total passed the limit (must be 0)."""
        return max(0, self.stored - self.limit)


def limit_for(requests: int) -> int:
    """A limit a tenth below the requests: some are refused, and the race at the limit is exercised."""
    return requests - requests // 10


def warm_up(port: int, admin: QuotaClient, clients: int) -> None:
    """Untimed creates on a throwaway tenant, so no timed run pays for a worker's first requests."""
    _api_run(port, admin, "bench-concurrent-warmup", clients, clients * WARMUP_REQUESTS, UNLIMITED)


@dataclass(frozen=True)
class Processes:
    """Whose CPU time a run splits out: the PostgreSQL server's and gunicorn's (master pids)."""

    postmaster: int | None
    gunicorn: int

    def snapshot(self) -> tuple[cpu.Snapshot, float]:
        """The counters now; gunicorn's read as cpu reads the postmaster's (itself, live and reaped children)."""
        return cpu.snapshot(self.postmaster), cpu.server_cpu(self.gunicorn)  # the same reading

    def split(self, before: tuple[cpu.Snapshot, float], wall_seconds: float) -> tuple[cpu.Split, float]:
        """Average busy CPUs since `before`: the machine's split, and gunicorn's."""
        after = self.snapshot()
        return cpu.split(before[0], after[0], wall_seconds), (after[1] - before[1]) / wall_seconds


def api_run(
    port: int,
    admin: QuotaClient,
    engine: Engine,
    clients: int,
    requests: int,
    processes: Processes,
    *,
    limited: bool = True,
) -> Run:
    """`clients` threads creating images for one tenant through the API (unlimited: the same, no limit)."""
    path = "api" if limited else "unlimited"
    tenant, limit = f"bench-{path}-{clients}", limit_for(requests) if limited else UNLIMITED
    before = processes.snapshot()
    wall, admitted, refused = _api_run(port, admin, tenant, clients, requests, limit)
    cpus, server_cpus = processes.split(before, wall)
    stored = stored_total(engine, tenant, "image_count_total")
    drift = len(drift_of(engine, tenant))
    # Nothing can overrun no limit: the run's "limit" is then all its requests.
    shown_limit = limit if limited else requests
    return Run(path, clients, requests, admitted, refused, wall, shown_limit, stored, drift, cpus, server_cpus)


def _api_run(
    port: int, admin: QuotaClient, tenant: str, clients: int, requests: int, limit: int
) -> tuple[float, int, int]:
    limits = json.dumps({"limits": {"image_count_total": limit}}).encode()
    admin.expect("PUT", f"/v1/tenants/{tenant}/limits", 200, limits, JSON)
    connections = [QuotaClient(port, tenant) for _ in range(clients)]
    for connection in connections:
        connection.expect("GET", CONSTANT_PATH, 200)  # connected before the clock starts

    def create(number: int) -> Callable[[], int]:
        client = connections[number]

        def send() -> int:
            return client.send("POST", "/v2/images", CREATE_BODY, JSON).status

        return send

    try:
        return _race([create(number) for number in range(clients)], requests, admitted=201, refused=413)
    finally:
        for connection in connections:
            connection.close()


def raw_run(database_url: str, engine: Engine, clients: int, requests: int, processes: Processes) -> Run:
    """`clients` psycopg connections sending the conditional UPDATE and COMMIT on one tenant's row."""
    tenant, limit = f"bench-raw-{clients}", limit_for(requests)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tenant_usage (tenant_id, image_size_total, image_count_total, image_count_uploading,"
                " image_stage_total, version, updated_at) VALUES (:tenant, 0, 0, 0, 0, 0, now())"
            ),
            {"tenant": tenant},
        )
    connections = [psycopg.connect(database_url) for _ in range(clients)]

    def admit(number: int) -> Callable[[], int]:
        connection = connections[number]

        def send() -> int:
            with connection.cursor() as cursor:
                cursor.execute(RAW_ADMISSION, (tenant, limit))
                admitted = cursor.rowcount == 1
            connection.commit()
            return 201 if admitted else 413

        return send

    try:
        before = processes.snapshot()
        wall, admitted, refused = _race([admit(number) for number in range(clients)], requests, 201, 413)
        cpus, server_cpus = processes.split(before, wall)
    finally:
        for connection in connections:
            connection.close()
    stored = stored_total(engine, tenant, "image_count_total")
    return Run("raw", len(connections), requests, admitted, refused, wall, limit, stored, None, cpus, server_cpus)


def _race(senders: list[Callable[[], int]], requests: int, admitted: int, refused: int) -> tuple[float, int, int]:
    """Run the senders in threads from one barrier, `requests` in all; wall time and the two outcomes."""
    per_client, extra = divmod(requests, len(senders))
    counts = [[0, 0] for _ in senders]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(senders) + 1)

    def work(number: int) -> None:
        try:
            barrier.wait()
            for _ in range(per_client + (number < extra)):
                status = senders[number]()
                if status == admitted:
                    counts[number][0] += 1
                elif status == refused:
                    counts[number][1] += 1
                else:
                    raise RuntimeError(f"an admission answered {status}")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(number,), name=f"client-{number}") for number in range(len(senders))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed") from errors[0]
    return wall, sum(count[0] for count in counts), sum(count[1] for count in counts)
