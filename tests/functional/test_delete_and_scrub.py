"""DELETE /v2/images/{id} and the scrubber (SPEC sections 2 and 6), on real databases and a real directory.

The only fake is the store that fails or holds deletes on demand (tests/fakes.py); the scrubber is the
real class, run in-process on the test database with the frozen clock.
"""

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, LocationStatus, data_key_digest
from locations.scrubber import Scrubber
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import Deletion, Outcome, claim, delete_data, record
from tests.conftest import T0
from tests.fakes import (
    LEASE,
    POLICY,
    RETRY_BASE,
    RETRY_MAX,
    SCRUB_TIME,
    FakeFailingStore,
    build_app_with_store,
    references_on,
    registry_of,
    scrub_settings,
    unit_of_work_on,
)

DATA = b"image bytes \x00\x01\x02" * 100
WAIT_SECONDS = 30  # a safety net for waits on events and threads, never a timing the test relies on

delayed = pytest.mark.parametrize("delayed_delete", [True], ids=["delayed"])


@pytest.fixture
def delayed_delete() -> bool:
    """Immediate delete unless a test is marked @delayed."""
    return False


@pytest.fixture
def settings(settings, delayed_delete):
    return scrub_settings(settings, delayed_delete=delayed_delete)


@pytest.fixture
def store(store_root: Path) -> FakeFailingStore:
    return FakeFailingStore.at(store_root)


@pytest.fixture
def wsgi_app(settings, store, clock):
    router = build_app_with_store(settings, store, clock)
    yield router
    router.registry["locquota.engine"].dispose()


@pytest.fixture
def make_scrubber(engine, store, clock):
    def make(worker: str | None = None) -> Scrubber:
        return Scrubber(
            unit_of_work_on(engine), registry_of(store), clock, POLICY, batch_size=10, pool_size=2, worker=worker
        )

    return make


@pytest.fixture
def scrubber(make_scrubber) -> Scrubber:
    return make_scrubber()


@pytest.fixture
def stored_image(new_image, upload) -> str:
    """An active image whose data is in the store; its id."""
    image_id = new_image()["id"]
    upload(image_id, DATA)
    return image_id


def locations_of(db: Session, image_id: str) -> list[Location]:
    db.rollback()  # a new transaction: see what the app and the scrubber committed (SQLite reads a snapshot)
    return list(db.scalars(select(Location).where(Location.image_id == uuid.UUID(image_id)).order_by(Location.id)))


def image_status(db: Session, image_id: str) -> ImageStatus:
    db.rollback()
    return db.get_one(Image, uuid.UUID(image_id)).status


def file_of(store: FakeFailingStore, image_id: str) -> Path:
    return store.root / image_id


def assert_hidden(app, image_id: str, *callers: dict[str, str]) -> None:
    for headers in callers:
        res = app.get(f"/v2/images/{image_id}", headers=headers, status=404)
        assert res.json["error"]["code"] == "image_not_found"
        listed = app.get("/v2/images", headers=headers, status=200).json["images"]
        assert image_id not in [image["id"] for image in listed]


# --- immediate delete (delayed_delete = false) ----------------------------------------------------------


def test_immediate_delete_removes_the_file_and_marks_location_and_image_deleted(
    app, db, store, stored_image, tenant, admin
):
    assert file_of(store, stored_image).read_bytes() == DATA

    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)

    assert not file_of(store, stored_image).exists()
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.DELETED
    assert location.deleted_at == T0
    assert (location.claimed_by, location.claim_expires_at) == (None, None)
    assert image_status(db, stored_image) is ImageStatus.DELETED
    assert store.delete_calls == [location.url]
    assert_hidden(app, stored_image, tenant, admin)


def test_immediate_delete_of_an_image_without_data_deletes_the_image(app, db, store, new_image, tenant):
    image_id = new_image()["id"]

    app.delete(f"/v2/images/{image_id}", headers=tenant, status=204)

    assert image_status(db, image_id) is ImageStatus.DELETED
    assert locations_of(db, image_id) == []
    assert store.delete_calls == []


def test_failed_immediate_delete_leaves_the_location_pending_delete(app, db, store, stored_image, tenant, admin):
    store.fail_deletes = 1

    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)

    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.PENDING_DELETE
    assert location.attempts == 1
    assert "injected delete failure" in location.last_error
    assert location.scrub_after == T0 + timedelta(seconds=RETRY_BASE)
    assert location.pending_since == T0
    assert (location.claimed_by, location.claim_expires_at) == (None, None)
    assert file_of(store, stored_image).read_bytes() == DATA
    assert image_status(db, stored_image) is ImageStatus.PENDING_DELETE
    assert_hidden(app, stored_image, tenant, admin)


def test_scrubber_finishes_a_failed_immediate_delete_after_the_backoff(db, store, stored_image, app, tenant, clock):
    store.fail_deletes = 1
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    scrubber = Scrubber(unit_of_work_on(db.get_bind()), registry_of(store), clock, POLICY, batch_size=10, pool_size=1)

    clock.advance(seconds=RETRY_BASE - 1)
    early = scrubber.run_once()
    [early_location] = locations_of(db, stored_image)
    early_state = (early_location.status, early_location.attempts, file_of(store, stored_image).exists())
    clock.advance(seconds=1)
    report = scrubber.run_once()

    assert early.outcomes == {}
    assert early_state == (LocationStatus.PENDING_DELETE, 1, True)
    assert report.outcomes == {Outcome.DELETED: 1}
    assert not file_of(store, stored_image).exists()
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.DELETED
    assert location.deleted_at == T0 + timedelta(seconds=RETRY_BASE)
    assert image_status(db, stored_image) is ImageStatus.DELETED


# --- delayed delete --------------------------------------------------------------------------------------


@delayed
def test_delayed_delete_keeps_the_file_and_hides_the_image_from_everyone(app, db, store, stored_image, tenant, admin):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)

    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.PENDING_DELETE
    assert location.pending_since == T0
    assert location.scrub_after == T0 + timedelta(seconds=SCRUB_TIME)
    assert location.attempts == 0
    assert file_of(store, stored_image).read_bytes() == DATA
    assert store.delete_calls == []
    assert image_status(db, stored_image) is ImageStatus.PENDING_DELETE
    assert_hidden(app, stored_image, tenant, admin)
    res = app.get(f"/v2/images/{stored_image}/file", headers=tenant, status=404)
    assert res.json["error"]["code"] == "image_not_found"
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=404)


@delayed
def test_scrubber_does_nothing_before_scrub_time(app, db, store, stored_image, tenant, clock, scrubber):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME - 1)

    report = scrubber.run_once()

    assert report.outcomes == {}
    assert store.delete_calls == []
    assert file_of(store, stored_image).exists()
    [location] = locations_of(db, stored_image)
    assert (location.status, location.claimed_by) == (LocationStatus.PENDING_DELETE, None)


@delayed
def test_scrubber_deletes_the_data_once_scrub_time_has_passed(app, db, store, stored_image, tenant, clock, scrubber):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)

    report = scrubber.run_once()

    assert report.outcomes == {Outcome.DELETED: 1}
    assert not file_of(store, stored_image).exists()
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.DELETED
    assert location.deleted_at == T0 + timedelta(seconds=SCRUB_TIME + 1)
    assert (location.claimed_by, location.claim_expires_at) == (None, None)
    assert image_status(db, stored_image) is ImageStatus.DELETED
    assert scrubber.run_once().outcomes == {}  # nothing left to do, nothing done twice


@delayed
def test_scrubber_takes_due_locations_oldest_first_in_batches(app, db, store, new_image, upload, tenant, clock, engine):
    ids = []
    for index in range(5):
        image_id = new_image(name=f"i{index}")["id"]
        upload(image_id, DATA)
        ids.append(image_id)
    for image_id in reversed(ids):  # the newest image is deleted first: it is the oldest pending
        app.delete(f"/v2/images/{image_id}", headers=tenant, status=204)
        clock.advance(seconds=1)
    clock.advance(seconds=SCRUB_TIME)
    scrubber = Scrubber(unit_of_work_on(engine), registry_of(store), clock, POLICY, batch_size=2, pool_size=1)

    report = scrubber.run_once()

    assert report.outcomes == {Outcome.DELETED: 5}
    assert report.batches == 3
    urls = {locations_of(db, image_id)[0].url: image_id for image_id in ids}
    deleted = [urls[url] for url in store.delete_calls]
    # Batches go oldest first (the order inside one batch is free): 2 + 2 + 1, newest image first.
    assert [set(deleted[0:2]), set(deleted[2:4]), deleted[4:]] == [set(ids[3:]), set(ids[1:3]), ids[:1]]
    assert not any(file_of(store, image_id).exists() for image_id in ids)


@delayed
def test_scrub_retries_back_off_exponentially_up_to_the_cap(app, db, store, stored_image, tenant, clock, scrubber):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    store.fail_deletes = 4
    clock.advance(seconds=SCRUB_TIME + 1)
    seen = []

    for _ in range(4):
        scrubber.run_once()
        [location] = locations_of(db, stored_image)
        delay = (location.scrub_after - clock.now()).total_seconds()
        seen.append((location.status, location.attempts, delay, file_of(store, stored_image).exists()))
        clock.advance(seconds=delay - 1)
        assert scrubber.run_once().outcomes == {}, "retried before its backoff had passed"
        clock.advance(seconds=1)
    final = scrubber.run_once()

    pending = LocationStatus.PENDING_DELETE
    assert seen == [
        (pending, 1, RETRY_BASE, True),
        (pending, 2, 2 * RETRY_BASE, True),
        (pending, 3, RETRY_MAX, True),  # 4 x base = 120 s, capped at 100 s
        (pending, 4, RETRY_MAX, True),
    ]
    assert final.outcomes == {Outcome.DELETED: 1}
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.DELETED
    assert not file_of(store, stored_image).exists()
    assert image_status(db, stored_image) is ImageStatus.DELETED


@delayed
def test_failed_scrub_records_the_attempt_and_the_error(app, db, store, stored_image, tenant, clock, scrubber):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    store.fail_deletes = 1
    clock.advance(seconds=SCRUB_TIME + 1)

    report = scrubber.run_once()

    assert report.outcomes == {Outcome.FAILED: 1}
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.PENDING_DELETE
    assert location.attempts == 1
    assert location.last_error == "StoreError: fake store: injected delete failure"
    assert location.scrub_after == clock.now() + timedelta(seconds=RETRY_BASE)
    assert location.pending_since == T0
    assert (location.claimed_by, location.claim_expires_at) == (None, None)
    assert file_of(store, stored_image).read_bytes() == DATA
    assert image_status(db, stored_image) is ImageStatus.PENDING_DELETE


def claim_as(db: Session, clock, store, worker: str) -> list[int]:
    """Claim every due location for another worker, committed, as a scrubber on another node would."""
    db.rollback()
    claims = claim(db, clock, references_on(db, store), worker, POLICY, limit=100)
    db.commit()
    return [item.location_id for item in claims]


@delayed
def test_a_live_claim_of_another_scrubber_is_skipped(app, db, store, stored_image, tenant, clock, scrubber):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    claimed = claim_as(db, clock, store, "scrubber:other-node")
    clock.advance(seconds=LEASE - 1)

    report = scrubber.run_once()

    assert len(claimed) == 1
    assert report.outcomes == {}
    assert store.delete_calls == []
    assert file_of(store, stored_image).exists()
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.PENDING_DELETE
    assert location.claimed_by == "scrubber:other-node"


@delayed
def test_an_expired_claim_is_taken_over_and_the_dead_worker_cannot_record(
    app, db, store, stored_image, tenant, clock, scrubber
):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    db.rollback()
    [stale] = claim(db, clock, references_on(db, store), "scrubber:dead", POLICY, limit=10)
    db.commit()
    clock.advance(seconds=LEASE + 1)

    report = scrubber.run_once()
    # The dead worker wakes up and reports a failure: its claim is gone, so nothing may change.
    db.rollback()
    failed = Deletion(Outcome.FAILED, "x")
    was_recorded = record(
        db, clock, LocationLifecycle(db, clock), references_on(db, store), "scrubber:dead", POLICY, stale, failed
    )
    db.commit()

    assert report.outcomes == {Outcome.DELETED: 1}
    assert not file_of(store, stored_image).exists()
    assert was_recorded is False
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.DELETED
    assert (location.attempts, location.last_error) == (0, None)
    assert image_status(db, stored_image) is ImageStatus.DELETED


@delayed
def test_a_second_scrubber_skips_what_a_running_scrubber_is_deleting(
    app, db, store, new_image, upload, tenant, clock, make_scrubber
):
    ids = []
    for index in range(3):
        image_id = new_image(name=f"i{index}")["id"]
        upload(image_id, DATA)
        app.delete(f"/v2/images/{image_id}", headers=tenant, status=204)
        ids.append(image_id)
    clock.advance(seconds=SCRUB_TIME + 1)
    first, second = make_scrubber("scrubber:first"), make_scrubber("scrubber:second")
    store.hold_deletes()
    reports = []
    worker = threading.Thread(target=lambda: reports.append(first.run_once()))
    worker.start()
    try:
        assert store.delete_started.wait(WAIT_SECONDS), "the first scrubber never started deleting"
        skipped = second.run_once()
    finally:
        store.release()
        worker.join(WAIT_SECONDS)

    assert not worker.is_alive()
    assert skipped.outcomes == {}
    assert [report.outcomes for report in reports] == [{Outcome.DELETED: 3}]
    urls = [locations_of(db, image_id)[0].url for image_id in ids]
    assert sorted(store.delete_calls) == sorted(urls)  # each deleted exactly once
    assert not any(file_of(store, image_id).exists() for image_id in ids)
    assert all(image_status(db, image_id) is ImageStatus.DELETED for image_id in ids)


@delayed
def test_a_claim_too_close_to_its_expiry_deletes_nothing(app, db, store, stored_image, tenant, clock):
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    db.rollback()
    [item] = claim(db, clock, references_on(db, store), "scrubber:slow", POLICY, limit=10)
    db.commit()
    clock.advance(seconds=(POLICY.lease - POLICY.safety_margin).total_seconds())

    deletion = delete_data(registry_of(store), clock, POLICY, item)
    outcome = deletion.outcome
    db.rollback()
    record(db, clock, LocationLifecycle(db, clock), references_on(db, store), "scrubber:slow", POLICY, item, deletion)
    db.commit()

    assert outcome is Outcome.EXPIRED
    assert store.delete_calls == []
    assert file_of(store, stored_image).read_bytes() == DATA
    [location] = locations_of(db, stored_image)
    assert location.status is LocationStatus.PENDING_DELETE
    assert (location.claimed_by, location.claim_expires_at, location.attempts) == (None, None, 0)


# --- nothing outside the store root, whatever the database says ----------------------------------------


def plant_pending_location(db: Session, image_id: str, url: str, size_bytes: int) -> int:
    """A pending_delete location row written straight into the database, due now."""
    db.rollback()
    image = db.get_one(Image, uuid.UUID(image_id))
    image.status = ImageStatus.PENDING_DELETE
    location = Location(
        url=url,
        data_key_hash=data_key_digest(url),
        store="file",
        location_metadata={},
        status=LocationStatus.PENDING_DELETE,
        size_bytes=size_bytes,
        created_at=T0,
        updated_at=T0,
        pending_since=T0,
        scrub_after=T0,
        attempts=0,
    )
    image.locations.append(location)
    db.commit()
    return location.id


@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
@delayed
def test_scrubber_never_deletes_outside_the_store_root(db, store, new_image, tmp_path, scrubber, form):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"not yours")
    store.root.mkdir(parents=True, exist_ok=True)
    if form == "symlink":
        (store.root / "innocent-link").symlink_to(victim)
    url = {
        "absolute": f"file://{victim}",
        "dotdot": f"file://{store.root}/../outside/victim",
        "symlink": f"file://{store.root}/innocent-link",
    }[form]
    image_id = new_image()["id"]
    location_id = plant_pending_location(db, image_id, url, len(b"not yours"))

    report = scrubber.run_once()

    assert victim.read_bytes() == b"not yours"
    assert report.outcomes == {Outcome.FAILED: 1}
    [location] = locations_of(db, image_id)
    assert location.id == location_id
    assert location.status is LocationStatus.PENDING_DELETE
    assert location.attempts == 1
    assert "LocationOutsideStore" in location.last_error
    assert image_status(db, image_id) is ImageStatus.PENDING_DELETE


# --- shared data is never deleted from under another reference -----------------------------------------


def plant_shared_image(db: Session, image_id: str, url: str, size_bytes: int) -> None:
    """Make a queued image active with an active location on another image's data (same URL)."""
    db.rollback()
    image = db.get_one(Image, uuid.UUID(image_id))
    image.status, image.size = ImageStatus.ACTIVE, size_bytes
    image.locations.append(
        Location(
            url=url,
            data_key_hash=data_key_digest(url),
            store="file",
            location_metadata={},
            status=LocationStatus.ACTIVE,
            size_bytes=size_bytes,
            created_at=T0,
            updated_at=T0,
            attempts=0,
        )
    )
    db.commit()


@pytest.fixture
def shared_pair(db, new_image, stored_image) -> tuple[str, str, Path]:
    """Two images of one tenant whose only locations have the same URL; (first, second, the file)."""
    [first_location] = locations_of(db, stored_image)
    second = new_image(name="copy")["id"]
    plant_shared_image(db, second, first_location.url, len(DATA))
    return stored_image, second, store_path(first_location.url)


def store_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


@delayed
def test_scrubbing_one_reference_of_shared_data_keeps_the_data(app, db, store, shared_pair, tenant, clock, scrubber):
    first, second, data_file = shared_pair
    app.delete(f"/v2/images/{first}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)

    report = scrubber.run_once()

    assert report.outcomes == {Outcome.SHARED: 1}
    assert data_file.read_bytes() == DATA
    assert store.delete_calls == []
    [location] = locations_of(db, first)
    assert location.status is LocationStatus.DELETED
    assert image_status(db, first) is ImageStatus.DELETED
    assert [loc.status for loc in locations_of(db, second)] == [LocationStatus.ACTIVE]
    assert app.get(f"/v2/images/{second}/file", headers=tenant, status=200).body == DATA


@delayed
def test_scrubbing_the_last_reference_of_shared_data_deletes_it(app, db, shared_pair, tenant, clock, scrubber):
    first, second, data_file = shared_pair
    app.delete(f"/v2/images/{first}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber.run_once()
    app.delete(f"/v2/images/{second}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)

    report = scrubber.run_once()

    assert report.outcomes == {Outcome.DELETED: 1}
    assert not data_file.exists()
    assert [loc.status for loc in locations_of(db, second)] == [LocationStatus.DELETED]
    assert image_status(db, second) is ImageStatus.DELETED


@delayed
def test_shared_data_is_not_leaked_when_both_references_are_scrubbed_together(
    app, db, shared_pair, tenant, clock, scrubber
):
    first, second, data_file = shared_pair
    app.delete(f"/v2/images/{first}", headers=tenant, status=204)
    app.delete(f"/v2/images/{second}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)

    scrubber.run_once()
    scrubber.run_once()

    statuses = [loc.status for image_id in (first, second) for loc in locations_of(db, image_id)]
    assert statuses == [LocationStatus.DELETED, LocationStatus.DELETED]
    # No location references the data any more: it must be gone, or it leaks for ever.
    assert not data_file.exists()


def test_immediate_delete_of_one_reference_keeps_shared_data(app, db, store, shared_pair, tenant):
    first, second, data_file = shared_pair

    app.delete(f"/v2/images/{first}", headers=tenant, status=204)

    assert data_file.read_bytes() == DATA
    assert store.delete_calls == []
    assert [loc.status for loc in locations_of(db, first)] == [LocationStatus.DELETED]
    assert image_status(db, first) is ImageStatus.DELETED
    assert app.get(f"/v2/images/{second}/file", headers=tenant, status=200).body == DATA

    app.delete(f"/v2/images/{second}", headers=tenant, status=204)

    assert not data_file.exists()
    assert [loc.status for loc in locations_of(db, second)] == [LocationStatus.DELETED]
    assert image_status(db, second) is ImageStatus.DELETED
