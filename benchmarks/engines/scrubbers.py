"""Scrubber deletions/s on one engine: scrubber processes, one per database node, on a pending_delete backlog.

Each process is the Galera tests' scrubber (tests/galera/recording_scrubber.py): built as `locquota scrub`
builds it (the same Scrubber, settings and store; without the reaper's pass, which has nothing to do here), it
says when it is ready and waits for the release. The clock runs from the release of every scrubber to the last
one's exit, so start-up (about 1.7 s of imports per process, which the scrubber part reports apart) is not in
it. Its store writes down each deletion: a run fails unless the store was asked to delete every file exactly
once, every location ended deleted and the store root is empty.

The backlog is benchmarks.backlog's (one pending_delete image per 4 KiB file, every location due), loaded here
without that module's PostgreSQL-only reset (TRUNCATE ... RESTART IDENTITY, ANALYZE): the last run's rows are
deleted, the new ones inserted through node 1, and on Galera every node has applied them before the release.
"""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, delete, insert, text

from benchmarks import backlog
from benchmarks.deployment import write_ini
from benchmarks.engines.cpu import Busy, CpuWatch, cpu_seconds
from benchmarks.engines.servers import POSTGRESQL, Server
from benchmarks.scrubber import SCRUB_BATCH_SIZE, SCRUB_POOL_SIZE
from benchmarks.server import settings
from locations.models import Image, Location
from locquota.clock import Clock
from tests.galera.scrubber_processes import CHILD, deletions_by_worker

REPOSITORY = Path(__file__).resolve().parents[2]
# A run that takes longer than this is stuck: its processes are killed and the benchmark fails.
RUN_DEADLINE_SECONDS = 1800


@dataclass(frozen=True)
class Scrub:
    """One run: `scrubbers` processes (scrubber n attached to node n) released together on `backlog` locations."""

    engine: str
    scrubbers: int
    backlog: int
    wall_seconds: float
    deleted: tuple[int, ...]  # per process
    batches: tuple[int, ...]  # per process
    cpu_seconds: float  # the scrubbers' user + system time after the release
    conflicts: int | None  # Galera: transactions aborted for another node's write, summed over nodes
    busy: Busy

    @property
    def rate(self) -> float:
        """Locations deleted per second from the release to the last exit."""
        return self.backlog / self.wall_seconds

    @property
    def cpu_us_per_location(self) -> float:
        """The scrubbers' CPU after the release, per location."""
        return self.cpu_seconds / max(self.backlog, 1) * 1e6


def load(server: Server, engine: Engine, store_root: Path, count: int) -> None:
    """Delete the last backlog, then add `count` due pending_delete locations and their files (oldest due first)."""
    with engine.begin() as connection:
        connection.execute(delete(Location.__table__))  # only backlogs have locations: the admissions add none
        connection.execute(delete(Image.__table__).where(Image.__table__.c.owner == backlog.OWNER))
    store_root.mkdir(parents=True)
    now, data = Clock().now(), os.urandom(backlog.FILE_BYTES)
    for start in range(0, count, backlog.BATCH_LOCATIONS):
        images, locations = [], []
        for n in range(start, min(start + backlog.BATCH_LOCATIONS, count)):
            image_id = uuid.uuid4()
            path = store_root / str(image_id)
            path.write_bytes(data)
            created, pending = now - timedelta(days=30), now - timedelta(days=1) + timedelta(milliseconds=n)
            images.append(backlog.image_row(image_id, n, created, pending))
            locations.append(backlog.location_row(image_id, "file://" + quote(str(path)), created, pending))
        with engine.begin() as connection:
            connection.execute(insert(Image.__table__), images)
            connection.execute(insert(Location.__table__), locations)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # Fresh statistics, as a backlog that built up over time would have.
        analyze = "ANALYZE images, locations" if server.engine == POSTGRESQL else "ANALYZE TABLE images, locations"
        connection.execute(text(analyze)).close()
    server.wait_until_applied()


def scrub(server: Server, check: Engine, work: Path, *, scrubbers: int, backlog_size: int) -> Scrub:
    """Load a fresh backlog, release `scrubbers` processes on nodes 1..n together, time them and check the result."""
    name = f"{server.engine}-{scrubbers}"
    store_root = (work / f"store-{name}").resolve()
    load(server, check, store_root, backlog_size)
    inis = [
        write_ini(
            work / f"scrub-{name}-node{node}.ini",
            {
                **settings(url, store_root),  # no Redis: the scrubber does not read the cache
                "locquota.scrub_batch_size": str(SCRUB_BATCH_SIZE),
                "locquota.scrub_pool_size": str(SCRUB_POOL_SIZE),
            },
        )
        for node, url in enumerate(server.urls[:scrubbers], start=1)
    ]
    deletions = work / f"deletions-{name}.log"
    before = server.conflicts()
    wall, outcomes, batches, cpu_after_release, busy = _run(server, inis, deletions, work / f"scrubber-{name}")
    after = server.conflicts()
    _check(check, store_root, deletions, outcomes, backlog_size, name)
    return Scrub(
        server.engine,
        scrubbers,
        backlog_size,
        wall,
        tuple(counts["deleted"] for counts in outcomes),
        tuple(batches),
        cpu_after_release,
        None if before is None or after is None else after - before,
        busy,
    )


@dataclass
class _Child:
    """One scrubber process and what it reported: its outcome counts, batches, and CPU over its whole life."""

    process: subprocess.Popen[str]
    stderr_path: Path
    outcomes: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    cpu_seconds: float = 0.0

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def await_ready(self) -> None:
        """Return once the child says it is built (`ready <worker>`); fail if it ends first."""
        if not self.process.stdout.readline().startswith("ready "):  # type: ignore[union-attr]
            raise RuntimeError(f"a scrubber did not start: {self.stderr_tail()}")

    def release(self) -> None:
        self.process.stdin.write("go\n")  # type: ignore[union-attr]
        self.process.stdin.close()  # type: ignore[union-attr]

    def collect(self) -> None:
        """Read the child's lines to its end, then reap it with its rusage."""
        for line in self.process.stdout:  # type: ignore[union-attr]
            word, _, rest = line.rstrip("\n").partition(" ")
            self.batches += word == "batch"
            if word == "outcomes":
                self.outcomes = Counter(json.loads(rest))
        _pid, status, rusage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_seconds = rusage.ru_utime + rusage.ru_stime

    def end(self) -> None:
        """Kill the child unless it was reaped, and close its pipes."""
        if self.process.returncode is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def _start(inis: list[Path], deletions: Path, log_prefix: Path) -> list[_Child]:
    children = []
    for number, ini in enumerate(inis):
        stderr_path = Path(f"{log_prefix}-{number}.stderr")
        with stderr_path.open("w") as stderr:
            command = [sys.executable, CHILD, str(ini), str(deletions)]
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPOSITORY
            )
        children.append(_Child(process, stderr_path))
    return children


def _run(
    server: Server, inis: list[Path], deletions: Path, log_prefix: Path
) -> tuple[float, list[Counter[str]], list[int], float, Busy]:
    """Start one child per .ini, release them once all are built; wall, outcomes, batches, CPU after release."""
    children = _start(inis, deletions, log_prefix)
    watchdog = threading.Timer(RUN_DEADLINE_SECONDS, lambda: [child.process.kill() for child in children])
    watchdog.start()
    try:
        for child in children:
            child.await_ready()
        at_release = cpu_seconds([child.process.pid for child in children])  # their start-up: not the scrub's
        watch = CpuWatch(server.pids, [])
        started = time.perf_counter()
        for child in children:
            child.release()
        for child in children:
            child.collect()
        wall = time.perf_counter() - started
        scrub_cpu = sum(child.cpu_seconds for child in children) - at_release
        busy = watch.busy(scrub_cpu)
    finally:
        watchdog.cancel()
        for child in children:
            child.end()
    for child in children:
        if child.process.returncode != 0:
            raise RuntimeError(f"a scrubber exited with {child.process.returncode}: {child.stderr_tail()}")
    return wall, [child.outcomes for child in children], [child.batches for child in children], scrub_cpu, busy


def _check(
    engine: Engine, store_root: Path, deletions: Path, outcomes: list[Counter[str]], count: int, name: str
) -> None:
    """Every location deleted, each file asked for exactly once, the store root empty; else the benchmark fails."""
    deleted = sum(counts["deleted"] for counts in outcomes)
    asked = Counter(url for _worker, url in deletions_by_worker(deletions))
    statuses, left = backlog.status_counts(engine), backlog.files_left(store_root)
    twice = sum(1 for times in asked.values() if times > 1)
    if deleted != count or statuses != {"deleted": count} or len(asked) != count or twice or left:
        raise RuntimeError(
            f"{name}: outcomes {outcomes}, statuses {statuses}, {len(asked)} files asked for ({twice} more than"
            f" once), {left} files left, of a backlog of {count}"
        )
