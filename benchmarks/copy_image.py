"""The copy-image benchmark (issue 16): Glance's copy-image import against the stores' own copy, and its memory.

A real API process (benchmarks.copy_image_worker: gunicorn as shipped, one worker, a fresh one per image
size) on the benchmark's PostgreSQL, with five file stores on the same disk (`source` and four targets)
and a staging directory. For each size and round, an image is uploaded into `source`, then copied to 2 and
to 4 stores by `POST /v2/images/{id}/import` (copy-image, as an admin), timed from the request to the end
the task records, once `GET /v2/images/{id}` (polled) shows it ended. The floor is the same copy done the
file store's way in this process: the source read in the app's chunk size, each target written to a scratch
file, fsync'd and linked to its name, one target after the other. Every copy is read back and checked byte
for byte, then everything is deleted. Memory is the worker's own VmHWM (/proc/<pid>/status).
"""

import hashlib
import http.client
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, text

from benchmarks import copy_image_worker, store_worker
from benchmarks.copy_image_worker import ApiProcess
from benchmarks.deployment import fresh_database, write_ini
from benchmarks.report import command_line, load_average, print_rows
from benchmarks.server import settings as api_settings
from locations.services.upload import HASH_ALGORITHM
from locations.stores.file import SCRATCH_SUFFIX
from locquota.db import make_engine, upgrade_to_head
from locquota.settings import Settings

DATABASE = "locquota_copy_bench"
MIB = store_worker.MIB
FULL_SIZES, SMOKE_SIZES = (64 * MIB, 256 * MIB), (8 * MIB,)
FULL_ROUNDS, SMOKE_ROUNDS = 3, 1
STORE_COUNTS = (2, 4)
SOURCE, TARGETS = "source", ("copy1", "copy2", "copy3", "copy4")
CHUNK_BYTES = Settings().upload_chunk_bytes  # what the import runner reads and the file store writes per call
WARMUP_BYTES = 1 * MIB
# Each GET /v2/images/{id} costs the API worker ~4 ms of CPU beside the copy (polling every 20 ms made copies
# ~20% slower here), so the poll only finds out that the task ended; when it ended comes from the task's row.
POLL_SECONDS = 0.2
CLOCK_SLACK_SECONDS = 0.05  # the task's recorded end may not be later than the poll that saw it by more
COPY_DEADLINE_SECONDS = 600  # a copy slower than this is stuck: the benchmark fails
# The shipped gunicorn config closes a keep-alive connection idle for 5 s (keepalive); a client idle for longer
# than this (while the floor runs) connects again rather than race the server's close.
IDLE_RECONNECT_SECONDS = 2.0
START_SECONDS = 60  # the first answer of a fresh API process (loading the app) comes within this
# A finite limit, so every copy's admission runs the conditional UPDATE a real deployment runs (MiB).
IMAGE_SIZE_LIMIT_MIB = 1 << 20
RATIO_TARGET = 1.3
FLAT_TARGET = 1.1  # "flat": peak RSS at the largest size over the smallest, close to 1
TENANT = "bench-copy-tenant"
ADMIN = "bench-copy-operators"
JSON_TYPE, DATA_TYPE = "application/json", "application/octet-stream"


@dataclass(frozen=True, slots=True)
class CopyRound:
    """One image of one size copied to `stores` stores: by the API, and by the floor (plain, and with digests)."""

    size_bytes: int
    stores: int
    api_seconds: float  # the POST to the end the task recorded (the same wall clock: one machine)
    seen_seconds: float  # the POST to the poll that saw the task ended: what a polling client waits
    floor_seconds: float
    floor_digest_seconds: float  # the floor plus the md5 and sha512 the runner computes per copy
    worker_cpu_seconds: float
    worker_written_bytes: int
    copy_peak_kib: int | None  # the worker's VmHWM after the copy, reset just before it (None: no reset)
    prior_peak_kib: int  # the worker's VmHWM just before that reset: its peak over everything before the copy

    @property
    def copied_mib(self) -> float:
        return self.size_bytes * self.stores / MIB


@dataclass(frozen=True, slots=True)
class Rig:
    """What one size's rounds work with: the API process, the database, the two callers, the directories."""

    api: ApiProcess
    engine: Engine
    tenant: "Client"  # owns the images
    admin: "Client"  # runs copy-image (admin-only)
    roots: dict[str, Path]  # the stores' directories, by store name
    floors: list[Path]  # the floor's target directories, on the same disk


@dataclass(frozen=True, slots=True)
class SizeMemory:
    """The worker's memory over one size's process: after warm-up, its whole-life peak, the copies' peak."""

    size_bytes: int
    worker_pid: int
    rss_before_kib: int
    peak_kib: int
    copy_peak_kib: int | None


def benchmark(admin_url: str, *, smoke: bool) -> None:
    """Run every size's rounds in a fresh API process, then print the timing and memory tables."""
    sizes, rounds = (SMOKE_SIZES, SMOKE_ROUNDS) if smoke else (FULL_SIZES, FULL_ROUNDS)
    started = time.perf_counter()
    url = fresh_database(admin_url, DATABASE)
    engine = make_engine(url)
    upgrade_to_head(engine)
    results: list[CopyRound] = []
    memory: list[SizeMemory] = []
    with tempfile.TemporaryDirectory(prefix="locquota-copy-bench-") as workdir:
        work = Path(workdir)
        roots = {name: work / "stores" / name for name in (SOURCE, *TARGETS)}
        floors = [work / "floor" / name for name in TARGETS]  # the floor's own directories, on the same disk
        for directory in [*roots.values(), *floors, work / "staging"]:
            directory.mkdir(parents=True)
        ini = write_ini(work / "copy.ini", _settings(url, roots, work / "staging"))
        _print_workload(sizes, rounds, work)
        for size in sizes:
            size_work = work / f"api-{size // MIB}"
            size_work.mkdir()
            with copy_image_worker.serving(ini, size_work, _answers) as api:
                rounds_done, used = _measure_size(api, engine, roots, floors, size, rounds)
            results += rounds_done
            memory.append(used)
    engine.dispose()
    print()
    _print_times(results)
    print()
    _print_memory(memory)
    print(f"copy part took {time.perf_counter() - started:.0f} s; load avg at the end: {load_average()}")
    print(f"command: {command_line()}")


def _settings(database_url: str, roots: dict[str, Path], staging: Path) -> dict[str, str]:
    """The API part's deployment (noauth, no Redis), with Glance's multi-store and import settings."""
    single_store = ("locquota.enabled_stores", "locquota.default_store")
    base = {
        key: value
        for key, value in api_settings(database_url, roots[SOURCE]).items()
        if key not in single_store and not key.startswith("locquota.store.")
    }
    return {
        **base,
        "locquota.enabled_backends": ", ".join(f"{name}:file" for name in roots),
        "locquota.default_backend": SOURCE,
        **{f"locquota.store.{name}.filesystem_store_datadir": str(root) for name, root in roots.items()},
        "locquota.node_staging_uri": f"file://{staging}",
        "locquota.quota.image_size_total": str(IMAGE_SIZE_LIMIT_MIB),
    }


def _answers(port: int) -> None:
    """The first request, which the worker answers once it has loaded the app."""
    client = Client(port, TENANT, timeout=START_SECONDS)
    try:
        client.request("GET", "/versions", 200)
    finally:
        client.close()


# One size ---------------------------------------------------------------------------------------------------------


def _measure_size(
    api: ApiProcess, engine: Engine, roots: dict[str, Path], floors: list[Path], size: int, rounds: int
) -> tuple[list[CopyRound], SizeMemory]:
    """A warm-up copy (untimed), then `rounds` rounds of each store count; the worker's memory around them."""
    rig = Rig(api, engine, Client(api.port, TENANT), Client(api.port, ADMIN, admin=True), roots, floors)
    try:
        _warm_up(rig)
        before = api.counters()
        done: list[CopyRound] = []
        for round_number in range(rounds):
            counts = STORE_COUNTS if round_number % 2 == 0 else tuple(reversed(STORE_COUNTS))
            for count in counts:
                copy = _one_round(rig, size, count, round_number)
                done.append(copy)
                click.echo(
                    f"{size // MIB:>4} MiB to {count} stores, round {round_number + 1}: API {copy.api_seconds:.2f} s,"
                    f" floor {copy.floor_seconds:.2f} s (x{copy.api_seconds / copy.floor_seconds:.2f})"
                )
        after = api.counters()
        if not api.still_the_same_worker():
            raise click.ClickException("the gunicorn worker was replaced during the run: its memory is not the copies'")
    finally:
        rig.tenant.close()
        rig.admin.close()
    peaks = [copy.copy_peak_kib for copy in done]
    copy_peak = None if None in peaks else max(peak for peak in peaks if peak is not None)
    # The whole life's peak: each reset forgot the mark so far, so it is the largest reading taken before one.
    life_peak = max(after.peak_kib, *(copy.prior_peak_kib for copy in done))
    return done, SizeMemory(size, api.worker_pid, before.rss_kib, life_peak, copy_peak)


def _warm_up(rig: Rig) -> None:
    """A small image copied to every target and deleted: lazy imports, pools and the code paths, untimed."""
    image_id = rig.tenant.upload_new(WARMUP_BYTES)
    started = time.perf_counter()
    rig.admin.copy_image(image_id, TARGETS)
    _wait_for_task(rig.tenant, image_id, started)
    _check_landed(rig, image_id, TARGETS, WARMUP_BYTES)
    rig.tenant.request("DELETE", f"/v2/images/{image_id}", 204)
    _check_empty(rig.roots)


def _one_round(rig: Rig, size: int, count: int, round_number: int) -> CopyRound:
    """Upload an image; copy it by the floor (plain and with digests) and by the API, in an order that rotates."""
    image_id = rig.tenant.upload_new(size)
    source = rig.roots[SOURCE] / image_id
    targets = TARGETS[:count]
    measured: dict[str, Any] = {}

    def by_api() -> None:
        measured["api"] = _api_copy(rig, image_id, targets)

    def by_floor() -> None:
        measured["floor"] = _floor_copy(source, rig.floors[:count], size, digests=False)

    def by_floor_with_digests() -> None:
        measured["digests"] = _floor_copy(source, rig.floors[:count], size, digests=True)

    order: list[Callable[[], None]] = [by_floor, by_api, by_floor_with_digests]
    shift = round_number % len(order)
    for step in order[shift:] + order[:shift]:
        step()
    _check_landed(rig, image_id, targets, size)
    rig.tenant.request("DELETE", f"/v2/images/{image_id}", 204)  # delayed_delete off: the data goes now
    _check_empty(rig.roots)
    api_seconds, seen_seconds, counters, peak, prior_peak = measured["api"]
    return CopyRound(
        size, count, api_seconds, seen_seconds, measured["floor"], measured["digests"],
        counters.cpu_seconds, counters.written_bytes, peak, prior_peak,
    )  # fmt: skip


def _api_copy(
    rig: Rig, image_id: str, targets: tuple[str, ...]
) -> tuple[float, float, copy_image_worker.Counters, int | None, int]:
    """POST copy-image and poll until the task ended: its seconds (recorded, seen), the worker's counters and peaks."""
    prior_peak = rig.api.counters().peak_kib  # the reset below forgets it
    reset = rig.api.reset_peak()
    before = rig.api.counters()
    posted_at, started = datetime.now(UTC).replace(tzinfo=None), time.perf_counter()  # naive UTC, as locquota's
    rig.admin.copy_image(image_id, targets)
    seen_seconds = _wait_for_task(rig.tenant, image_id, started)
    after = rig.api.counters()
    api_seconds = (_task_end(rig.engine, image_id) - posted_at).total_seconds()
    if not 0 < api_seconds <= seen_seconds + CLOCK_SLACK_SECONDS:
        raise click.ClickException(
            f"the task's end ({api_seconds:.3f} s) disagrees with the poll's ({seen_seconds:.3f} s)"
        )
    delta = after.since(before)
    if delta.written_bytes < len(targets) * _size_of(rig.tenant, image_id):
        raise click.ClickException(
            f"worker {rig.api.worker_pid} wrote {delta.written_bytes} bytes during the copy: not the one that copied"
        )
    return api_seconds, seen_seconds, delta, after.peak_kib if reset else None, prior_peak


def _wait_for_task(client: "Client", image_id: str, started: float) -> float:
    """Poll the image until its import ended (no stores left to import to, no import lock); seconds since started."""
    deadline = time.monotonic() + COPY_DEADLINE_SECONDS
    while True:
        image = client.request("GET", f"/v2/images/{image_id}", 200)
        if image.get("os_glance_importing_to_stores") == "" and "os_glance_import_task" not in image:
            return time.perf_counter() - started
        if time.monotonic() > deadline:
            raise click.ClickException(f"the copy of {image_id} did not end within {COPY_DEADLINE_SECONDS} s: {image}")
        time.sleep(POLL_SECONDS)  # the poll interval: what the client waits between two looks


def _task_end(engine: Engine, image_id: str) -> datetime:
    """When the image's one task ended, as the worker recorded it (naive UTC, finish_task's updated_at)."""
    with engine.connect() as connection:
        (ended,) = connection.execute(
            text("SELECT updated_at FROM tasks WHERE image_id = :image"), {"image": uuid.UUID(image_id)}
        ).one()
    return ended


def _size_of(client: "Client", image_id: str) -> int:
    return int(client.request("GET", f"/v2/images/{image_id}", 200)["size"])


# The floor --------------------------------------------------------------------------------------------------------


def _floor_copy(source: Path, directories: list[Path], size: int, *, digests: bool) -> float:
    """Copy source into each directory as locquota's file store writes (scratch file, fsync, link); wall seconds.

    One target after the other, the source read again for each in CHUNK_BYTES reads, as the import runner
    does. With digests, md5 and sha512 of every chunk too, per copy, as the runner checks each copy.
    The copies are checked byte for byte and removed afterwards (not timed).
    """
    name = f"floor-{uuid.uuid4()}"
    started = time.perf_counter()
    for directory in directories:
        final, scratch = directory / name, directory / f".{name}.{uuid.uuid4().hex}{SCRATCH_SUFFIX}"
        md5, sha512 = hashlib.md5(usedforsecurity=False), hashlib.new(HASH_ALGORITHM)
        with source.open("rb") as reader, scratch.open("xb") as writer:
            while chunk := reader.read(CHUNK_BYTES):
                if digests:
                    md5.update(chunk)
                    sha512.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        os.link(scratch, final)
        scratch.unlink()
    seconds = time.perf_counter() - started
    for directory in directories:
        _check_bytes(directory / name, size)
        (directory / name).unlink()
    return seconds


# Checks -----------------------------------------------------------------------------------------------------------


def _check_landed(rig: Rig, image_id: str, targets: tuple[str, ...], size: int) -> None:
    """The task succeeded, the image is active in the source and every target, and each file holds its bytes."""
    image = rig.tenant.request("GET", f"/v2/images/{image_id}", 200)
    stores = set(image.get("stores", "").split(","))
    if image["status"] != "active" or stores != {SOURCE, *targets} or image.get("os_glance_failed_import"):
        raise click.ClickException(f"copy-image of {image_id} did not land in {', '.join(targets)}: {image}")
    tasks = rig.admin.request("GET", f"/v2/images/{image_id}/tasks", 200)["tasks"]
    if [task["status"] for task in tasks] != ["success"]:
        raise click.ClickException(f"copy-image of {image_id}: tasks {tasks}")
    for name in targets:
        _check_bytes(rig.roots[name] / image_id, size)


def _check_bytes(path: Path, size: int) -> None:
    """The file holds the image's bytes (store_worker's pattern), all of them and nothing more."""
    offset = 0
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            if not store_worker.matches(chunk, offset):
                raise click.ClickException(f"{path}: other bytes than the image's at offset {offset}")
            offset += len(chunk)
    if offset != size:
        raise click.ClickException(f"{path}: {offset} bytes, the image has {size}")


def _check_empty(roots: dict[str, Path]) -> None:
    """After a deletion every store's directory is empty: no data, no scratch file left behind."""
    left = {name: os.listdir(root) for name, root in roots.items() if os.listdir(root)}
    if left:
        raise click.ClickException(f"files left in the stores after deleting the image: {left}")


# The client -------------------------------------------------------------------------------------------------------


class Client:
    """One keep-alive connection, with the identity headers auth_token sets (the deployment runs noauth)."""

    def __init__(
        self, port: int, project_id: str, *, admin: bool = False, timeout: float = COPY_DEADLINE_SECONDS
    ) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._last_used = time.monotonic()
        self._headers = {
            "X-Identity-Status": "Confirmed",
            "X-Project-Id": project_id,
            "X-Roles": "admin,member" if admin else "member",
        }

    def request(
        self, method: str, path: str, expect: int, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """Send one request; its JSON body (None when empty). Any other status fails the benchmark."""
        self._fresh_if_idle()
        self._connection.request(method, path, body=body, headers={**self._headers, **(headers or {})})
        return self._answer(method, path, expect)

    def upload_new(self, size: int) -> str:
        """Create an image and upload size bytes of store_worker's pattern into `source`, streamed; its id."""
        created = json.dumps({"name": "copy-bench", "disk_format": "raw", "container_format": "bare"}).encode()
        image_id = str(self.request("POST", "/v2/images", 201, created, {"Content-Type": JSON_TYPE})["id"])
        headers = {
            **self._headers, "Content-Type": DATA_TYPE, "Content-Length": str(size), "X-Image-Meta-Store": SOURCE,
        }  # fmt: skip
        self._stream("PUT", f"/v2/images/{image_id}/file", headers, store_worker.chunks(size))
        self._answer("PUT", f"/v2/images/{image_id}/file", 204)
        return image_id

    def copy_image(self, image_id: str, stores: Iterable[str]) -> None:
        """POST copy-image into stores (202, the task runs in the worker)."""
        body = json.dumps({"method": {"name": "copy-image"}, "stores": list(stores)}).encode()
        self.request("POST", f"/v2/images/{image_id}/import", 202, body, {"Content-Type": JSON_TYPE})

    def close(self) -> None:
        """Close the connection, so the server can stop."""
        self._connection.close()

    def _fresh_if_idle(self) -> None:
        """Reconnect after a pause the server may have ended the keep-alive connection in (it closes idle ones)."""
        if time.monotonic() - self._last_used > IDLE_RECONNECT_SECONDS:
            self._connection.close()  # http.client connects again on the next request

    def _stream(self, method: str, path: str, headers: dict[str, str], chunks: Iterable[bytes]) -> None:
        self._fresh_if_idle()
        self._connection.putrequest(method, path)
        for name, value in headers.items():
            self._connection.putheader(name, value)
        self._connection.endheaders()
        for chunk in chunks:
            self._connection.send(chunk)

    def _answer(self, method: str, path: str, expect: int) -> Any:
        response = self._connection.getresponse()
        body = response.read()
        self._last_used = time.monotonic()
        if response.status != expect:
            raise click.ClickException(f"{method} {path} answered {response.status}: {body[:300]!r}")
        return json.loads(body) if body else None


# What the reader sees ---------------------------------------------------------------------------------------------


def _print_workload(sizes: tuple[int, ...], rounds: int, work: Path) -> None:
    stores = " and to ".join(map(str, STORE_COUNTS))
    lines = [
        f"images of {', '.join(str(size // MIB) for size in sizes)} MiB uploaded into `{SOURCE}` (PUT .../file), then",
        f"copied by copy-image (POST .../import, as an admin) to {stores} file stores, {rounds} round(s) each.",
        f"Timed from the POST to the task's recorded end; GET /v2/images/{{id}}, polled every"
        f" {POLL_SECONDS * 1000:.0f} ms, tells when",
        "it ended. Floor: the same copy in this process as the file store writes it (reads and writes of"
        f" {CHUNK_BYTES >> 10} KiB,",
        "scratch file, fsync, link), one target after the other; again with md5 + sha512 of every chunk.",
        "gunicorn (deploy/gunicorn.conf.py, 1 gthread worker, a fresh one per size), noauth, Redis off; the",
        f"stores' directories under {work} (one disk). Memory: the worker's VmHWM",
        "(/proc/<pid>/status), reset to its RSS before each copy (clear_refs).",
    ]
    for number, line in enumerate(lines):
        print(f"{'copy' if number == 0 else '':<10}  {line}")
    print(flush=True)


def _print_times(results: list[CopyRound]) -> None:
    """One row per (size, stores): medians over the rounds, the ratio to the floor beside its target."""
    groups: dict[tuple[int, int], list[CopyRound]] = {}
    for result in results:
        groups.setdefault((result.size_bytes, result.stores), []).append(result)
    headers = (
        "MiB", "stores", "rounds", "API s", "seen s", "floor s", "API/floor", f"<={RATIO_TARGET:g}",
        "floor+digests s", "API/(floor+digests)", "API MiB/s", "floor MiB/s", "worker CPU s",
    )  # fmt: skip
    rows = []
    for (size, stores), runs in sorted(groups.items()):
        api, seen = _median(runs, "api_seconds"), _median(runs, "seen_seconds")
        floor, digests = _median(runs, "floor_seconds"), _median(runs, "floor_digest_seconds")
        copied = runs[0].copied_mib
        rows.append(
            (
                str(size // MIB), str(stores), str(len(runs)), f"{api:.2f}", f"{seen:.2f}", f"{floor:.2f}",
                f"{api / floor:.2f}", "ok" if api / floor <= RATIO_TARGET else "MISS", f"{digests:.2f}",
                f"{api / digests:.2f}", f"{copied / api:.0f}", f"{copied / floor:.0f}",
                f"{_median(runs, 'worker_cpu_seconds'):.2f}",
            )
        )  # fmt: skip
    print_rows(headers, rows, set(), group=0)
    print(
        "(medians over the rounds. API s: from the POST to the end the task recorded (its updated_at; one machine,"
        f"\n one clock); seen s: to the poll that saw it (every {POLL_SECONDS * 1000:.0f} ms). floor+digests: the floor"
        "\n computing md5 and sha512 of every chunk, as the import runner checks each copy against the image's"
        "\n checksums. MiB/s: bytes written to the targets over the time. worker CPU s: the API worker's user +"
        "\n system CPU during the copy)"
    )


def _print_memory(memory: list[SizeMemory]) -> None:
    headers = ("MiB", "worker pid", "RSS after warm-up MiB", "peak RSS MiB", "peak - warm-up", "copy peak MiB")
    rows = [
        (
            str(used.size_bytes // MIB), str(used.worker_pid), f"{used.rss_before_kib / 1024:.1f}",
            f"{used.peak_kib / 1024:.1f}", f"{(used.peak_kib - used.rss_before_kib) / 1024:.1f}",
            "-" if used.copy_peak_kib is None else f"{used.copy_peak_kib / 1024:.1f}",
        )
        for used in memory
    ]  # fmt: skip
    print_rows(headers, rows, set())
    print(
        "(one gunicorn worker per size. peak RSS: its highest VmHWM over its life, start-up, uploads and copies"
        "\n included (read before each reset too); copy peak: the largest VmHWM after a copy, the mark reset to the"
        "\n current RSS just before its POST)"
    )
    if len(memory) > 1:
        small, large = memory[0], memory[-1]
        ratio = large.peak_kib / small.peak_kib
        print(
            f"peak RSS at {large.size_bytes // MIB} MiB / at {small.size_bytes // MIB} MiB ="
            f" {large.peak_kib / 1024:.1f} / {small.peak_kib / 1024:.1f} = x{ratio:.2f}"
            f" (target flat, < {FLAT_TARGET:g}) {'ok' if ratio < FLAT_TARGET else 'MISS'}"
        )
        if small.copy_peak_kib is not None and large.copy_peak_kib is not None:
            print(
                f"copy peak at {large.size_bytes // MIB} MiB / at {small.size_bytes // MIB} MiB ="
                f" x{large.copy_peak_kib / small.copy_peak_kib:.2f}"
            )


def _median(runs: list[CopyRound], field: str) -> float:
    return statistics.median(float(getattr(run, field)) for run in runs)
