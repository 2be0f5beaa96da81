"""The engines part (issue 19): admissions/s for one tenant and scrubber deletions/s on PostgreSQL, MariaDB and a
three-node Galera cluster, every server started in this run and durable.

Admissions (benchmarks.engines.admissions): client threads over gunicorn, on PostgreSQL, on MariaDB, on Galera
with every writer on node 1 (as a load balancer that sends all writes to one node does), and on Galera with
writers on the three nodes. Scrubbers (benchmarks.engines.scrubbers): one on PostgreSQL, one on MariaDB, one on
Galera node 1, then three on Galera, one per node, each run on a fresh backlog. Galera's conflicts (transactions
it aborted for another node's write) are counted over each run.
"""

import tempfile
import time
from pathlib import Path

import click

from benchmarks.engines.admissions import Admissions, admit, api_tier
from benchmarks.engines.scrubbers import Scrub, scrub
from benchmarks.engines.servers import GALERA, MARIADB, POSTGRESQL, engine_servers
from benchmarks.quota.server import GUNICORN_THREADS, GUNICORN_WORKERS, redis_server
from benchmarks.report import load_average, print_facts, print_rows
from benchmarks.scrubber import SCRUB_BATCH_SIZE, SCRUB_POOL_SIZE
from locquota.db import make_engine

FULL_CLIENTS, SMOKE_CLIENTS = 8, 4
FULL_SECONDS, SMOKE_SECONDS = 10.0, 0.5
FULL_WARMUP_SECONDS, SMOKE_WARMUP_SECONDS = 2.0, 0.2  # untimed, on a tenant of its own, before each run
FULL_BACKLOG, SMOKE_BACKLOG = 20_000, 200
# Per engine: the numbers of nodes that take writes (admissions) and that run a scrubber, one run each.
NODE_COUNTS = {POSTGRESQL: (1,), MARIADB: (1,), GALERA: (1, 3)}
NAMES = {POSTGRESQL: "PostgreSQL", MARIADB: "MariaDB", GALERA: "Galera"}


def benchmark(admin_url: str, *, smoke: bool, durable: bool = True) -> None:
    """Start MariaDB and Galera beside the PostgreSQL server at admin_url, run both measurements, print them."""
    clients = SMOKE_CLIENTS if smoke else FULL_CLIENTS
    seconds, warmup = (SMOKE_SECONDS, SMOKE_WARMUP_SECONDS) if smoke else (FULL_SECONDS, FULL_WARMUP_SECONDS)
    backlog_size = SMOKE_BACKLOG if smoke else FULL_BACKLOG
    started = time.perf_counter()
    with (
        engine_servers(admin_url, durable=durable) as servers,
        redis_server() as redis_url,
        tempfile.TemporaryDirectory(prefix="locquota-engines-bench-") as workdir,
    ):
        work = Path(workdir)
        store_root = (work / "api-store").resolve()
        store_root.mkdir()
        print_facts(
            [(NAMES[server.engine], f"{server.version}; {server.durability}") for server in servers]
            + [("started", f"the servers up and migrated in {time.perf_counter() - started:.1f} s")]
        )
        _print_workload(clients, seconds, warmup, backlog_size)
        admissions: list[Admissions] = []
        scrubs: list[Scrub] = []
        for server in servers:
            check = make_engine(server.check_url)
            try:
                with api_tier(server, store_root, redis_url, work) as tier:
                    for nodes in NODE_COUNTS[server.engine]:
                        name = f"{server.engine}-{nodes}"
                        arguments = {"nodes": nodes, "clients": clients}
                        admit(server, tier, check, tenant=f"bench-engines-warmup-{name}", seconds=warmup, **arguments)
                        run = admit(server, tier, check, tenant=f"bench-engines-{name}", seconds=seconds, **arguments)
                        click.echo(f"admissions, {_writers(run.engine, run.nodes)}: {run.rate:.0f}/s")
                        admissions.append(run)
                for scrubbers in NODE_COUNTS[server.engine]:
                    done = scrub(server, check, work, scrubbers=scrubbers, backlog_size=backlog_size)
                    click.echo(f"scrubbers, {_writers(done.engine, done.scrubbers)}: {done.rate:.0f} deleted/s")
                    scrubs.append(done)
            finally:
                check.dispose()
    print()
    _print_admissions(admissions)
    print()
    _print_scrubs(scrubs)
    print(f"engines part in {time.perf_counter() - started:.1f} s; load avg at the end: {load_average()}")


def _print_workload(clients: int, seconds: float, warmup: float, backlog_size: int) -> None:
    lines = [
        f"admissions: {clients} client threads for {seconds:g} s (after {warmup:g} s untimed) send POST /v2/images",
        "for one tenant whose image_count_total limit is never reached; one API server per database node",
        f"that takes writes (gunicorn, {GUNICORN_WORKERS} gthread workers x {GUNICORN_THREADS} threads, Redis on),"
        " the clients round-robin over them.",
        f"scrubbers: a fresh backlog of {backlog_size} due pending_delete locations (4 KiB files) per run, one",
        f"scrubber per node, released together once built; scrub_batch_size {SCRUB_BATCH_SIZE}, scrub_pool_size"
        f" {SCRUB_POOL_SIZE}.",
    ]
    for number, line in enumerate(lines):
        print(f"{'engines' if number == 0 else '':<10}  {line}")
    print(flush=True)


def _writers(engine: str, nodes: int) -> str:
    if engine != GALERA:
        return NAMES[engine]
    return f"{NAMES[engine]}, node 1" if nodes == 1 else f"{NAMES[engine]}, nodes 1-{nodes}"


def _conflicts(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_admissions(runs: list[Admissions]) -> None:
    base = next(run.rate for run in runs if run.engine == POSTGRESQL)
    headers = (
        "admissions on",
        "clients",
        "wall s",
        "admitted",
        "admissions/s",
        "x PostgreSQL",
        "503s",
        "conflicts",
        "stored = recount",
        "CPUs busy = db + api + clients + rest",
    )
    rows = [
        (
            _writers(run.engine, run.nodes),
            str(run.clients),
            f"{run.wall_seconds:.2f}",
            str(run.admitted),
            f"{run.rate:.0f}",
            f"{run.rate / base:.2f}",
            str(run.unavailable),
            _conflicts(run.conflicts),
            "yes" if run.drift == 0 and run.stored == run.admitted else "NO",
            run.busy.shown(),
        )
        for run in runs
    ]
    print_rows(headers, rows, {0, 9})
    print("(admissions/s: images admitted per second of wall time; 503s: requests the app gave up retrying (should")
    print(" be 0); conflicts: transactions Galera aborted for another node's write, wsrep_local_cert_failures +")
    print(" wsrep_local_bf_aborts summed over the nodes, each retried by the app; CPUs busy: the machine's average")
    print(" over the run: the database server(s), gunicorn, this process's client threads, and anything else)")


def _print_scrubs(runs: list[Scrub]) -> None:
    base = next(run.rate for run in runs if run.engine == POSTGRESQL)
    headers = (
        "scrubbers on",
        "procs",
        "backlog",
        "wall s",
        "deleted/s",
        "x PostgreSQL",
        "deleted per process",
        "batches per process",
        "conflicts",
        "CPU µs per location",
        "CPUs busy = db + scrub + bench + rest",
    )
    rows = [
        (
            _writers(run.engine, run.scrubbers),
            str(run.scrubbers),
            str(run.backlog),
            f"{run.wall_seconds:.2f}",
            f"{run.rate:.0f}",
            f"{run.rate / base:.2f}",
            " ".join(map(str, run.deleted)),
            " ".join(map(str, run.batches)),
            _conflicts(run.conflicts),
            f"{run.cpu_us_per_location:.0f}",
            run.busy.shown(),
        )
        for run in runs
    ]
    print_rows(headers, rows, {0, 6, 7, 10})
    print("(wall s: from the release of the scrubbers, built, to the last one's exit; every run checked: each file")
    print(" deleted once, every location deleted, the store empty; CPU µs per location: the scrubbers' own CPU after")
    print(" the release; conflicts as above, each losing transaction run again by its scrubber)")
