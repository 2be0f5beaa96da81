"""Scrubbers as real processes on real PostgreSQL: several at once, and one killed mid-batch.

Every scrubber here is a separate OS process (`locquota --config X.ini scrub`, or a small Python child
that builds locations.scrubber.Scrubber the way the CLI does), so claims, SKIP LOCKED and leases are
exercised across connections and processes, not threads. Nothing waits on the passage of time:
the processes are held at a table lock until all of them are queued on it, the killed child reports
on a pipe the moment it is stuck, and the lease expiry is reached by a frozen clock.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import port_for
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert
from sqlalchemy import select as sql_select

from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility, data_key_digest
from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from locquota.clock import Clock, FrozenClock
from locquota.db import make_engine
from locquota.scripting import LazyApp
from tests.conftest import write_ini
from tests.database_gates import table_locked, wait_until_blocked

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]

LOCQUOTA = str(Path(sys.executable).with_name("locquota"))
PROCESSES = 4
BACKLOG = 3000
OWNER = "scrub-tenant"
DATA = b"image data\n" * 8
# Bounds for waits on real processes; reaching one is a failure, never a synchronisation.
PROCESS_TIMEOUT = 60
QUEUE_DEADLINE = 30
OUTCOME_LINE = re.compile(r"^scrubbed in (\d+) batches: (.*)$")


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root.resolve()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the store root: nothing in it may ever be deleted."""
    directory = tmp_path / "outside"
    directory.mkdir()
    return directory.resolve()


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def scrub_settings(database_url: str, store_root: Path, **overrides: str) -> dict[str, str]:
    """A deployment with the file store and no Redis (the scrubber does not read the cache)."""
    return {
        "locquota.database_url": database_url,
        "locquota.redis_url": "",
        "locquota.auth_strategy": "noauth",
        "locquota.allow_insecure_noauth": "true",
        "locquota.enabled_stores": "file",
        "locquota.default_store": "file",
        "locquota.store.file.datadir": str(store_root),
        # A failed deletion is retried an hour later: never within one run, however slow the machine (with
        # the default 30 s, a run slowed past that by a loaded CI retried a refused URL: "attempt 2").
        "locquota.scrub_retry_base_seconds": "3600",
        **{f"locquota.{key}": value for key, value in overrides.items()},
    }


def file_url(path: Path) -> str:
    return "file://" + quote(str(path))


def plant_backlog(engine: Engine, urls: list[str], now: datetime) -> dict[str, int]:
    """One pending_delete image per URL, with one pending_delete location due an hour ago; url -> location id."""
    images, locations = [], []
    for n, url in enumerate(urls):
        image_id = uuid.uuid4()
        created = now - timedelta(days=1, seconds=n)
        images.append(
            {
                "id": image_id,
                "name": f"scrub-{n}",
                "status": ImageStatus.PENDING_DELETE,
                "visibility": Visibility.PRIVATE,
                "owner": OWNER,
                "size": len(DATA),
                "virtual_size": None,
                "checksum": None,
                "os_hash_algo": None,
                "os_hash_value": None,
                "disk_format": "raw",
                "container_format": "bare",
                "min_disk": 0,
                "min_ram": 0,
                "protected": False,
                "os_hidden": False,
                "created_at": created,
                "updated_at": created,
            }
        )
        pending = now - timedelta(hours=2, seconds=n)
        locations.append(
            {
                "image_id": image_id,
                "url": url,
                "data_key_hash": data_key_digest(url),
                "store": "file",
                "metadata": {},
                "status": LocationStatus.PENDING_DELETE,
                "size_bytes": len(DATA),
                "created_at": created,
                "updated_at": pending,
                "deleted_at": None,
                "pending_since": pending,
                "scrub_after": pending + timedelta(hours=1),
                "attempts": 0,
                "last_error": None,
                "claimed_by": None,
                "claim_expires_at": None,
            }
        )
    with engine.begin() as connection:
        for start in range(0, len(urls), 1000):
            connection.execute(insert(Image.__table__), images[start : start + 1000])
            connection.execute(insert(Location.__table__), locations[start : start + 1000])
        rows = connection.execute(sql_select(Location.url, Location.id).where(Location.url.in_(urls)))
        return {row.url: row.id for row in rows}


def locations_by_url(engine: Engine) -> dict[str, Location]:
    with engine.connect() as connection:
        rows = connection.execute(sql_select(Location)).all()
    return {row.url: row for row in rows}


def image_statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as connection:
        return Counter(str(status) for status in connection.scalars(sql_select(Image.status)))


def wall_now() -> datetime:
    return Clock().now()


def make_store_files(store_root: Path, count: int) -> list[Path]:
    paths = [store_root / f"image-{n:05d}" for n in range(count)]
    for path in paths:
        path.write_bytes(DATA)
    return paths


def plant_outside_rows(store_root: Path, outside: Path) -> tuple[list[str], list[Path]]:
    """Rows whose URLs lead outside the store root, by every road; and the files they must not reach."""
    targets = [outside / f"precious-{n}" for n in range(4)]
    for path in targets:
        path.write_bytes(b"not the scrubber's to delete\n")
    (store_root / "link-to-outside").symlink_to(targets[2])
    (store_root / "dir-link").symlink_to(outside, target_is_directory=True)
    urls = [
        file_url(targets[0]),  # plainly outside
        f"file://{quote(str(store_root))}/../outside/{targets[1].name}",  # climbs out with ..
        file_url(store_root / "link-to-outside"),  # a symlink inside the root to a file outside
        file_url(store_root / "dir-link" / targets[3].name),  # through a symlinked directory
    ]
    return urls, targets


def assert_outside_untouched(store_root: Path, outside_files: list[Path], rows: list[Location]) -> None:
    """The files outside the root are intact, and their rows record a failed attempt, backed off."""
    assert (store_root / "link-to-outside").is_symlink()
    assert (store_root / "dir-link").is_symlink()
    for path in outside_files:
        assert path.read_bytes() == b"not the scrubber's to delete\n"
    for row in rows:
        assert row.status == LocationStatus.PENDING_DELETE, row.url
        assert row.attempts >= 1, row.url
        assert row.last_error, row.url
        assert row.claimed_by is None, row.url
        assert row.scrub_after > wall_now(), row.url  # backed off


def parse_outcomes(stdout: str) -> tuple[int, Counter[str]]:
    for line in stdout.splitlines():
        if match := OUTCOME_LINE.match(line.strip()):
            counts = Counter(
                {name: int(count) for name, count in re.findall(r"(\w+) (\d+)", match.group(2))},
            )
            return int(match.group(1)), counts
    pytest.fail(f"no outcome line in the scrubber's output: {stdout!r}")


def run_scrubbers_together(database_url: str, ini: Path, count: int) -> list[Counter[str]]:
    """Run `count` `locquota scrub` processes released at once; each one's outcome counts."""
    # Every scrubber queues on this lock at its first claim; releasing it starts them all at once.
    with table_locked(database_url, "locations"):
        processes = [
            subprocess.Popen(
                [LOCQUOTA, "--config", str(ini), "scrub"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        try:
            wait_until_blocked(database_url, "locations", count, QUEUE_DEADLINE)
        except BaseException:
            for process in processes:
                process.kill()
            raise

    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        results.append((process.returncode, stdout, stderr))

    outcomes: list[Counter[str]] = []
    for n, (returncode, stdout, stderr) in enumerate(results):
        print(f"scrubber {n} (exit {returncode}): {stdout.strip()}")
        assert returncode == 0, stderr
        # A claim taken over by another worker would be logged (WARNING reaches stderr): none may be.
        assert "claim lost" not in stderr, stderr
        counts = parse_outcomes(stdout)[1]
        assert stderr.count("deletion failed (attempt 1)") == counts["failed"], stderr
        outcomes.append(counts)
    return outcomes


def test_several_scrubber_processes_share_the_backlog_and_never_leave_the_store_root(
    database_url, engine, store_root, outside, tmp_path
):
    in_root = make_store_files(store_root, BACKLOG)
    outside_urls, outside_files = plant_outside_rows(store_root, outside)
    in_root_urls = [file_url(path) for path in in_root]
    ids = plant_backlog(engine, in_root_urls + outside_urls, wall_now())
    assert len(ids) == BACKLOG + len(outside_urls)
    ini = write_ini(
        tmp_path / "scrub.ini",
        scrub_settings(database_url, store_root, scrub_batch_size="100", scrub_pool_size="4"),
    )

    outcomes = run_scrubbers_together(database_url, ini, PROCESSES)
    total = sum(outcomes, Counter())

    # Exactly once: each location was deleted by one scrubber, and each refused row failed once (backoff).
    assert total["deleted"] == BACKLOG
    assert total["failed"] == len(outside_urls)
    assert total["expired"] == 0
    assert total["shared"] == 0
    assert sum(1 for counts in outcomes if counts["deleted"] > 0) >= 2, outcomes

    rows = locations_by_url(engine)
    for url in in_root_urls:
        row = rows[url]
        assert row.status == LocationStatus.DELETED, (url, row.status, row.last_error)
        assert row.deleted_at is not None
        assert row.attempts == 0
        assert row.last_error is None
        assert row.claimed_by is None
    assert not any(path.exists() for path in in_root)
    assert_outside_untouched(store_root, outside_files, [rows[url] for url in outside_urls])
    assert image_statuses(engine) == Counter(
        {ImageStatus.DELETED.value: BACKLOG, ImageStatus.PENDING_DELETE.value: len(outside_urls)}
    )


# A scrubber built as `locquota scrub` builds it, whose store deletes the first location's data and then
# blocks on every other one until the process is killed. It says on stdout who it is and when it is stuck.
BLOCKING_SCRUBBER = """
import os, sys, threading
from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.scripting import LazyApp

class BlockingStore:
    def __init__(self, inner):
        self.inner, self.name, self.scheme, self.schemes = inner, inner.name, inner.scheme, inner.schemes
        self.calls, self.lock = 0, threading.Lock()

    def validate_url(self, url):
        self.inner.validate_url(url)

    def identify(self, url):
        return self.inner.identify(url)

    def delete(self, url):
        with self.lock:
            self.calls += 1
            if self.calls == 1:
                self.inner.delete(url)
                print("deleted", url, flush=True)
                return
            print("blocked", url, flush=True)
        sys.stdin.read()  # the parent never writes: stuck here until SIGKILL
        os._exit(3)  # the parent went away: delete nothing more

app = LazyApp(sys.argv[1])
settings = app.registry["locquota.settings"]
with app.request() as request:
    stores = request.find_service(StoreRegistry)
scrubber = Scrubber(
    app.unit_of_work(), StoreRegistry({"file": BlockingStore(stores["file"])}, "file"), Clock(),
    scrub_policy(settings), batch_size=settings.scrub_batch_size, pool_size=settings.scrub_pool_size,
)
print("worker", scrubber.worker, flush=True)
scrubber.run_once()
os._exit(4)
"""


def run_and_kill_blocked_scrubber(ini: Path) -> tuple[str, str]:
    """Start BLOCKING_SCRUBBER, SIGKILL it once it is stuck mid-batch; its worker id and the URL it deleted."""
    child = subprocess.Popen(
        [sys.executable, "-c", BLOCKING_SCRUBBER, str(ini)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=pump_lines, args=(child, lines), daemon=True)
    pump.start()
    try:
        worker = next_line(child, lines).removeprefix("worker ")
        deleted_line = next_line(child, lines)
        blocked_line = next_line(child, lines)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=PROCESS_TIMEOUT)
        pump.join(PROCESS_TIMEOUT)  # the kill closed the pipe: the pump has read to its end
        child.stdin.close()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert deleted_line.startswith("deleted file://"), deleted_line
    assert blocked_line.startswith("blocked file://"), blocked_line
    return worker, deleted_line.removeprefix("deleted ")


def pump_lines(process: subprocess.Popen[str], lines: "queue.Queue[str | None]") -> None:
    """Move the child's stdout lines to a queue, then None at its end.

    A thread, not select() on the pipe: two lines that arrive in one read sit in the file object's buffer,
    where select() cannot see the second.
    """
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def next_line(process: subprocess.Popen[str], lines: "queue.Queue[str | None]") -> str:
    """The child's next stdout line, bounded in case the child hangs elsewhere."""
    try:
        line = lines.get(timeout=PROCESS_TIMEOUT)
    except queue.Empty:
        pytest.fail("the scrubber child said nothing")
    assert line is not None, f"the scrubber child exited ({process.wait()}): {process.stderr.read()}"
    return line.rstrip("\n")


def test_a_scrubber_killed_mid_batch_leaves_claims_that_another_finishes_after_the_lease(
    database_url, engine, store_root, tmp_path
):
    batch, lease = 10, 2
    files = make_store_files(store_root, 3 * batch)
    urls = [file_url(path) for path in files]
    plant_backlog(engine, urls, wall_now())
    settings = scrub_settings(
        database_url, store_root,
        scrub_batch_size=str(batch), scrub_pool_size="2", scrub_lease_seconds=str(lease),
    )  # fmt: skip
    ini = write_ini(tmp_path / "scrub.ini", settings)

    worker, first_deleted = run_and_kill_blocked_scrubber(ini)

    # The dead worker's batch: still pending_delete and claimed; its one deletion not recorded as done.
    rows = locations_by_url(engine)
    claimed = {url: row for url, row in rows.items() if row.claimed_by is not None}
    assert {row.claimed_by for row in claimed.values()} == {worker}
    assert len(claimed) == batch
    assert first_deleted in claimed
    assert all(row.status == LocationStatus.PENDING_DELETE for row in rows.values())
    assert not Path(files[urls.index(first_deleted)]).exists()
    assert sum(path.exists() for path in files) == len(files) - 1
    expires = max(row.claim_expires_at for row in claimed.values())
    assert expires == min(row.claim_expires_at for row in claimed.values())

    app = LazyApp(str(ini))
    try:
        registry = StoreRegistry({"file": FileStore("file", {"datadir": str(store_root)})}, "file")
        clock = FrozenClock(expires - timedelta(seconds=1))

        def scrubber() -> Scrubber:
            return Scrubber(
                app.unit_of_work(), registry, clock, scrub_policy(app.registry["locquota.settings"]),
                batch_size=batch, pool_size=2,
            )  # fmt: skip

        # Before the lease expires the dead worker's claims are left alone; the rest of the backlog is not.
        report = scrubber().run_once()
        assert report.outcomes == Counter({"deleted": 2 * batch})
        rows = locations_by_url(engine)
        assert {url for url, row in rows.items() if row.status == LocationStatus.PENDING_DELETE} == set(claimed)
        assert {row.claimed_by for url, row in rows.items() if url in claimed} == {worker}
        assert_deleted_means_gone(rows)

        # Past the lease, another scrubber takes the claims over and finishes; the file already gone is fine.
        clock.advance(seconds=2)
        report = scrubber().run_once()
        assert report.outcomes == Counter({"deleted": batch})
    finally:
        app.close()

    rows = locations_by_url(engine)
    assert all(row.status == LocationStatus.DELETED for row in rows.values())
    assert all(row.claimed_by is None and row.attempts == 0 for row in rows.values())
    assert_deleted_means_gone(rows)
    assert not any(path.exists() for path in files)
    assert image_statuses(engine) == Counter({ImageStatus.DELETED.value: len(files)})


def assert_deleted_means_gone(rows: dict[str, Location]) -> None:
    """Nothing is marked deleted whose data is still on disk."""
    for url, row in rows.items():
        if row.status == LocationStatus.DELETED:
            assert not Path(unquote(url.removeprefix("file://"))).exists(), url


def scrape_port(port: int) -> dict[str, float]:
    """The samples of the scrubber's own /metrics, by name and store (or {} while it is not listening yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return {}
    return {
        f"{sample.name}{sample.labels.get('store', '')}": sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def pass_finished(samples: dict[str, float], deletions: int) -> bool:
    """Whether a scrape shows the deletions counted and the pass over (its last success set after them)."""
    return (
        samples.get("locquota_scrubber_deletions_totalfile") == deletions
        and samples.get("locquota_scrubber_last_success_timestamp_seconds", 0) > 0
    )


def test_a_scrubber_daemon_serves_its_own_metrics(database_url, engine, store_root, tmp_path):
    urls = [file_url(path) for path in make_store_files(store_root, 3)]
    plant_backlog(engine, urls, wall_now())
    ini = write_ini(tmp_path / "scrub.ini", scrub_settings(database_url, store_root, wakeup_time="3600"))
    port = port_for.select_random()
    environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    daemon = subprocess.Popen(
        [LOCQUOTA, "--config", str(ini), "scrub", "--daemon", "--metrics-port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        samples = scrape_port(port)
        while not pass_finished(samples, len(urls)):
            assert daemon.poll() is None, daemon.stderr.read()
            assert time.monotonic() < deadline, f"the daemon's metrics never showed the finished pass: {samples}"
            time.sleep(0.05)  # polling an observed condition (a poll interval, not a synchronisation)
            samples = scrape_port(port)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(PROCESS_TIMEOUT)
        daemon.stderr.close()
    assert daemon.returncode == 0
    assert samples["locquota_scrubber_last_success_timestamp_seconds"] > 0
    assert samples["locquota_scrubber_batch_duration_seconds_count"] >= 1
