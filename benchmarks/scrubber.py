"""The scrubber benchmark: locations deleted per second by 1, 2 and 4 `locquota scrub` processes, and memory.

Each run starts from a fresh backlog (benchmarks.backlog) in its own PostgreSQL database on the benchmark's
server, with the file store's root on local disk, and starts the processes together as an operator would
start one scrubber per node. Throughput is the backlog over the wall time from starting the processes to the
last one's exit (start-up included; the start-up alone is measured too, on an empty backlog). Peak RSS is
each process's own ru_maxrss, from os.wait4 on its pid: the rusage of that one child, which is what
getrusage(RUSAGE_CHILDREN) would report in a fresh parent per run, without the extra process. One more
run repeats the one-process throughput with COMPARED_POOL_SIZE deletions in flight instead of
SCRUB_POOL_SIZE, to show what a pool costs or gains on the file store.
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import click
from sqlalchemy import Engine

from benchmarks import backlog, cpu
from benchmarks.deployment import fresh_database, write_ini
from benchmarks.report import load_average, print_rows
from benchmarks.server import settings
from locquota.db import make_engine, upgrade_to_head

DATABASE = "locquota_scrub_bench"
LOCQUOTA = str(Path(sys.executable).with_name("locquota"))
# Settings for a node: a batch is one claim transaction and one record transaction. One deletion in flight
# (locquota.scrub_pool_size's default): on a local disk an unlink is a few microseconds of kernel time, and
# several threads unlinking in one directory spend more CPU on its lock and on the GIL than they save (the
# `pool 4` run shows it). A remote store's round trips want a pool: benchmarks.stores measures those.
SCRUB_BATCH_SIZE = 500
SCRUB_POOL_SIZE = 1
COMPARED_POOL_SIZE = 4  # one process, once more, with this many deletions in flight
PROCESS_COUNTS = (1, 2, 4)
FULL_BACKLOG, FULL_RSS_BACKLOGS = 100_000, (10_000, 100_000)
SMOKE_BACKLOG, SMOKE_RSS_BACKLOGS = 2_000, (1_000, 2_000)
# A run that takes longer than this is stuck: its processes are killed and the benchmark fails.
RUN_DEADLINE_SECONDS = 3600
# The targets (SPEC section 10, issue 4): throughput scales with processes; memory stays flat with the backlog.
SPEEDUP_TARGET = 1.6
RSS_TARGET = 1.2
# Issue 18's targets for one process on the file store at the full backlog.
RATE_TARGET = 5000  # deleted/s
CPU_TARGET_US = 150  # scrubber CPU per location (start-up included, as the process's rusage counts it)


class Step(NamedTuple):
    """One run of the plan: `processes` scrubbers with `pool_size` deletions in flight on `count` locations."""

    label: str
    count: int
    processes: int
    pool_size: int


@dataclass(frozen=True)
class Run:
    """One run: `processes` scrubbers started together on a fresh backlog of `backlog` locations."""

    label: str
    backlog: int
    processes: int
    pool_size: int
    wall_seconds: float
    max_rss_kib: tuple[int, ...]
    cpu_seconds: tuple[float, ...]  # user + system, per process
    cpus: cpu.Split  # average busy CPUs during the run: the machine, PostgreSQL, the benchmark itself
    outcomes: tuple[Counter[str], ...]

    @property
    def rate(self) -> float:
        """Locations deleted per second of wall time, start-up included."""
        return self.backlog / self.wall_seconds

    @property
    def cpu_us_per_location(self) -> float:
        """The scrubbers' CPU (user + system, start-up included) per location of the backlog."""
        return sum(self.cpu_seconds) / max(self.backlog, 1) * 1e6

    @property
    def scrubber_cpus(self) -> float:
        """The scrubber processes' average busy CPUs over the run."""
        return sum(self.cpu_seconds) / self.wall_seconds

    def rate_after_start_up(self, start_up_seconds: float) -> float:
        """Locations deleted per second once a process is up (the empty run's wall time taken off)."""
        return self.backlog / max(self.wall_seconds - start_up_seconds, 1e-9)


def benchmark(admin_url: str, *, smoke: bool, backlog_size: int | None = None) -> None:
    """Run the scrubber benchmark on the PostgreSQL server at admin_url and print the results."""
    size = backlog_size or (SMOKE_BACKLOG if smoke else FULL_BACKLOG)
    rss_sizes = (max(size // 10, 1), size) if backlog_size else (SMOKE_RSS_BACKLOGS if smoke else FULL_RSS_BACKLOGS)
    url = fresh_database(admin_url, DATABASE)
    engine = make_engine(url)
    upgrade_to_head(engine)
    with tempfile.TemporaryDirectory(prefix="locquota-scrub-bench-") as workdir:
        work = Path(workdir)
        store_root = (work / "store").resolve()
        inis = {
            pool_size: write_ini(
                work / f"scrub-pool-{pool_size}.ini",
                {
                    **settings(url, store_root),  # no Redis: the scrubber does not read the cache
                    "locquota.scrub_batch_size": str(SCRUB_BATCH_SIZE),
                    "locquota.scrub_pool_size": str(pool_size),
                },
            )
            for pool_size in (SCRUB_POOL_SIZE, COMPARED_POOL_SIZE)
        }
        _print_workload(size, rss_sizes, store_root)
        plan = [Step("start-up (nothing due)", 0, 1, SCRUB_POOL_SIZE)]
        plan += [Step("memory", rss, 1, SCRUB_POOL_SIZE) for rss in rss_sizes if rss != size]
        plan += [Step("throughput", size, processes, SCRUB_POOL_SIZE) for processes in PROCESS_COUNTS]
        plan += [Step(f"pool {COMPARED_POOL_SIZE}", size, 1, COMPARED_POOL_SIZE)]
        postmaster = cpu.postmaster_pid(admin_url)
        runs = [_run(engine, inis[step.pool_size], store_root, work, postmaster, step) for step in plan]
    engine.dispose()
    print()
    _print_table(runs)
    print()
    _print_targets(runs, size, rss_sizes)
    print(f"load avg at the end: {load_average()}")


def _print_workload(size: int, rss_sizes: tuple[int, ...], store_root: Path) -> None:
    print(f"{'scrubber':<10}  `locquota scrub` processes started together on a fresh backlog per run:")
    print(f"{'':<10}  {size} pending_delete locations for throughput with {', '.join(map(str, PROCESS_COUNTS))}")
    print(f"{'':<10}  processes; one process at {' and '.join(map(str, rss_sizes))} for peak RSS. One location per")
    print(f"{'':<10}  pending_delete image, {backlog.FILE_BYTES}-byte files in {store_root}")
    print(f"{'':<10}  ({_filesystem(store_root)}); scrub_batch_size {SCRUB_BATCH_SIZE}, scrub_pool_size")
    compared = f"(and {COMPARED_POOL_SIZE} once, `pool {COMPARED_POOL_SIZE}`)"
    print(f"{'':<10}  {SCRUB_POOL_SIZE} {compared}, scrub_lease_seconds and retries at their defaults; Redis off")
    print(flush=True)


def _filesystem(path: Path) -> str:
    """The filesystem type and device the store root is on, from /proc/mounts (longest mount point)."""
    best = ("", "unknown", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount_point, kind = line.split()[:3]
            if (str(path) + "/").startswith(mount_point.rstrip("/") + "/") and len(mount_point) >= len(best[0]):
                best = (mount_point, kind, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


def _run(
    engine: Engine,
    ini: Path,
    store_root: Path,
    work: Path,
    postmaster: int | None,
    step: Step,
) -> Run:
    label, count, processes, pool_size = step
    started = time.perf_counter()
    with click.progressbar(length=count, label=f"loading {count} pending_delete locations", file=sys.stderr) as bar:
        backlog.load(engine, store_root, count, progress=bar.update)
    click.echo(f"loaded {count} locations and files in {time.perf_counter() - started:.1f} s, then ANALYZE")
    before = cpu.snapshot(postmaster)
    wall, rusages, outputs = _scrub(ini, processes, work)
    cpus = cpu.split(before, cpu.snapshot(postmaster), wall)
    outcomes = tuple(_outcomes(output) for output in outputs)
    statuses, left = backlog.status_counts(engine), backlog.files_left(store_root)
    deleted = sum(counts["deleted"] for counts in outcomes)
    if deleted != count or statuses.get("deleted", 0) != count or len(statuses) > 1 or left:
        raise click.ClickException(
            f"{processes} scrubbers left work undone: outcomes {outcomes}, statuses {statuses}, files left {left}"
        )
    run = Run(
        label,
        count,
        processes,
        pool_size,
        wall,
        tuple(usage.ru_maxrss for usage in rusages),
        tuple(usage.ru_utime + usage.ru_stime for usage in rusages),
        cpus,
        outcomes,
    )
    click.echo(
        f"{label}: {processes} process(es), pool {pool_size}, {count} locations in {wall:.2f} s ({run.rate:.0f}/s)"
    )
    return run


def _scrub(ini: Path, processes: int, work: Path) -> tuple[float, list[object], list[str]]:
    """Start `processes` scrubbers at once; wall time to the last exit, each one's rusage and output."""
    logs = [work / f"scrubber-{n}.log" for n in range(processes)]
    handles = [path.open("w") for path in logs]
    started = time.perf_counter()
    children = [
        subprocess.Popen([LOCQUOTA, "--config", str(ini), "scrub"], stdout=handle, stderr=subprocess.STDOUT)
        for handle in handles
    ]
    watchdog = threading.Timer(RUN_DEADLINE_SECONDS, lambda: [child.kill() for child in children])
    watchdog.start()
    rusages = []
    try:
        for child in children:
            _pid, status, rusage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            rusages.append(rusage)
    finally:
        wall = time.perf_counter() - started
        watchdog.cancel()
        for handle in handles:
            handle.close()
    outputs = [path.read_text() for path in logs]
    for child, output in zip(children, outputs, strict=True):
        if child.returncode != 0:
            raise click.ClickException(f"a scrubber exited with {child.returncode}:\n{output}")
    return wall, rusages, outputs


def _outcomes(output: str) -> Counter[str]:
    """The counts of the `scrubbed in N batches: deleted X, ...` line (`nothing due` counts nothing)."""
    for line in output.splitlines():
        if line.startswith("scrubbed in "):
            summary = line.partition(": ")[2]
            if summary == "nothing due":
                return Counter()
            return Counter({name: int(number) for name, number in (part.split() for part in summary.split(", "))})
    raise click.ClickException(f"a scrubber printed no summary:\n{output}")


def _print_table(runs: list[Run]) -> None:
    start_up = runs[0].wall_seconds
    one_process = {run.backlog: run.rate for run in runs if run.label == "throughput" and run.processes == 1}
    headers = (
        "run",
        "backlog",
        "procs",
        "pool",
        "wall s",
        "deleted/s",
        "x 1 proc",
        "deleted/s after start-up",
        "CPUs busy = scrub + pg + rest",
        "deleted per process",
        "CPU s per process",
        "CPU µs per location",
        "peak RSS MiB per process",
    )
    rows = []
    for run in runs:
        base = one_process.get(run.backlog)
        rows.append(
            (
                run.label,
                str(run.backlog),
                str(run.processes),
                str(run.pool_size),
                f"{run.wall_seconds:.2f}",
                f"{run.rate:.0f}" if run.backlog else "-",
                f"{run.rate / base:.2f}" if base and run.label == "throughput" else "-",
                f"{run.rate_after_start_up(start_up):.0f}" if run.backlog else "-",
                f"{run.cpus.machine:.2f} = {run.scrubber_cpus:.2f} + {run.cpus.postgresql:.2f}"
                f" + {run.cpus.other(run.scrubber_cpus) + run.cpus.benchmark:.2f}",
                " ".join(str(counts["deleted"]) for counts in run.outcomes),
                " ".join(f"{seconds:.1f}" for seconds in run.cpu_seconds),
                f"{run.cpu_us_per_location:.0f}" if run.backlog else "-",
                " ".join(f"{kib / 1024:.1f}" for kib in run.max_rss_kib),
            )
        )
    print_rows(headers, rows, {0, 9, 10, 12})
    print(f"(start-up = the wall time of one scrubber with nothing due: {start_up:.2f} s, taken off in column 8;")
    nproc = len(os.sched_getaffinity(0))
    print(f" CPUs busy = the machine's average over the run, out of {nproc}: the scrubbers, the PostgreSQL server,")
    print(" and the rest: this benchmark and anything else running on the machine)")


def _print_targets(runs: list[Run], size: int, rss_sizes: tuple[int, ...]) -> None:
    throughput = {run.processes: run for run in runs if run.label == "throughput"}
    start_up = runs[0].wall_seconds
    one = throughput[1]
    print("targets (reported, not asserted; ratios from this run):")
    rate_ok = "ok" if one.rate >= RATE_TARGET else "MISS"
    cpu_ok = "ok" if one.cpu_us_per_location <= CPU_TARGET_US else "MISS"
    print(
        f"  1 process at {size}: {one.rate:.0f} deleted/s (target >= {RATE_TARGET}) {rate_ok}; after start-up"
        f" {one.rate_after_start_up(start_up):.0f}/s; scrubber CPU {one.cpu_us_per_location:.0f} µs per location"
        f" (target <= {CPU_TARGET_US}) {cpu_ok}"
    )
    for compared in (run for run in runs if run.pool_size != SCRUB_POOL_SIZE):
        print(
            f"  pool {compared.pool_size} instead of {SCRUB_POOL_SIZE}, 1 process: {compared.rate:.0f} deleted/s"
            f" (x{compared.rate / one.rate:.2f}), CPU {compared.cpu_us_per_location:.0f} µs per location"
        )
    for processes in PROCESS_COUNTS[1:]:
        ratio = throughput[processes].rate / one.rate
        after = throughput[processes].rate_after_start_up(start_up) / one.rate_after_start_up(start_up)
        target = f"(target >= {SPEEDUP_TARGET:g}) {'ok' if ratio >= SPEEDUP_TARGET else 'MISS'}"
        print(
            f"  {processes} processes vs 1 at {size}: deleted/s x{ratio:.2f}"
            f" {target if processes == 2 else '(no target)'}; after start-up x{after:.2f}"
        )
    by_backlog = {
        run.backlog: run for run in runs if run.processes == 1 and run.backlog and run.pool_size == SCRUB_POOL_SIZE
    }
    small, large = by_backlog[rss_sizes[0]], by_backlog[rss_sizes[-1]]
    ratio = large.max_rss_kib[0] / small.max_rss_kib[0]
    print(
        f"  peak RSS of one scrubber at {large.backlog} vs {small.backlog}: {large.max_rss_kib[0] / 1024:.1f} MiB /"
        f" {small.max_rss_kib[0] / 1024:.1f} MiB = x{ratio:.2f} (target <= {RSS_TARGET:g})"
        f" {'ok' if ratio <= RSS_TARGET else 'MISS'}"
    )
    print(f"  (nothing due: {runs[0].max_rss_kib[0] / 1024:.1f} MiB; nproc {len(os.sched_getaffinity(0))})")
