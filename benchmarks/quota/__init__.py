"""The quota benchmark (SPEC sections 5 and 10): usage reads against a recount, admission as the tenant grows,
and concurrent admissions on one tenant against the raw conditional UPDATE.

One tenant is grown to each size in turn (benchmarks.quota.dataset). At each size: the real recount
(`locations.services.recount.recount`, what `locquota reconcile` runs) is timed in this process, then rounds
of requests over HTTP, shuffled within each round, to the app served by waitress on 127.0.0.1 with Redis
on (benchmarks.quota.server): a constant view, GET /v1/usage warm (a Redis hit) and cold (the key deleted
first), PATCH adding a location, POST /v2/images and PUT of 1 byte. Then the concurrent part runs
(benchmarks.quota.concurrency). Everything prints as tables, with the targets beside the measured ratios.
"""

import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from benchmarks import cpu
from benchmarks.deployment import fresh_database
from benchmarks.quota import concurrency, dataset, write_floor
from benchmarks.quota.client import Answer, Operation, QuotaClient, measure
from benchmarks.quota.report import SizeResult, print_concurrency, print_sizes
from benchmarks.quota.server import (
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    ServerTiming,
    gunicorn_server,
    quota_settings,
    redis_server,
)
from benchmarks.report import load_average
from benchmarks.server import CONSTANT_PATH, SERVER_THREADS, build_app, serving
from benchmarks.timing import Summary
from locations.services.recount import recount
from locquota.db import make_engine, upgrade_to_head
from quota.services.usage_cache import KEY_PREFIX
from tests.statement_counter import Counts

DATABASE = "locquota_quota_bench"
TENANT = "bench-quota-tenant"
FULL_SIZES, SMOKE_SIZES = (1_000, 10_000, 100_000, 1_000_000), (1_000,)
FULL_ROUNDS, FULL_WARMUP = 200, 20
SMOKE_ROUNDS, SMOKE_WARMUP = 30, 5
FULL_CLIENTS, SMOKE_CLIENTS = (1, 8, 32), (1, 8)
FULL_CONCURRENT_REQUESTS, SMOKE_CONCURRENT_REQUESTS = 2400, 240
# The raw floor is some 50 times faster: it runs this many times the requests, so its wall time is not a
# few milliseconds of noise. Rates are compared, so the counts need not match.
RAW_FACTOR = 10
# The recount is timed apart from the HTTP rounds (it takes seconds at 1M): at least 3 times, then
# until this budget is spent.
FULL_RECOUNT_SECONDS, SMOKE_RECOUNT_SECONDS, RECOUNT_MIN, RECOUNT_MAX = 5.0, 0.5, 3, 100
JSON, DATA_TYPE = "application/json", "application/octet-stream"
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
# Limits high enough never to refuse, set as overrides so every admission runs its conditional UPDATE.
LIMITS = {"image_size_total": 2**30, "image_count_total": 10**9}
CREATE_BODY = json.dumps({"name": "bench", "disk_format": "raw", "container_format": "bare"}).encode()


def benchmark(admin_url: str, *, smoke: bool, sizes: tuple[int, ...] | None = None) -> None:
    """Run the three quota measurements on the PostgreSQL server at admin_url and print the results."""
    sizes = sizes or (SMOKE_SIZES if smoke else FULL_SIZES)
    rounds, warmup = (SMOKE_ROUNDS, SMOKE_WARMUP) if smoke else (FULL_ROUNDS, FULL_WARMUP)
    clients = SMOKE_CLIENTS if smoke else FULL_CLIENTS
    requests = SMOKE_CONCURRENT_REQUESTS if smoke else FULL_CONCURRENT_REQUESTS
    url = fresh_database(admin_url, DATABASE)
    engine = make_engine(url)
    upgrade_to_head(engine)
    with tempfile.TemporaryDirectory(prefix="locquota-quota-bench-") as workdir, redis_server() as redis_url:
        work = Path(workdir)
        store_root = (work / "store").resolve()
        store_root.mkdir()
        raw_settings = quota_settings(url, store_root, redis_url)
        _print_workload(sizes, rounds, warmup, clients, requests, redis_url)
        recount_budget = SMOKE_RECOUNT_SECONDS if smoke else FULL_RECOUNT_SECONDS
        results = _by_size(engine, raw_settings, store_root, redis_url, sizes, (rounds, warmup), recount_budget)
        runs = _concurrent(engine, url, raw_settings, work / "gunicorn.log", clients, requests, admin_url)
        final_drift = dataset.drift_of(engine, TENANT)
        rows = dataset.count_rows(engine)
    engine.dispose()
    print()
    print_sizes(results)
    print()
    print_concurrency(runs)
    print()
    print(
        f"usage of {TENANT!r} after every load, PATCH, POST and PUT equals a recount:"
        f" {'yes' if not final_drift else 'NO: ' + ', '.join(drift.figure for drift in final_drift)}"
    )
    print("rows at the end: " + ", ".join(f"{table} {count}" for table, count in rows.items()))
    print(f"load avg at the end: {load_average()}")


def _print_workload(
    sizes: tuple[int, ...], rounds: int, warmup: int, clients: tuple[int, ...], requests: int, redis_url: str
) -> None:
    deleted, pending = dataset.DELETED_PERCENT, dataset.PENDING_PERCENT
    raw_requests = requests * RAW_FACTOR
    lines = [
        f"tenant {TENANT!r} grown to {', '.join(map(str, sizes))} locations, one per image",
        f"({deleted}% deleted, {pending}% pending_delete). At each size: the recount timed in this process,",
        f"then {rounds} timed + {warmup} warm-up rounds of every request, shuffled, over one keep-alive",
        f"connection to waitress ({SERVER_THREADS} threads) in this process; server ms from a WSGI middleware",
        f"around the app; Redis: its own redis-server at {redis_url}.",
        f"Concurrent: {requests} POST /v2/images (limit {concurrency.limit_for(requests)}) from"
        f" {', '.join(map(str, clients))} client threads",
        f"to gunicorn ({GUNICORN_WORKERS} gthread workers x {GUNICORN_THREADS} threads), beside {raw_requests} raw"
        f" conditional UPDATE + COMMIT",
        f"(limit {concurrency.limit_for(raw_requests)}) from as many psycopg connections",
    ]
    for number, line in enumerate(lines):
        print(f"{'quota' if number == 0 else '':<10}  {line}")
    print(flush=True)


def _by_size(
    engine: Engine,
    raw_settings: dict[str, str],
    store_root: Path,
    redis_url: str,
    sizes: tuple[int, ...],
    rounds_and_warmup: tuple[int, int],
    recount_budget: float,
) -> list[SizeResult]:
    rounds, warmup = rounds_and_warmup
    database_url = engine.url.render_as_string(hide_password=False)
    rng = random.Random(0)  # noqa: S311 - a reproducible request order, not a secret
    app = build_app(raw_settings)
    cache = redis.Redis.from_url(redis_url)
    used: set[int] = set()
    results = []
    try:
        with serving(ServerTiming(app)) as port:  # type: ignore[arg-type]
            admin = QuotaClient(port, "bench-admin", "admin")
            client = QuotaClient(port, TENANT)
            try:
                admin.expect("PUT", f"/v1/tenants/{TENANT}/limits", 200, json.dumps({"limits": LIMITS}).encode(), JSON)
                loaded = 0
                for size in sizes:
                    _load(engine, loaded, size)
                    loaded = size
                    cache.delete(KEY_PREFIX + TENANT)  # the repair changed the rows behind the app's back
                    recount_times = _time_recount(engine, recount_budget)
                    # One more target and file than the rounds use: the counted pass below takes the last.
                    targets = iter(_patch_targets(rng, size, rounds + warmup + 1, used))
                    files = iter(dataset.location_files(store_root, f"added-{size}", rounds + warmup + 1))
                    operations = _operations(cache, targets, files)
                    started = time.perf_counter()
                    measured = measure(client, operations, rounds, warmup, rng)
                    counts = _count_writes(app.registry["locquota.engine"], client, next(targets), next(files))
                    floor = write_floor.measure_floor(database_url, store_root.parent / "floor", rounds)
                    click.echo(f"measured {size} locations in {time.perf_counter() - started:.1f} s")
                    results.append(SizeResult(size, measured, recount_times, counts, floor))
            finally:
                client.close()
                admin.close()
    finally:
        app.registry["locquota.engine"].dispose()
        cache.close()
    return results


def _load(engine: Engine, loaded: int, size: int) -> None:
    started = time.perf_counter()
    label = f"loading {loaded} -> {size} locations"
    with click.progressbar(length=size - loaded, label=label, file=sys.stderr) as bar:
        dataset.grow(engine, TENANT, loaded, size, progress=bar.update)
    loaded_seconds = time.perf_counter() - started
    drift = dataset.repair_usage(engine, TENANT)
    click.echo(
        f"loaded {size - loaded} images + locations in {loaded_seconds:.1f} s (INSERT ... SELECT, VACUUM ANALYZE);"
        f" reconcile repair of {len(drift)} figures in {time.perf_counter() - started - loaded_seconds:.1f} s"
    )


def _time_recount(engine: Engine, budget_seconds: float) -> Summary:
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < RECOUNT_MIN or (len(times) < RECOUNT_MAX and time.perf_counter() - started < budget_seconds):
        with Session(engine) as db:
            begun = time.perf_counter()
            recount(db, [TENANT])
            times.append(time.perf_counter() - begun)
            db.rollback()
    return Summary.of("recount", times)


def _patch_targets(rng: random.Random, size: int, count: int, used: set[int]) -> list[str]:
    """Active images of the tenant, each patched once in the whole run, from anywhere in the table."""
    chosen = []
    while len(chosen) < count:
        n = rng.randrange(size)
        if dataset.is_active(n) and n not in used:
            used.add(n)
            chosen.append(str(dataset.image_id(TENANT, n)))
    return chosen


def _operations(cache: redis.Redis, targets: Iterator[str], files: Iterator[str]) -> list[Operation]:
    def constant(client: QuotaClient) -> dict[str, Answer]:
        return {"constant": client.expect("GET", CONSTANT_PATH, 200)}

    def usage_warm(client: QuotaClient) -> dict[str, Answer]:
        client.expect("GET", "/v1/usage", 200)  # untimed: the previous round's writes dropped the copy
        answer = client.expect("GET", "/v1/usage", 200)
        _check_source(answer.json(), "cache")
        return {"usage_warm": answer}

    def usage_cold(client: QuotaClient) -> dict[str, Answer]:
        cache.delete(KEY_PREFIX + TENANT)
        answer = client.expect("GET", "/v1/usage", 200)
        _check_source(answer.json(), "database")
        return {"usage_cold": answer}

    def add_location(client: QuotaClient) -> dict[str, Answer]:
        operation = [{"op": "add", "path": "/locations/-", "value": {"url": next(files), "metadata": {}}}]
        path = f"/v2/images/{next(targets)}"
        return {"add_location": client.expect("PATCH", path, 200, json.dumps(operation).encode(), PATCH_TYPE)}

    def upload(client: QuotaClient) -> dict[str, Answer]:
        created = client.expect("POST", "/v2/images", 201, CREATE_BODY, JSON)
        finished = client.expect("PUT", f"/v2/images/{created.json()['id']}/file", 204, b"x", DATA_TYPE)
        return {"create": created, "upload": finished}

    return [constant, usage_warm, usage_cold, add_location, upload]


def _count_writes(engine: Engine, client: QuotaClient, target: str, file_url: str) -> dict[str, Counts]:
    """The admitting requests once more, untimed, each with what it sent to the database counted."""
    operation = [{"op": "add", "path": "/locations/-", "value": {"url": file_url, "metadata": {}}}]
    created: list[str] = []

    def create() -> None:
        created.append(str(client.expect("POST", "/v2/images", 201, CREATE_BODY, JSON).json()["id"]))

    return write_floor.count_each(
        engine,
        {
            "add_location": lambda: client.expect(
                "PATCH", f"/v2/images/{target}", 200, json.dumps(operation).encode(), PATCH_TYPE
            ),
            "create": create,
            "upload": lambda: client.expect("PUT", f"/v2/images/{created[0]}/file", 204, b"x", DATA_TYPE),
        },
    )


def _check_source(document: dict[str, object], source: str) -> None:
    freshness = document["freshness"]
    if not isinstance(freshness, dict) or freshness["source"] != source:
        raise RuntimeError(f"GET /v1/usage was meant to come from the {source}: {freshness}")


def _concurrent(
    engine: Engine,
    database_url: str,
    raw_settings: dict[str, str],
    log_path: Path,
    clients: tuple[int, ...],
    requests: int,
    admin_url: str,
) -> list[concurrency.Run]:
    runs = []
    with gunicorn_server(raw_settings, log_path) as (port, gunicorn):
        processes = concurrency.Processes(cpu.postmaster_pid(admin_url), gunicorn)
        admin = QuotaClient(port, "bench-admin", "admin")
        try:
            concurrency.warm_up(port, admin, max(clients))
            for count in clients:
                api = concurrency.api_run(port, admin, engine, count, requests, processes)
                free = concurrency.api_run(port, admin, engine, count, requests, processes, limited=False)
                raw = concurrency.raw_run(database_url, engine, count, requests * RAW_FACTOR, processes)
                rates = f"API {api.rate:.0f}/s, unlimited {free.rate:.0f}/s, raw {raw.rate:.0f}/s"
                click.echo(f"{count} client(s): {rates}")
                runs += [api, free, raw]
        finally:
            admin.close()
    return runs
