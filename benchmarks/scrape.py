"""The scrape benchmark (issue 6): GET /metrics with a fixed pending_delete backlog as active locations grow.

A fixed backlog of 10k pending_delete locations (benchmarks.scrape_dataset: 2 stores, 5 tenants, some past
their scrub time, some failed) stays while the active locations grow 10k -> 100k -> 1M, in one database on the
benchmark's PostgreSQL. At each size, rounds of three measurements in a shuffled order: GET /metrics and a
constant view over one keep-alive connection to the app served by waitress on 127.0.0.1 (Redis off), and the
backlog query alone, `BacklogService(session, Clock()).by_store()`, timed directly in this process. Every
scrape is parsed with prometheus_client's parser: its `locquota_backlog_locations` must add up to the backlog
(and, once per size, every backlog gauge must equal what was loaded). The backlog query's plan must read a
pending_delete partial index, never a Seq Scan on locations, wherever active locations outnumber pending ones
tenfold (at 10k, half the table is pending and a Seq Scan is the right plan), and at every size with
enable_seqscan off (the index matches the query's WHERE; the only plan check `--smoke` can make). Any of these
failing fails the benchmark; timings never do: the targets (flat to 1.5x from 10k to 1M, a scrape under 50 ms
at 1M) are reported.
"""

import http.client
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from benchmarks.deployment import fresh_database
from benchmarks.report import load_average, print_rows
from benchmarks.scrape_dataset import (
    FAILING_EVERY,
    OVERDUE_TENTHS,
    PENDING_LOCATIONS,
    STORES,
    TENANTS,
    ScrapeDataset,
    Spread,
    StoreExpectation,
)
from benchmarks.server import CONSTANT_PATH, SERVER_THREADS, build_app, serving, settings
from benchmarks.timing import Summary
from locations.models import Location
from locations.services.backlog import BacklogService
from locquota.clock import Clock
from locquota.db import make_engine, upgrade_to_head

DATABASE = "locquota_scrape_bench"
FULL_SIZES, SMOKE_SIZES = (10_000, 100_000, 1_000_000), (10_000,)
FULL_ROUNDS, FULL_WARMUP = 200, 20
SMOKE_ROUNDS, SMOKE_WARMUP = 30, 5
METRICS_PATH = "/metrics"
# The text format, as prometheus_client.parser reads it (a Prometheus server would ask for OpenMetrics).
HEADERS = {"Accept": "text/plain;version=0.0.4", "Connection": "keep-alive"}
# The collector's own statement timeout (locquota.metrics_query_timeout_seconds' default), set the same way
# before the directly timed backlog query, so the query runs in the same transaction shape as in a scrape.
STATEMENT_TIMEOUT_MS = 2000
FLAT_TARGET = 1.5
SCRAPE_TARGET_MS = 50.0
TARGET_SIZE = 1_000_000
# What ScrapeCollector reports about each of its parts (locquota_collector_duration_seconds{collector=...}).
PARTS = ("backlog", "quota", "reconcile", "cache")
# The natural plan must read a partial index once active locations outnumber pending ones this many times.
INDEX_FROM_RATIO = 10
# How far the scraped age of the oldest pending location may be from the age computed after the rounds.
AGE_TOLERANCE_SECONDS = 300.0

LABELS = {
    "constant": f"constant        GET {CONSTANT_PATH}",
    "scrape": f"scrape          GET {METRICS_PATH}",
    "backlog": "backlog query   by_store(), direct",
    **{f"part:{part}": f"  {part} part{' ' * (10 - len(part))}in the scrape (server)" for part in PARTS},
}
TARGETED = ("scrape", "backlog")
PARTIAL_INDEXES = tuple(
    index.name
    for index in Location.__table__.indexes  # type: ignore[attr-defined]
    if index.dialect_options["postgresql"]["where"] is not None
)


@dataclass(frozen=True)
class Plan:
    """The backlog query's statement, its EXPLAIN, and how it reads locations, as planned and with seq scans off."""

    statement: str
    parameters: str
    lines: list[str]
    access: str
    checked: bool
    access_without_seqscan: str


@dataclass(frozen=True)
class SizeResult:
    """Everything measured at one number of active locations."""

    active: int
    summaries: dict[str, Summary]
    plan: Plan
    spread: Spread
    scrapes_checked: int


def benchmark(admin_url: str, *, smoke: bool) -> None:
    """Run the scrape benchmark on the PostgreSQL server at admin_url and print the results."""
    sizes = SMOKE_SIZES if smoke else FULL_SIZES
    rounds, warmup = (SMOKE_ROUNDS, SMOKE_WARMUP) if smoke else (FULL_ROUNDS, FULL_WARMUP)
    url = fresh_database(admin_url, DATABASE)
    engine = make_engine(url)
    upgrade_to_head(engine)
    dataset = ScrapeDataset(engine)
    dataset.create()
    _print_workload(sizes, rounds, warmup)
    with tempfile.TemporaryDirectory(prefix="locquota-scrape-bench-") as store_root:
        app = build_app(settings(url, Path(store_root)))
        try:
            with serving(app) as port:
                results = _by_size(engine, dataset, port, sizes, rounds, warmup)
        finally:
            app.registry["locquota.engine"].dispose()
    rows = dataset.count_rows()
    engine.dispose()
    print()
    _print_table(results)
    print()
    _print_checks(results)
    print()
    _print_targets(results)
    print()
    _print_plan(results[-1])
    print()
    print("locations at the end: " + ", ".join(f"{status} {count}" for status, count in rows.items()))
    print(f"load avg at the end: {load_average()}")


def _print_workload(sizes: tuple[int, ...], rounds: int, warmup: int) -> None:
    lines = [
        f"{PENDING_LOCATIONS} pending_delete locations fixed (stores {', '.join(STORES)}, {len(TENANTS)} tenants,"
        f" {OVERDUE_TENTHS * 10}% overdue, {100 / FAILING_EVERY:g}% failing),",
        f"spread evenly among the active locations, which grow to {', '.join(map(str, sizes))};",
        "VACUUM ANALYZE, CHECKPOINT and the reconcile repair after each step. At each size,",
        f"{rounds} timed + {warmup} warm-up rounds, shuffled: GET {METRICS_PATH} and GET {CONSTANT_PATH} over one",
        f"keep-alive connection to waitress ({SERVER_THREADS} threads) in this process, Redis off; and",
        "BacklogService(session, Clock()).by_store() timed in this process (after SET LOCAL statement_timeout).",
    ]
    for number, line in enumerate(lines):
        print(f"{'scrape' if number == 0 else '':<10}  {line}")
    print(flush=True)


def _by_size(
    engine: Engine, dataset: ScrapeDataset, port: int, sizes: tuple[int, ...], rounds: int, warmup: int
) -> list[SizeResult]:
    rng = random.Random(0)  # noqa: S311 - a reproducible order, not a secret
    expected = dataset.expected()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    results = []
    try:
        for size in sizes:
            _load(dataset, size)
            spread = dataset.spread()
            plan = _explain(engine, checked=size >= INDEX_FROM_RATIO * PENDING_LOCATIONS)
            started = time.perf_counter()
            times, bodies = _measure(connection, engine, rounds, warmup, rng)
            parts = _check_scrapes(bodies, expected, dataset)
            summaries = {name: Summary.of(name, latencies) for name, latencies in {**times, **parts}.items()}
            click.echo(
                f"measured {size} active locations in {time.perf_counter() - started:.1f} s: scrape median"
                f" {summaries['scrape'].median * 1000:.2f} ms, backlog query {summaries['backlog'].median * 1000:.2f}"
                f" ms ({plan.access}; pending rows on {spread.pending_pages} of {spread.table_pages} heap pages)"
            )
            results.append(SizeResult(size, summaries, plan, spread, len(bodies)))
    finally:
        connection.close()
    return results


def _load(dataset: ScrapeDataset, size: int) -> None:
    started = time.perf_counter()
    label = f"loading {dataset.active} -> {size} active locations"
    with click.progressbar(length=size - dataset.active, label=label, file=sys.stderr) as bar:
        dataset.grow_to(size, progress=bar.update)
    loaded = time.perf_counter() - started
    drift = dataset.repair_usage()
    click.echo(
        f"loaded to {size} active locations in {loaded:.1f} s (INSERT ... SELECT, VACUUM ANALYZE, CHECKPOINT);"
        f" reconcile repair of {len(drift)} figures in {time.perf_counter() - started - loaded:.1f} s"
    )


def _measure(
    connection: http.client.HTTPConnection, engine: Engine, rounds: int, warmup: int, rng: random.Random
) -> tuple[dict[str, list[float]], list[bytes]]:
    """Warm-up rounds, then timed rounds of the three measurements in a shuffled order; the scrapes' bodies."""
    times: dict[str, list[float]] = {"constant": [], "scrape": [], "backlog": []}
    bodies: list[bytes] = []

    def constant() -> float:
        return _get(connection, CONSTANT_PATH)[0]

    def scrape() -> float:
        elapsed, body = _get(connection, METRICS_PATH)
        bodies.append(body)
        return elapsed

    def backlog() -> float:
        return _time_backlog(engine)

    order: list[tuple[str, Callable[[], float]]] = [("constant", constant), ("scrape", scrape), ("backlog", backlog)]
    for round_number in range(warmup + rounds):
        rng.shuffle(order)
        for name, measurement in order:
            elapsed = measurement()
            if round_number >= warmup:
                times[name].append(elapsed)
    return times, bodies


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    """One GET, timed with the whole body read; anything but 200 fails the benchmark."""
    started = time.perf_counter()
    connection.request("GET", path, headers=HEADERS)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
    return elapsed, body


def _time_backlog(engine: Engine) -> float:
    """The backlog query alone, as the collector runs it: in a read transaction after SET LOCAL, rolled back."""
    with Session(engine) as db:
        db.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        started = time.perf_counter()
        stores = BacklogService(db, Clock()).by_store()
        elapsed = time.perf_counter() - started
        db.rollback()
    if sum(store.locations for store in stores) != PENDING_LOCATIONS:
        raise RuntimeError(f"by_store() counted {stores}, expected {PENDING_LOCATIONS} pending locations")
    return elapsed


def _check_scrapes(
    bodies: list[bytes], expected: dict[str, StoreExpectation], dataset: ScrapeDataset
) -> dict[str, list[float]]:
    """Every scrape's backlog adds up; the first one's gauges match the load. The parts' own durations."""
    parts: dict[str, list[float]] = {f"part:{part}": [] for part in PARTS}
    for number, body in enumerate(bodies):
        samples = _samples(body)
        if samples.get(("locquota_collector_up", (("collector", "backlog"),))) != 1:
            raise RuntimeError(f"scrape {number}: the backlog collector failed:\n{body.decode()[:3000]}")
        pending = sum(value for (name, _), value in samples.items() if name == "locquota_backlog_locations")
        if pending != PENDING_LOCATIONS:
            raise RuntimeError(
                f"scrape {number}: locquota_backlog_locations adds up to {pending}, not {PENDING_LOCATIONS}"
            )
        for part in PARTS:
            parts[f"part:{part}"].append(samples[("locquota_collector_duration_seconds", (("collector", part),))])
        if number == 0:
            _check_gauges(samples, expected, dataset)
    return parts


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _check_gauges(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    expected: dict[str, StoreExpectation],
    dataset: ScrapeDataset,
) -> None:
    wrong = []
    for store, figures in expected.items():
        labels = (("store", store),)
        for name, value in (
            ("locquota_backlog_locations", figures.locations),
            ("locquota_backlog_bytes", figures.size_bytes),
            ("locquota_backlog_overdue_locations", figures.overdue),
            ("locquota_backlog_failing_locations", figures.failing),
        ):
            if samples.get((name, labels)) != value:
                wrong.append(f"{name}{{store={store!r}}} = {samples.get((name, labels))}, loaded {value}")
    age = samples[("locquota_backlog_oldest_age_seconds", ())]
    loaded_age = (Clock().now() - dataset.oldest_pending_since()).total_seconds()
    if not loaded_age - AGE_TOLERANCE_SECONDS <= age <= loaded_age:
        wrong.append(f"locquota_backlog_oldest_age_seconds = {age}, loaded ~{loaded_age:.0f}")
    if wrong:
        raise RuntimeError("the scrape's backlog gauges differ from the loaded backlog: " + "; ".join(wrong))


def _explain(engine: Engine, *, checked: bool) -> Plan:
    """EXPLAIN of the statement by_store() sends, with its parameters, as planned and with enable_seqscan off.

    With seq scans off the plan must read a partial index (else the index does not match the query); as planned
    too when `checked`. Otherwise the benchmark fails, showing the plan.
    """
    with Session(engine) as db, _captured(engine) as statements:
        BacklogService(db, Clock()).by_store()
        (statement, parameters), *_ = [sent for sent in statements if "FROM locations" in sent[0]]
        connection = db.connection()
        lines = [row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        forced = [row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
        db.rollback()
    for plan, must_read_index in ((forced, True), (lines, checked)):
        reads_index = any(name in line for line in plan for name in PARTIAL_INDEXES)
        if must_read_index and (not reads_index or any("Seq Scan on locations" in line for line in plan)):
            raise RuntimeError(
                f"the backlog query does not read a pending_delete partial index ({', '.join(PARTIAL_INDEXES)})"
                f"{'' if plan is lines else ' even with enable_seqscan off'}:\n{statement}\n{parameters}\n"
                + "\n".join(plan)
            )
    return Plan(statement, repr(parameters), lines, _access(lines), checked, _access(forced))


def _access(plan: list[str]) -> str:
    """The plan's innermost scan: how it reads locations, e.g. "Bitmap Index Scan on ix_locations_pending_delete"."""
    nodes = [line.strip().removeprefix("->").strip().split("  (")[0] for line in plan]
    return [node for node in nodes if " Scan " in f" {node}"][-1]


@contextmanager
def _captured(engine: Engine) -> Iterator[list[tuple[str, object]]]:
    """The statements (and their parameters) sent on this engine meanwhile."""
    statements: list[tuple[str, object]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: object, *_: object) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _print_table(results: list[SizeResult]) -> None:
    smallest = results[0]
    headers = ("active", "measurement", "median ms", "p95 ms", f"x @{smallest.active}", f"<{FLAT_TARGET:g}")
    rows: list[tuple[str, ...]] = []
    for result in results:
        for name, label in LABELS.items():
            summary = result.summaries[name]
            ratio = summary.median / smallest.summaries[name].median
            rows.append(
                (
                    str(result.active),
                    label,
                    f"{summary.median * 1000:.2f}",
                    f"{summary.p95 * 1000:.2f}",
                    f"{ratio:.2f}",
                    _verdict(ratio < FLAT_TARGET) if name in TARGETED else "-",
                )
            )
    print_rows(headers, rows, left_aligned={1}, group=0)


def _print_checks(results: list[SizeResult]) -> None:
    headers = (
        "active",
        "backlog query plan",
        "plan checked",
        "with enable_seqscan off",
        "pending rows on heap pages",
        f"scrapes: backlog = {PENDING_LOCATIONS}",
    )
    rows = [
        (
            str(result.active),
            result.plan.access,
            "yes" if result.plan.checked else f"no: active < {INDEX_FROM_RATIO} x pending",
            result.plan.access_without_seqscan,
            f"{result.spread.pending_pages} of {result.spread.table_pages}",
            f"{result.scrapes_checked} of {result.scrapes_checked}",
        )
        for result in results
    ]
    print_rows(headers, rows, left_aligned={1, 2, 3})


def _print_targets(results: list[SizeResult]) -> None:
    smallest, largest = results[0], results[-1]
    print("targets (reported, not asserted; medians, ratios from this run):")
    for name in TARGETED:
        label = LABELS[name].split(None, 1)[1] if name == "scrape" else "by_store(), direct"
        if len(results) == 1:
            print(f"  {label}: flat: one size only, no ratio (the full run grows to {TARGET_SIZE})")
            continue
        growth = largest.summaries[name].median / smallest.summaries[name].median
        drift = largest.summaries["constant"].median / smallest.summaries["constant"].median
        print(
            f"  {label}: flat: time@{largest.active} / time@{smallest.active} = {growth:.2f}"
            f" (target < {FLAT_TARGET:g}) {_verdict(growth < FLAT_TARGET)};"
            f" drift-corrected (/ constant) {growth / drift:.2f} {_verdict(growth / drift < FLAT_TARGET)}"
        )
    scrape = largest.summaries["scrape"]
    where = "" if largest.active == TARGET_SIZE else f" (the target is for {TARGET_SIZE}; this run's largest size)"
    median_ms = scrape.median * 1000
    print(
        f"  GET {METRICS_PATH} under {SCRAPE_TARGET_MS:g} ms at {largest.active} active locations{where}: median"
        f" {median_ms:.2f} ms, p95 {scrape.p95 * 1000:.2f} ms {_verdict(median_ms < SCRAPE_TARGET_MS)}"
    )


def _print_plan(result: SizeResult) -> None:
    plan = result.plan
    print(f"EXPLAIN of the backlog query at {result.active} active locations, as BacklogService.by_store() sends it:")
    print("  " + " ".join(plan.statement.split()))
    print(f"  parameters {plan.parameters}")
    for line in plan.lines:
        print(f"  {line}")


def _verdict(met: bool) -> str:
    return "ok" if met else "MISS"
