"""The quota benchmark's tables and targets (reported, never asserted)."""

import itertools
import os
from dataclasses import dataclass

from benchmarks.quota.client import Measured
from benchmarks.quota.concurrency import Run
from benchmarks.quota.write_floor import shown
from benchmarks.report import FLAT_TARGET, print_rows
from benchmarks.timing import Summary
from tests.statement_counter import Counts

# The targets (SPEC section 10; issue: quota benchmark).
WARM_VS_CONSTANT_TARGET = 0.6  # usage reads from Redis: at least this share of the constant view's req/s
RECOUNT_TARGET, RECOUNT_TARGET_AT = 1000.0, 1_000_000  # recount / warm usage read, at 1M locations
SERVER_MS_TARGET = 5.0  # an admission's server time at the largest size
FLOOR_TARGET = 2.0  # issue 18: an upload's PUT server time / the floor (a durable file + a committed admission)
UPLOAD_STATEMENTS_TARGET, UPLOAD_TRANSACTIONS_TARGET = 8, 2  # issue 18: create + PUT
API_VS_RAW_TARGET, API_VS_RAW_AT = 0.5, 8  # concurrent admissions/s through the API / raw, at 8 clients
LIMITED_VS_UNLIMITED_TARGET, LIMITED_VS_UNLIMITED_AT = 0.8, 8  # issue 18: one tenant, limited / unlimited

LABELS = {
    "constant": "constant      GET /bench/constant",
    "usage_warm": "usage warm    GET /v1/usage (Redis hit)",
    "usage_cold": "usage cold    GET /v1/usage (key deleted)",
    "recount": "recount       recount(db, [tenant]), direct",
    "add_location": "add location  PATCH /v2/images/{id}",
    "create": "create        POST /v2/images",
    "upload": "upload        PUT /v2/images/{id}/file, 1 B",
}
FLAT = ("usage_warm", "usage_cold")
ADMISSIONS = ("add_location", "create", "upload")


@dataclass(frozen=True)
class SizeResult:
    """Every request kind's timing at one tenant size, and the recount's."""

    locations: int
    measured: dict[str, Measured]
    recount: Summary
    counts: dict[str, Counts]  # statements and transactions of one admitting request of each kind
    floor: Summary  # one durable 1-byte file + one committed admission, without the app


def _verdict(is_met: bool) -> str:
    return "ok" if is_met else "MISS"


def _median(result: SizeResult, name: str) -> float:
    return result.recount.median if name == "recount" else result.measured[name].summary.median


def print_sizes(results: list[SizeResult]) -> None:
    """One row per size and request kind, then the targets of parts 1 and 2 in words."""
    smallest, largest = results[0], results[-1]
    headers = (
        "locations",
        "request",
        "median ms",
        "p95 ms",
        "server ms",
        "req/s",
        "x constant",
        f"x @{smallest.locations}",
        "stmts/txns",
    )
    rows = []
    for result in results:
        constant = _median(result, "constant")
        for name, label in LABELS.items():
            summary = result.recount if name == "recount" else result.measured[name].summary
            server = "-" if name == "recount" else f"{result.measured[name].server_median * 1000:.2f}"
            rows.append(
                (
                    str(result.locations),
                    label,
                    f"{summary.median * 1000:.2f}",
                    f"{summary.p95 * 1000:.2f}",
                    server,
                    f"{summary.requests_per_second:.0f}",
                    f"{summary.median / constant:.2f}",
                    f"{summary.median / _median(smallest, name):.2f}",
                    shown(result.counts.get(name)),
                )
            )
    print_rows(headers, rows, {1}, group=0)
    print("(server ms: the median of the app's own time, measured by a WSGI middleware around it in the server;")
    print(" req/s: one serial client's throughput; recount: timed in this process, no HTTP;")
    print(" stmts/txns: statements and committed transactions one more request of the kind sent, counted on the")
    print(" app's engine; upload is the PUT alone, its create is the create row)")
    print()
    print("targets (reported, not asserted; medians, ratios from this run):")
    shares = [
        r.measured["usage_warm"].summary.requests_per_second / r.measured["constant"].summary.requests_per_second
        for r in results
    ]
    print(
        f"  usage warm req/s / constant req/s: {' '.join(f'{s:.2f}' for s in shares)} (by size); worst"
        f" {min(shares):.2f} (target >= {WARM_VS_CONSTANT_TARGET:g}) {_verdict(min(shares) >= WARM_VS_CONSTANT_TARGET)}"
    )
    ratios = [r.recount.median / _median(r, "usage_warm") for r in results]
    verdict = (
        _verdict(ratios[-1] >= RECOUNT_TARGET)
        if largest.locations >= RECOUNT_TARGET_AT
        else f"(not measured: the target applies at {RECOUNT_TARGET_AT})"
    )
    print(
        f"  recount / usage warm: {' '.join(f'{r.locations}: {x:.0f}x' for r, x in zip(results, ratios, strict=True))}"
        f" (target >= {RECOUNT_TARGET:g}x at {RECOUNT_TARGET_AT}) {verdict}"
    )
    if len(results) == 1:
        print(f"  flatness: one size only ({smallest.locations}); it needs two")
    for name in (*FLAT, *ADMISSIONS) if len(results) > 1 else ():
        growth = _median(largest, name) / _median(smallest, name)
        # Divided by the constant view's own growth: machine drift between the sizes cancels out.
        corrected = growth / (_median(largest, "constant") / _median(smallest, "constant"))
        print(
            f"  {LABELS[name]}: time@{largest.locations} / time@{smallest.locations} = {growth:.2f}"
            f" (target < {FLAT_TARGET:g}) {_verdict(growth < FLAT_TARGET)}; drift-corrected {corrected:.2f}"
            f" {_verdict(corrected < FLAT_TARGET)}"
        )
    for result in results:
        upload_ms, floor_ms = result.measured["upload"].server_median * 1000, result.floor.median * 1000
        ratio = upload_ms / floor_ms
        print(
            f"  upload server time / floor @{result.locations}: {upload_ms:.2f} / {floor_ms:.2f} ms ="
            f" x{ratio:.2f} (target <= {FLOOR_TARGET:g}) {_verdict(ratio <= FLOOR_TARGET)};"
            f" floor = 1-byte file write + fsync, then the admission's UPDATE + COMMIT (psycopg, no app)"
        )
    both = {name: largest.counts[name] for name in ("create", "upload")}
    statements = sum(len(counts.statements) for counts in both.values())
    commits = sum(counts.commits for counts in both.values())
    met = statements <= UPLOAD_STATEMENTS_TARGET and commits <= UPLOAD_TRANSACTIONS_TARGET
    print(
        f"  create + upload: {statements} statements, {commits} transactions (target <= {UPLOAD_STATEMENTS_TARGET},"
        f" <= {UPLOAD_TRANSACTIONS_TARGET}) {_verdict(met)}"
    )
    for name in ADMISSIONS:
        server_ms = largest.measured[name].server_median * 1000
        print(
            f"  {LABELS[name]}: server time @{largest.locations} {server_ms:.2f} ms"
            f" (target < {SERVER_MS_TARGET:g} ms) {_verdict(server_ms < SERVER_MS_TARGET)};"
            f" client {largest.measured[name].summary.median * 1000:.2f} ms"
        )


def print_concurrency(runs: list[Run]) -> None:
    """One row per client count and path, then the targets of part 3 in words."""
    raw_rates = {run.clients: run.rate for run in runs if run.path == "raw"}
    headers = (
        "clients",
        "path",
        "requests",
        "admitted",
        "refused",
        "wall s",
        "admissions/s",
        "api / raw",
        "limit",
        "stored",
        "overrun",
        "= recount",
        "CPUs busy = pg + gunicorn + bench + rest",
    )
    rows = [
        (
            str(run.clients),
            run.path,
            str(run.requests),
            str(run.admitted),
            str(run.refused),
            f"{run.wall_seconds:.2f}",
            f"{run.rate:.0f}",
            f"{run.rate / raw_rates[run.clients]:.2f}" if run.path != "raw" else "-",
            str(run.limit),
            str(run.stored),
            str(run.overrun),
            "-" if run.drift is None else ("yes" if run.drift == 0 else f"NO ({run.drift})"),
            f"{run.cpus.machine:.2f} = {run.cpus.postgresql:.2f} + {run.server_cpus:.2f} + {run.cpus.benchmark:.2f}"
            # Clock ticks are 10 ms: over a run of under a second the rest can read slightly negative.
            f" + {max(0.0, run.cpus.other(run.server_cpus)):.2f}",
        )
        for run in runs
    ]
    print_rows(headers, rows, {1, 12}, group=0)
    print("(admissions/s: admitted + refused per second of wall time; CPUs busy: the machine's average over the run,")
    print(f" out of {len(os.sched_getaffinity(0))}: PostgreSQL, gunicorn, this process (the client threads), and the")
    print(" rest: anything else on the machine; a large rest means the numbers are not this benchmark's alone)")
    print()
    print("targets (reported, not asserted; from this run):")
    api_rates = {run.clients: run.rate for run in runs if run.path == "api"}
    for clients in sorted(api_rates):
        ratio = api_rates[clients] / raw_rates[clients]
        target = (
            f"(target >= {API_VS_RAW_TARGET:g}) {_verdict(ratio >= API_VS_RAW_TARGET)}"
            if clients == API_VS_RAW_AT
            else "(no target)"
        )
        print(f"  API / raw admissions/s at {clients} client(s): x{ratio:.2f} {target}")
    free_rates = {run.clients: run.rate for run in runs if run.path == "unlimited"}
    if LIMITED_VS_UNLIMITED_AT in api_rates and LIMITED_VS_UNLIMITED_AT in free_rates:
        ratio = api_rates[LIMITED_VS_UNLIMITED_AT] / free_rates[LIMITED_VS_UNLIMITED_AT]
        print(
            f"  limited / unlimited tenant admissions/s at {LIMITED_VS_UNLIMITED_AT} clients: x{ratio:.2f}"
            f" (target >= {LIMITED_VS_UNLIMITED_TARGET:g}) {_verdict(ratio >= LIMITED_VS_UNLIMITED_TARGET)}"
        )
    up_to = sorted(clients for clients in api_rates if clients <= LIMITED_VS_UNLIMITED_AT)
    rising = all(api_rates[later] > api_rates[earlier] for earlier, later in itertools.pairwise(up_to))
    print(
        f"  limited tenant admissions/s by clients: {', '.join(f'{c}: {api_rates[c]:.0f}' for c in sorted(api_rates))}"
        f" (target: rising up to {LIMITED_VS_UNLIMITED_AT} clients) {_verdict(rising)}"
    )
    worst = max(run.overrun for run in runs)
    print(f"  overruns (stored total - limit, if positive): {worst} at most (must be 0) {_verdict(worst == 0)}")
    exact = all(run.drift == 0 for run in runs if run.path != "raw")
    print(f"  stored usage = recount after every API run: {'yes' if exact else 'NO'} {_verdict(exact)}")
