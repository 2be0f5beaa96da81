"""The stores benchmark (issue 15): upload and download throughput, memory, and the scrubber's deletions/s per backend.

Backends: `file` in a temporary directory, `rbd` on the real Ceph of tests/ceph.py (memstore OSD), `s3` on its
radosgw, `swift` on the real Swift of tests/swift.py behind the real Keystone of tests/keystone.py; the servers
are the test suite's own fixture classes, started here (Ceph in a thread while Keystone and Swift start).

Transfers: each (backend, image size) runs in a fresh child process (benchmarks.store_worker), so its peak RSS
is that size's alone, and the image is deleted as soon as it is measured. Scrubber: the real
locations.scrubber.Scrubber in this process, with 1 and then 4 deletions in flight, over a backlog of
pending_delete locations whose data was uploaded through the same store, on the benchmark's PostgreSQL.
After every run the server is listed with its own client: anything left behind fails the benchmark.
"""

import os
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import click
import pytest
from sqlalchemy import Engine, insert, text

from benchmarks import store_worker
from benchmarks.deployment import fresh_database
from benchmarks.report import load_average, print_rows
from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility
from locations.scrubber import Scrubber
from locations.services.data_references import DataKeys
from locations.services.factories import scrub_policy
from locations.stores.base import Store, StoreRegistry, load_stores
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT
from locquota.db import make_engine, upgrade_to_head
from locquota.settings import Settings
from tests.ceph import CephCluster
from tests.fakes import unit_of_work_on
from tests.keystone import KeystoneServer, ensure_keystone_venv
from tests.swift import SwiftCluster

DATABASE = "locquota_stores_bench"
MIB = store_worker.MIB
FULL_SIZES, SMOKE_SIZES = (1 * MIB, 64 * MIB, 512 * MIB), (1 * MIB,)
FULL_BACKLOG, SMOKE_BACKLOG = 500, 20
IN_FLIGHT = (1, 4)
# Small images are timed several times in their process (the median is shown): a single 1 MiB transfer
# takes milliseconds, and one stray scheduling delay would be the number.
SMALL_IMAGE_ROUNDS, SMALL_IMAGE_BYTES = 5, 8 * MIB
BACKLOG_OBJECT_BYTES = 64 << 10  # one chunk: the deletion, not the data's size, is what is measured
LOAD_THREADS = 4
SECRET_WORDS = ("key", "password", "secret")
OWNER = "bench-stores-tenant"
REMOTE_KINDS = {"rbd": "ceph", "s3": "ceph", "swift": "swift"}


@dataclass(frozen=True)
class Backend:
    """One store under test: how locquota configures it, and how to list what its server holds."""

    kind: str  # the entry point name: file, rbd, s3, swift
    options: dict[str, str]
    held: Callable[[], list[str]]  # everything in the store's pool/bucket/container, by the server's own client

    @property
    def name(self) -> str:
        return f"bench-{self.kind}"


@dataclass(frozen=True)
class ScrubRun:
    """The Scrubber's run_once() over a fresh backlog of one backend."""

    backend: str
    backlog: int
    in_flight: int
    load_seconds: float
    wall_seconds: float
    outcomes: Counter[str]

    @property
    def rate(self) -> float:
        return self.backlog / self.wall_seconds


def benchmark(admin_url: str, *, smoke: bool) -> None:
    """Start the servers, run every backend's transfers and scrubber runs, print the tables."""
    sizes, backlog = (SMOKE_SIZES, SMOKE_BACKLOG) if smoke else (FULL_SIZES, FULL_BACKLOG)
    missing = [kind for kind in REMOTE_KINDS if find_spec(f"locations.stores.{kind}") is None]
    started = time.perf_counter()
    url = fresh_database(admin_url, DATABASE)
    engine = make_engine(url)
    upgrade_to_head(engine)
    with tempfile.TemporaryDirectory(prefix="locquota-stores-bench-") as workdir, _local_network_only():
        try:
            with _servers({REMOTE_KINDS[kind] for kind in REMOTE_KINDS if kind not in missing}) as servers:
                backends = _backends(Path(workdir), servers, missing)
                click.echo(f"servers up in {time.perf_counter() - started:.1f} s")
                _print_workload(sizes, backlog, backends, servers, missing)
                transfers = [_transfer(backend, size, Path(workdir)) for backend in backends for size in sizes]
                scrubs = [_scrub(engine, backend, backlog, n) for backend in backends for n in IN_FLIGHT]
        except pytest.fail.Exception as exc:  # the fixture classes report a server that would not start so
            raise click.ClickException(f"a server of the stores part failed: {exc}") from None
    engine.dispose()
    print()
    store_worker.print_transfers(transfers)
    print()
    _print_scrubs(scrubs)
    print(f"stores part took {time.perf_counter() - started:.0f} s; load avg at the end: {load_average()}")


@contextmanager
def _local_network_only() -> Iterator[None]:
    """Every server is on 127.0.0.1: no HTTP proxy for boto3 and swiftclient, here and in the workers."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if name.lower() in ("http_proxy", "https_proxy", "all_proxy")]:
        del os.environ[name]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Servers:
    """The servers that are up."""

    ceph: CephCluster | None = None
    swift: SwiftCluster | None = None


@contextmanager
def _servers(wanted: set[str]) -> Iterator[Servers]:
    """The suite's Ceph (started in a thread) and Keystone + Swift, as their session fixtures make them."""
    servers = Servers()
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="ceph-start"))
        ceph: Future[CephCluster] | None = pool.submit(_started_ceph) if "ceph" in wanted else None
        if ceph is not None:
            stack.callback(_stop_when_started, ceph)
        if "swift" in wanted:
            ensure_keystone_venv()
            keystone = stack.enter_context(KeystoneServer())
            servers.swift = stack.enter_context(SwiftCluster(keystone))
        if ceph is not None:
            servers.ceph = ceph.result()
        yield servers


def _started_ceph() -> CephCluster:
    cluster = CephCluster()
    return cluster.__enter__()  # stops itself if it fails to start


def _stop_when_started(future: Future[CephCluster]) -> None:
    if future.exception() is None:
        future.result().stop()


def _backends(workdir: Path, servers: Servers, missing: list[str]) -> list[Backend]:
    """The four stores, connected as their end-to-end tests connect them; part sizes at the drivers' defaults."""
    root = workdir / "file-store"
    root.mkdir()
    backends = [Backend("file", {"filesystem_store_datadir": str(root)}, lambda: sorted(os.listdir(root)))]
    if (ceph := servers.ceph) is not None:
        if "rbd" not in missing:
            rbd = {"rbd_store_pool": ceph.pool, "rbd_store_user": ceph.user, "rbd_store_ceph_conf": str(ceph.conf_path)}
            backends.append(Backend("rbd", rbd, ceph.rbd_images))
        if "s3" not in missing:
            s3 = {"s3_store_host": ceph.rgw_url, "s3_store_access_key": ceph.s3_access_key,
                  "s3_store_secret_key": ceph.s3_secret_key, "s3_store_bucket": ceph.bucket,
                  "s3_store_bucket_url_format": "path"}  # fmt: skip
            backends.append(Backend("s3", s3, lambda: _s3_held(ceph)))
    if (swift := servers.swift) is not None:
        backends.append(Backend("swift", swift.glance_store_options(), lambda: _swift_held(swift)))
    return backends


def _s3_held(ceph: CephCluster) -> list[str]:
    """The bucket's objects and its unfinished multipart uploads (their parts take space too)."""
    uploads = ceph.s3_client().list_multipart_uploads(Bucket=ceph.bucket).get("Uploads", [])
    return ceph.s3_objects() + [f"multipart upload of {upload['Key']}" for upload in uploads]


def _swift_held(swift: SwiftCluster) -> list[str]:
    """Every object of every container of the glance user's account (segments may live in a container apart)."""
    with closing(swift.connection()) as connection:
        _headers, containers = connection.get_account(full_listing=True)
    return [f"{entry['name']}/{name}" for entry in containers for name in swift.objects(entry["name"])]


def _check_empty(backend: Backend, after: str) -> None:
    """Fail the benchmark if the server still holds data after a run that should have removed it all."""
    held = backend.held()
    if held:
        raise click.ClickException(f"{backend.kind}: {len(held)} objects left after {after}: {held[:5]}")


# Transfers ------------------------------------------------------------------------------------------------------


def _transfer(backend: Backend, size_bytes: int, workdir: Path) -> store_worker.Transfer:
    """One fresh worker process: upload, download and delete images of size_bytes; then nothing may be left."""
    rounds = SMALL_IMAGE_ROUNDS if size_bytes <= SMALL_IMAGE_BYTES else 1
    run = store_worker.run(backend.kind, backend.name, backend.options, size_bytes, rounds, workdir)
    _check_empty(backend, f"the {size_bytes // MIB} MiB transfers")
    click.echo(
        f"{backend.kind:<5} {size_bytes // MIB:>4} MiB: upload {run.rate('upload_s'):.0f} MiB/s, download"
        f" {run.rate('download_s'):.0f} MiB/s, peak RSS {run.summary['peak_kib'] / 1024:.0f} MiB"
    )
    return run


# The scrubber ---------------------------------------------------------------------------------------------------


def _scrub(engine: Engine, backend: Backend, count: int, in_flight: int) -> ScrubRun:
    """Upload `count` small objects through the store, make them a pending_delete backlog, time run_once()."""
    stores = load_stores([(backend.name, backend.kind)], {backend.name: backend.options})
    registry = StoreRegistry(stores, backend.name)
    started = time.perf_counter()
    _load_backlog(engine, registry, stores[backend.name], count)
    load_seconds = time.perf_counter() - started
    settings = Settings()
    scrubber = Scrubber(
        unit_of_work_on(engine), registry, Clock(), scrub_policy(settings),
        batch_size=settings.scrub_batch_size, pool_size=in_flight,
    )  # fmt: skip
    started = time.perf_counter()
    report = scrubber.run_once()
    wall = time.perf_counter() - started
    outcomes = Counter({str(outcome): number for outcome, number in report.outcomes.items()})
    with engine.connect() as connection:
        statuses = dict(connection.execute(text("SELECT status, count(*) FROM locations GROUP BY status")).all())
    if report.deleted != count or statuses != {LocationStatus.DELETED.value: count}:
        raise click.ClickException(f"{backend.kind}: the scrubber left work undone: {dict(outcomes)}, {statuses}")
    _check_empty(backend, f"scrubbing with {in_flight} in flight")
    run = ScrubRun(backend.kind, count, in_flight, load_seconds, wall, outcomes)
    click.echo(f"{backend.kind:<5} scrub, {in_flight} in flight: {count} in {wall:.2f} s ({run.rate:.0f}/s)")
    return run


def _load_backlog(engine: Engine, registry: StoreRegistry, store: Store, count: int) -> None:
    """count pending_delete locations, each of its own pending_delete image, due now; their data in the store."""
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE locations, image_properties, image_tags, images RESTART IDENTITY CASCADE"))
    data = os.urandom(BACKLOG_OBJECT_BYTES)
    image_ids = [uuid.uuid4() for _ in range(count)]
    with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="backlog") as pool:
        urls = list(pool.map(lambda image_id: store.add(store.plan_upload(image_id), [data], lambda: None), image_ids))
    keys = DataKeys(registry, PLAINTEXT)
    now = Clock().now()
    images, locations = [], []
    for n, (image_id, url) in enumerate(zip(image_ids, urls, strict=True)):
        created, pending = now - timedelta(days=30), now - timedelta(days=1) + timedelta(milliseconds=n)
        images.append(
            {
                "id": image_id, "name": f"stores-bench-{n}", "status": ImageStatus.PENDING_DELETE,
                "visibility": Visibility.PRIVATE, "owner": OWNER, "size": BACKLOG_OBJECT_BYTES,
                "disk_format": "raw", "container_format": "bare", "min_disk": 0, "min_ram": 0, "protected": False,
                "os_hidden": False, "created_at": created, "updated_at": pending,
            }
        )  # fmt: skip
        locations.append(
            {
                "image_id": image_id, "url": url, **keys.columns(url, store.name), "store": store.name,
                "metadata": {}, "status": LocationStatus.PENDING_DELETE, "size_bytes": BACKLOG_OBJECT_BYTES,
                "created_at": created, "updated_at": pending, "pending_since": pending, "scrub_after": pending,
                "attempts": 0,
            }
        )  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(Image.__table__), images)
        connection.execute(insert(Location.__table__), locations)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE images, locations"))


def _print_scrubs(runs: list[ScrubRun]) -> None:
    one = {run.backend: run.rate for run in runs if run.in_flight == 1}
    headers = ("backend", "backlog", "in flight", "wall s", "deletions/s", "x 1", "backlog upload s", "outcomes")
    rows = [
        (
            run.backend, str(run.backlog), str(run.in_flight), f"{run.wall_seconds:.2f}", f"{run.rate:.0f}",
            f"{run.rate / one[run.backend]:.2f}", f"{run.load_seconds:.1f}",
            ", ".join(f"{name} {number}" for name, number in sorted(run.outcomes.items())),
        )
        for run in runs
    ]  # fmt: skip
    print_rows(headers, rows, {0, 7}, group=0)
    print(
        f"(Scrubber.run_once() in this process, batches of {Settings().scrub_batch_size}: claim, deletions in flight,"
        " record; each run on a fresh backlog)"
    )


# What the reader needs to know ----------------------------------------------------------------------------------


def _print_workload(
    sizes: tuple[int, ...], backlog: int, backends: list[Backend], servers: Servers, missing: list[str]
) -> None:
    lines = [
        f"images of {', '.join(str(size // MIB) for size in sizes)} MiB: plan_upload + add fed 64 KiB chunks by a"
        " generator, get() read back",
        f"in 64 KiB chunks (every byte checked), delete; one fresh process per (backend, size), {SMALL_IMAGE_ROUNDS}"
        f" rounds up to {SMALL_IMAGE_BYTES // MIB} MiB",
        f"scrubber: backlogs of {backlog} objects of {BACKLOG_OBJECT_BYTES >> 10} KiB uploaded through the store,"
        f" {' then '.join(map(str, IN_FLIGHT))} deletions in flight",
        *_versions(servers),
        *(f"{backend.kind}: {_shown(backend.options)}" for backend in backends),
    ]
    if missing:
        lines.append(f"NOT MEASURED, no driver module: {', '.join(missing)}")
    for number, line in enumerate(lines):
        print(f"{'stores' if number == 0 else '':<10}  {line}")
    print(flush=True)


def _versions(servers: Servers) -> list[str]:
    found = [f"boto3 {version('boto3')}, python-swiftclient {version('python-swiftclient')}"]
    if servers.ceph is not None:
        found.append(subprocess.run(["ceph-osd", "--version"], capture_output=True, text=True, check=False).stdout)
    if servers.swift is not None:
        probe = "import swift; print('swift', swift.__version__)"
        found.append(
            subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True, check=False).stdout
        )
    return [line.strip() for line in found if line.strip()]


def _shown(options: dict[str, str]) -> str:
    """The options as configured, secrets masked."""
    return ", ".join(
        f"{key}={'***' if any(word in key for word in SECRET_WORDS) else value}" for key, value in options.items()
    )
