"""The scrubber claims its next batch while it records the last one, and never holds more than two.

Scrubber.run_once claims batch N+1 on a connection of its own while batch N is recorded (on PostgreSQL;
SQLite has one writer at a time, and there the next batch is claimed after the record). These tests pin
what that overlap may not change: at most two batches are claimed by one scrubber at any moment, a stop
lets the batch in flight finish and gives back the batch claimed ahead, and a pass that fails gives it
back too. Nothing waits on time: the record is held at the tenant's usage row, locked by the test. A pass
also keeps the garbage collector off the objects made before it, and restores the collector when it ends.
"""

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session

from locations.models import Location, LocationStatus
from locations.scrubber import PASS_GC_THRESHOLD, Scrubber
from locations.services.scrubbing import Outcome
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from locquota.clock import Clock
from locquota.db import make_engine
from locquota.scripting import UnitOfWork
from quota.models import TENANT_RESOURCES, TenantUsage
from tests.fakes import POLICY, unit_of_work_on
from tests.functional.test_scrubber_processes import (
    OWNER,
    file_url,
    locations_by_url,
    make_store_files,
    plant_backlog,
    wall_now,
)

BATCH = 5
WORKER = "scrubber:test:1:overlap"
# Bounds for waits on the scrubber's thread; reaching one is a failure, never a synchronisation.
DEADLINE_SECONDS = 30


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root.resolve()


@pytest.fixture
def files(engine: Engine, store_root: Path) -> list[Path]:
    """Four batches of due pending_delete locations, one image each, their files in the store."""
    paths = make_store_files(store_root, 4 * BATCH)
    plant_backlog(engine, [file_url(path) for path in paths], wall_now())
    with engine.begin() as connection:  # the owner's usage row: the first thing a record locks
        zeros = {resource.value: 0 for resource in TENANT_RESOURCES}
        connection.execute(
            insert(TenantUsage).values(tenant_id=OWNER, version=0, updated_at=wall_now(), **zeros),
        )
    return paths


def claimed_by(engine: Engine, worker: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(Location).where(Location.claimed_by == worker)
        return connection.scalar(query) or 0


def observed(unit_of_work: UnitOfWork, engine: Engine, seen: list[int]) -> UnitOfWork:
    """The scrubber's transactions, each followed by a count of the rows it holds claimed once it committed."""

    @contextmanager
    def unit() -> Iterator[Session]:
        with unit_of_work() as session:
            yield session
        seen.append(claimed_by(engine, WORKER))

    return unit


def make_scrubber(engine: Engine, store_root: Path, seen: list[int], store: FileStore | None = None) -> Scrubber:
    registry = StoreRegistry({"file": store or FileStore("file", {"datadir": str(store_root)})}, "file")
    unit = observed(unit_of_work_on(engine), engine, seen)
    return Scrubber(unit, registry, Clock(), POLICY, batch_size=BATCH, pool_size=2, worker=WORKER)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE_SECONDS} s")
        time.sleep(0.02)  # polling an observed condition (a poll interval, not a synchronisation)


def waiting_on_a_lock(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as observer:
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database() AND query ILIKE '%tenant_usage%'"
        ).fetchone()
    return bool(row and row[0])


def assert_all_scrubbed(engine: Engine, files: list[Path]) -> None:
    rows = locations_by_url(engine).values()
    assert Counter(row.status for row in rows) == Counter({LocationStatus.DELETED: len(files)})
    assert all(row.claimed_by is None and row.attempts == 0 for row in rows)
    assert not any(path.exists() for path in files)


@pytest.mark.postgresql
def test_the_next_batch_is_claimed_while_the_last_is_recorded_and_never_a_third(
    database_url, engine, store_root, files
):
    seen: list[int] = []
    scrubber = make_scrubber(engine, store_root, seen)
    reports = []
    worker = threading.Thread(target=lambda: reports.append(scrubber.run_once()))

    with psycopg.connect(database_url) as gate:
        gate.execute("SELECT 1 FROM tenant_usage WHERE tenant_id = %s FOR UPDATE", (OWNER,))
        worker.start()
        try:
            # The first batch's record queues on the usage row; the next batch is claimed beside it.
            wait_for(lambda: waiting_on_a_lock(database_url), "the first batch's record never reached the usage row")
            wait_for(lambda: claimed_by(engine, WORKER) >= 2 * BATCH, "the next batch was not claimed beside it")
            held = claimed_by(engine, WORKER)
        finally:
            gate.rollback()
            worker.join(DEADLINE_SECONDS)

    assert not worker.is_alive()
    assert held == 2 * BATCH  # the batch being recorded and the one claimed ahead, no third
    assert max(seen) == 2 * BATCH  # after every commit of the pass, never more
    assert [report.outcomes for report in reports] == [{Outcome.DELETED: 4 * BATCH}]
    assert reports[0].batches == 4
    assert_all_scrubbed(engine, files)


def test_a_stop_after_a_batch_gives_back_the_batch_claimed_ahead(engine, store_root, files):
    seen: list[int] = []
    scrubber = make_scrubber(engine, store_root, seen)
    stop = threading.Event()

    report = scrubber.run_once(stop, on_batch=lambda _count: stop.set())

    assert report.outcomes == {Outcome.DELETED: BATCH}
    assert report.batches == 1
    rows = sorted(locations_by_url(engine).values(), key=lambda row: row.scrub_after)
    assert [row.status for row in rows] == [LocationStatus.DELETED] * BATCH + [LocationStatus.PENDING_DELETE] * (
        3 * BATCH
    )
    assert all(row.claimed_by is None and row.claim_expires_at is None for row in rows)  # nothing left claimed
    assert all(row.attempts == 0 and row.scrub_after <= wall_now() for row in rows[BATCH:])  # due, as they were
    assert sum(path.exists() for path in files) == 3 * BATCH  # only the batch in flight was deleted

    assert scrubber.run_once().outcomes == {Outcome.DELETED: 3 * BATCH}  # the next pass takes them at once
    assert_all_scrubbed(engine, files)


class StoppingStore(FileStore):
    """A file store that sets the scrubber's stop event as it deletes its first file."""

    stop: threading.Event

    def delete(self, url: str) -> None:
        self.stop.set()
        super().delete(url)


def test_a_stop_during_deletions_finishes_the_batch_and_claims_nothing_more(engine, store_root, files):
    store = StoppingStore("file", {"datadir": str(store_root)})
    store.stop = threading.Event()
    seen: list[int] = []
    scrubber = make_scrubber(engine, store_root, seen, store)

    report = scrubber.run_once(store.stop)

    assert report.outcomes == {Outcome.DELETED: BATCH}
    assert seen == [BATCH, 0]  # the batch's claim and its record: nothing claimed ahead
    rows = locations_by_url(engine).values()
    assert Counter(row.status for row in rows) == Counter(
        {LocationStatus.DELETED: BATCH, LocationStatus.PENDING_DELETE: 3 * BATCH}
    )
    assert all(row.claimed_by is None for row in rows)


def test_a_pass_that_fails_after_a_record_gives_back_the_batch_claimed_ahead(engine, store_root, files):
    seen: list[int] = []
    scrubber = make_scrubber(engine, store_root, seen)

    def fail(_count: int) -> None:
        raise RuntimeError("the progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar"):
        scrubber.run_once(on_batch=fail)

    rows = locations_by_url(engine).values()
    assert Counter(row.status for row in rows) == Counter(
        {LocationStatus.DELETED: BATCH, LocationStatus.PENDING_DELETE: 3 * BATCH}
    )
    assert all(row.claimed_by is None for row in rows)  # released, not left to run out
    assert max(seen) <= 2 * BATCH


def test_a_pass_spares_the_collector_the_objects_made_before_it_and_restores_it_after(engine, store_root, files):
    seen: list[int] = []
    scrubber = make_scrubber(engine, store_root, seen)
    thresholds = gc.get_threshold()
    during: list[tuple[int, int]] = []

    def look(_count: int) -> None:
        during.append((gc.get_freeze_count(), gc.get_threshold()[0]))

    report = scrubber.run_once(on_batch=look)

    assert report.outcomes == {Outcome.DELETED: 4 * BATCH}
    assert len(during) == 4
    assert all(frozen > 0 for frozen, _ in during)  # the objects made before the pass, skipped
    assert {threshold for _, threshold in during} == {PASS_GC_THRESHOLD}
    assert gc.get_freeze_count() == 0  # nothing stays out of reach of the collector after the pass
    assert gc.get_threshold() == thresholds
