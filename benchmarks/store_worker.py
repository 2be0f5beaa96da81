"""One (store, image size) transfer run in a process of its own: python -m benchmarks.store_worker < job.json.

benchmarks.stores starts one fresh worker per run (run()), so each peak RSS belongs to that size alone, and
prints them (print_transfers()). The job (JSON on stdin) names the store type, its options and the image size;
the worker builds the store as locquota does (the `locquota.stores` entry point, `Cls(name, options)`), makes
its first call (connecting, logging in), then for each round uploads the image (plan_upload + add fed by a
generator of 64 KiB chunks: the image is never in memory), reads it back with get() in 64 KiB chunks, checking
every byte, and deletes it at once (the memstore OSD holds at most one image). It prints one JSON line.

Memory is read from /proc/self/status (VmHWM, VmRSS): the peak of this process's own address space since
exec. getrusage's ru_maxrss is not: Linux carries the parent's peak RSS over fork and exec into it, so a
child of a large benchmark process would report the parent's size (shown beside it, for that reason).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from benchmarks.report import print_rows
from locations.stores.base import ENTRY_POINT_GROUP, Store, StoreError

REPOSITORY = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CHUNK_BYTES = 64 << 10
WORKER_DEADLINE_SECONDS = 900  # a run slower than this is stuck: killed, and the benchmark fails
# The image is a random block repeated: a period that is no power of two, so a part, segment or chunk
# read back at the wrong offset (they all are multiples of 64 KiB) cannot match by chance.
PERIOD = 65521
_BLOCK = os.urandom(PERIOD)
_PATTERN = _BLOCK * 3  # every slice of up to 2 * PERIOD bytes from any phase lies inside it


def chunks(size_bytes: int) -> Iterator[bytes]:
    """The image as CHUNK_BYTES pieces made on the fly; only one piece exists at a time."""
    for offset in range(0, size_bytes, CHUNK_BYTES):
        phase = offset % PERIOD
        yield _PATTERN[phase : phase + min(CHUNK_BYTES, size_bytes - offset)]


def matches(chunk: bytes, offset: int) -> bool:
    """Whether chunk is the image's bytes at offset (a chunk of any length, compared period by period)."""
    checked = 0
    while checked < len(chunk):
        phase = (offset + checked) % PERIOD
        piece = min(len(chunk) - checked, PERIOD)
        # Slices of bytes compare with memcmp; a memoryview compares item by item, 25 times slower.
        if chunk[checked : checked + piece] != _PATTERN[phase : phase + piece]:
            return False
        checked += piece
    return True


def memory_kib() -> dict[str, int]:
    """VmHWM (peak) and VmRSS (now) of this process, in KiB."""
    wanted = {"VmHWM", "VmRSS"}
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(action: Callable[[], Any]) -> tuple[Any, float, float]:
    """action's result, its wall seconds and this process's CPU seconds during it."""
    cpu, started = cpu_seconds(), time.perf_counter()
    result = action()
    return result, time.perf_counter() - started, cpu_seconds() - cpu


def build_store(kind: str, name: str, options: dict[str, str]) -> Store:
    """The store as locquota builds it: its entry point's class, called with (name, options)."""
    (point,) = (point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == kind)
    return point.load()(name, options)


def first_call(store: Store) -> float:
    """Connect (and log in) with a get_size of a name nothing is stored under; its wall seconds.

    Every later call reuses the connection, as in a server process; the first one's cost is reported apart.
    """
    started = time.perf_counter()
    try:
        store.get_size(store.plan_upload(uuid.uuid4()).url)
    except StoreError:
        pass
    else:
        raise SystemExit("get_size of a name nothing was stored under did not fail")
    return time.perf_counter() - started


def download(store: Store, url: str, size_bytes: int) -> int:
    """Read the image back in CHUNK_BYTES chunks, checking each; the largest chunk the store yielded."""
    offset = largest = 0
    for chunk in store.get(url, CHUNK_BYTES):
        if not matches(chunk, offset):
            raise SystemExit(f"get returned other bytes than were stored, at offset {offset}")
        offset += len(chunk)
        largest = max(largest, len(chunk))
    if offset != size_bytes:
        raise SystemExit(f"get returned {offset} bytes of {size_bytes}")
    return largest


def one_round(store: Store, size_bytes: int) -> dict[str, float]:
    """Upload, check the size, download and delete one image; times, CPU and memory of each step."""
    target = store.plan_upload(uuid.uuid4())
    url, upload_s, upload_cpu = timed(lambda: store.add(target, chunks(size_bytes), lambda: None))
    after_upload = memory_kib()
    if (stored := store.get_size(url)) != size_bytes:
        raise SystemExit(f"get_size says {stored} bytes, {size_bytes} were uploaded")
    largest, download_s, download_cpu = timed(lambda: download(store, url, size_bytes))
    _, delete_s, _ = timed(lambda: store.delete(url))
    return {
        "upload_s": upload_s,
        "upload_cpu_s": upload_cpu,
        "download_s": download_s,
        "download_cpu_s": download_cpu,
        "delete_s": delete_s,
        "peak_after_upload_kib": after_upload["VmHWM"],
        "largest_chunk": largest,
    }


def main() -> None:
    """Read the job from stdin, run its rounds, print one JSON line of results."""
    job = json.load(sys.stdin)
    size_bytes, rounds = int(job["size_bytes"]), int(job["rounds"])
    store = build_store(job["kind"], job["name"], job["options"])
    first_call_s = first_call(store)
    before = memory_kib()
    results = [one_round(store, size_bytes) for _ in range(rounds)]
    after = memory_kib()
    summary: dict[str, float] = {
        name: statistics.median(result[name] for result in results)
        for name in ("upload_s", "upload_cpu_s", "download_s", "download_cpu_s", "delete_s")
    }
    summary |= {
        "first_call_s": first_call_s,
        "rss_before_kib": before["VmRSS"],
        "peak_before_kib": before["VmHWM"],
        "peak_after_upload_kib": results[0]["peak_after_upload_kib"],
        "peak_kib": after["VmHWM"],
        "largest_chunk": max(result["largest_chunk"] for result in results),
    }
    print(json.dumps(summary))


# The benchmark's side ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """One worker's run: its JSON summary, and wait4's ru_maxrss of it."""

    backend: str
    size_bytes: int
    rounds: int
    summary: dict[str, float]
    ru_maxrss_kib: int
    spawner_peak_kib: int  # the benchmark process's VmHWM when it started the worker: what ru_maxrss inherits

    def rate(self, seconds_key: str) -> float:
        """MiB/s of the median round's upload_s or download_s."""
        return self.size_bytes / MIB / self.summary[seconds_key]


def run(kind: str, name: str, options: dict[str, str], size_bytes: int, rounds: int, workdir: Path) -> Transfer:
    """Run one worker process to its end; a failed worker fails the benchmark with its error output."""
    stem = workdir / f"worker-{kind}-{size_bytes}"
    job_path, out_path, err_path = (Path(f"{stem}.{suffix}") for suffix in ("json", "out", "err"))
    job = {"kind": kind, "name": name, "options": options, "size_bytes": size_bytes, "rounds": rounds}
    job_path.write_text(json.dumps(job))
    spawner_peak_kib = memory_kib()["VmHWM"]
    with job_path.open("rb") as stdin, out_path.open("wb") as out, err_path.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.store_worker"], stdin=stdin, stdout=out, stderr=err, cwd=REPOSITORY
        )
        watchdog = threading.Timer(WORKER_DEADLINE_SECONDS, child.kill)
        watchdog.start()
        try:
            _pid, status, rusage = os.wait4(child.pid, 0)
        finally:
            watchdog.cancel()
    job_path.unlink()  # it holds the store's credentials
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        error = err_path.read_text(errors="replace")[-3000:]
        raise click.ClickException(f"{kind}, {size_bytes} bytes: the worker exited {code}:\n{error}")
    summary = json.loads(out_path.read_text().splitlines()[-1])
    return Transfer(kind, size_bytes, rounds, summary, rusage.ru_maxrss, spawner_peak_kib)


def print_transfers(transfers: list[Transfer]) -> None:
    """One row per worker, grouped by backend; then each backend's peak RSS at its largest size over its smallest."""
    headers = (
        "backend", "MiB", "rounds", "upload MiB/s", "download MiB/s", "delete ms", "first call ms",
        "CPU s up/down", "RSS before MiB", "peak RSS MiB", "peak - before", "ru_maxrss MiB", "largest chunk",
    )  # fmt: skip
    rows = [
        (
            run.backend, str(run.size_bytes // MIB), str(run.rounds), f"{run.rate('upload_s'):.0f}",
            f"{run.rate('download_s'):.0f}", f"{run.summary['delete_s'] * 1000:.1f}",
            f"{run.summary['first_call_s'] * 1000:.0f}",
            f"{run.summary['upload_cpu_s']:.2f}/{run.summary['download_cpu_s']:.2f}",
            f"{run.summary['rss_before_kib'] / 1024:.1f}", f"{run.summary['peak_kib'] / 1024:.1f}",
            f"{(run.summary['peak_kib'] - run.summary['rss_before_kib']) / 1024:.1f}",
            f"{run.ru_maxrss_kib / 1024:.1f}", f"{int(run.summary['largest_chunk'])}",
        )
        for run in transfers
    ]  # fmt: skip
    print_rows(headers, rows, {0}, group=0)
    spawner = sorted(run.spawner_peak_kib / 1024 for run in transfers)
    print(
        "(one worker process per row; rates: size / wall time of the median round. peak RSS: the worker's VmHWM,"
        "\n its own address space since exec. ru_maxrss (wait4) is the larger of that and this benchmark process's"
        f"\n peak RSS when it started the worker ({spawner[0]:.0f} to {spawner[-1]:.0f} MiB here): Linux carries it"
        " over fork and exec)"
    )
    by_backend: dict[str, list[Transfer]] = {}
    for run in transfers:
        by_backend.setdefault(run.backend, []).append(run)
    for backend, runs in by_backend.items():
        if len(runs) > 1:
            small, large = runs[0].summary["peak_kib"] / 1024, runs[-1].summary["peak_kib"] / 1024
            print(
                f"{backend}: peak RSS at {runs[-1].size_bytes // MIB} MiB / at {runs[0].size_bytes // MIB} MiB ="
                f" {large:.1f} / {small:.1f} = x{large / small:.2f}"
            )


if __name__ == "__main__":
    main()
