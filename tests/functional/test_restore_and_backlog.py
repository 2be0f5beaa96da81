"""Operators' side of the lifecycle: restore (API and CLI), the scrubber backlog, purge and `locquota scrub`.

Real databases and a real store directory; the only fake is the store that fails or holds deletes on
demand. CLI commands run through CliRunner on a temporary .ini pointing at the same database and store.
"""

import signal
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.scrubber import Scrubber
from locations.services.purge import purge_deleted_locations
from locations.services.scrubbing import Outcome, claim
from locquota.cli import cli
from tests.conftest import random_id
from tests.fakes import (
    POLICY,
    SCRUB_TIME,
    FakeFailingStore,
    build_app_with_store,
    references_on,
    registry_of,
    scrub_settings,
    unit_of_work_on,
)

DATA = b"restorable bytes " * 64
WAIT_SECONDS = 30  # a safety net for waits on events and threads, never a timing the test relies on


@pytest.fixture
def settings(settings):
    return scrub_settings(settings, delayed_delete=True)


@pytest.fixture
def store(store_root: Path) -> FakeFailingStore:
    return FakeFailingStore.at(store_root)


@pytest.fixture
def wsgi_app(settings, store, clock):
    router = build_app_with_store(settings, store, clock)
    yield router
    router.registry["locquota.engine"].dispose()


@pytest.fixture
def scrubber(engine, store, clock) -> Scrubber:
    return Scrubber(unit_of_work_on(engine), registry_of(store), clock, POLICY, batch_size=10, pool_size=2)


@pytest.fixture
def stored_image(new_image, upload) -> str:
    image_id = new_image()["id"]
    upload(image_id, DATA)
    return image_id


@pytest.fixture
def pending_image(app, stored_image, tenant) -> str:
    """An image deleted with delayed_delete: pending_delete, its data still in the store."""
    app.delete(f"/v2/images/{stored_image}", headers=tenant, status=204)
    return stored_image


def locations_of(db: Session, image_id: str) -> list[Location]:
    db.rollback()  # a new transaction: see what the app and the scrubber committed (SQLite reads a snapshot)
    return list(db.scalars(select(Location).where(Location.image_id == uuid.UUID(image_id)).order_by(Location.id)))


def image_status(db: Session, image_id: str) -> ImageStatus:
    db.rollback()
    return db.get_one(Image, uuid.UUID(image_id)).status


def location_state(db: Session, image_id: str) -> list[tuple[object, ...]]:
    return [
        (loc.status, loc.pending_since, loc.scrub_after, loc.attempts, loc.last_error, loc.claimed_by)
        for loc in locations_of(db, image_id)
    ]


def listed_ids(app, headers) -> list[str]:
    return [image["id"] for image in app.get("/v2/images", headers=headers, status=200).json["images"]]


def restore(app, image_id: str, headers, status: int):
    return app.post(f"/v1/images/{image_id}/restore", headers=headers, status=status)


# --- POST /v1/images/{id}/restore ------------------------------------------------------------------------


def test_admin_restores_a_pending_delete_image_with_working_data(
    app, db, store, pending_image, tenant, admin, clock, scrubber
):
    clock.advance(seconds=10)

    res = restore(app, pending_image, admin, 200)

    assert res.json["id"] == pending_image
    assert res.json["status"] == "active"
    assert image_status(db, pending_image) is ImageStatus.ACTIVE
    [location] = locations_of(db, pending_image)
    assert location.status is LocationStatus.ACTIVE
    assert (location.pending_since, location.scrub_after, location.claimed_by) == (None, None, None)
    assert app.get(f"/v2/images/{pending_image}", headers=tenant, status=200).json["status"] == "active"
    assert app.get(f"/v2/images/{pending_image}/file", headers=tenant, status=200).body == DATA
    assert pending_image in listed_ids(app, tenant)
    # The restored location has left the scrubber's pool for good.
    clock.advance(seconds=SCRUB_TIME + 1)
    assert scrubber.run_once().outcomes == {}
    assert (store.root / pending_image).read_bytes() == DATA


def test_restore_after_a_failed_scrub_gives_working_downloads(app, db, store, pending_image, tenant, admin, clock):
    store.fail_deletes = 1
    clock.advance(seconds=SCRUB_TIME + 1)
    failed = Scrubber(unit_of_work_on(db.get_bind()), registry_of(store), clock, POLICY, batch_size=5, pool_size=1)
    assert failed.run_once().outcomes == {Outcome.FAILED: 1}

    restore(app, pending_image, admin, 200)

    [location] = locations_of(db, pending_image)
    assert location.status is LocationStatus.ACTIVE
    assert location.last_error is None
    assert app.get(f"/v2/images/{pending_image}/file", headers=tenant, status=200).body == DATA


@pytest.mark.parametrize("caller", ["tenant", "other_tenant"])
def test_restore_needs_the_admin_role(app, db, pending_image, request, caller):
    before = location_state(db, pending_image)

    res = restore(app, pending_image, request.getfixturevalue(caller), 403)

    assert res.json["error"]["code"] == "forbidden"
    assert image_status(db, pending_image) is ImageStatus.PENDING_DELETE
    assert location_state(db, pending_image) == before


@pytest.mark.parametrize("image_id", [random_id(), "not-a-uuid"])
def test_restore_of_an_unknown_image_is_404(app, admin, image_id):
    res = restore(app, image_id, admin, 404)

    assert res.json["error"]["code"] == "image_not_found"


@pytest.mark.parametrize("state", ["active", "queued"])
def test_restore_of_a_live_image_is_409(app, db, new_image, stored_image, admin, state):
    image_id = stored_image if state == "active" else new_image()["id"]
    before = location_state(db, image_id)

    res = restore(app, image_id, admin, 409)

    assert res.json["error"]["code"] == "invalid_image_status"
    assert image_status(db, image_id) is ImageStatus(state)
    assert location_state(db, image_id) == before


def test_restore_while_a_scrubber_holds_a_live_claim_is_409_and_changes_nothing(
    app, db, store, pending_image, admin, clock
):
    clock.advance(seconds=SCRUB_TIME + 1)
    db.rollback()
    claimed = claim(db, clock, references_on(db, store), "scrubber:other-node", POLICY, limit=10)
    db.commit()
    before = location_state(db, pending_image)

    res = restore(app, pending_image, admin, 409)

    assert len(claimed) == 1
    assert res.json["error"]["code"] == "scrub_in_progress"
    assert image_status(db, pending_image) is ImageStatus.PENDING_DELETE
    assert location_state(db, pending_image) == before
    assert before[0][5] == "scrubber:other-node"
    assert (store.root / pending_image).exists()


def test_restore_during_a_deletion_in_flight_is_409_and_the_scrub_completes(
    app, db, store, pending_image, admin, clock, scrubber
):
    clock.advance(seconds=SCRUB_TIME + 1)
    store.hold_deletes()
    reports = []
    worker = threading.Thread(target=lambda: reports.append(scrubber.run_once()))
    worker.start()
    try:
        assert store.delete_started.wait(WAIT_SECONDS), "the scrubber never started deleting"
        res = restore(app, pending_image, admin, 409)
    finally:
        store.release()
        worker.join(WAIT_SECONDS)

    assert not worker.is_alive()
    assert res.json["error"]["code"] == "scrub_in_progress"
    assert [report.outcomes for report in reports] == [{Outcome.DELETED: 1}]
    assert not (store.root / pending_image).exists()
    assert [loc.status for loc in locations_of(db, pending_image)] == [LocationStatus.DELETED]
    assert image_status(db, pending_image) is ImageStatus.DELETED


def test_restore_after_the_image_was_scrubbed_is_409(app, db, store, pending_image, admin, clock, scrubber):
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber.run_once()

    res = restore(app, pending_image, admin, 409)

    assert res.json["error"]["code"] == "invalid_image_status"
    assert image_status(db, pending_image) is ImageStatus.DELETED
    assert [loc.status for loc in locations_of(db, pending_image)] == [LocationStatus.DELETED]
    assert not (store.root / pending_image).exists()


# --- the CLI -----------------------------------------------------------------------------------------------


def wall_now() -> datetime:
    """The CLI runs on the wall clock (naive UTC, as stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def locquota(ini) -> Iterator:
    """Run `locquota --config <ini> ...`; the signal handlers the command installs are put back after."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(ini), *args])

    yield run
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_cli_restore_returns_the_image_to_active(app, db, locquota, pending_image, tenant):
    result = locquota("restore", pending_image)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"restored {pending_image}"
    assert image_status(db, pending_image) is ImageStatus.ACTIVE
    assert [loc.status for loc in locations_of(db, pending_image)] == [LocationStatus.ACTIVE]
    assert app.get(f"/v2/images/{pending_image}/file", headers=tenant, status=200).body == DATA


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("active", "Only a pending_delete image can be restored."),
        ("unknown", "No image found with this id."),
    ],
)
def test_cli_restore_refuses_what_the_api_refuses(db, locquota, stored_image, which, message):
    image_id = stored_image if which == "active" else random_id()

    result = locquota("restore", image_id)

    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    if which == "active":
        assert image_status(db, stored_image) is ImageStatus.ACTIVE


def test_cli_restore_refuses_while_a_scrubber_claim_is_live(db, locquota, pending_image):
    db.rollback()
    [location] = db.scalars(select(Location).where(Location.image_id == uuid.UUID(pending_image))).all()
    location.claimed_by, location.claim_expires_at = "scrubber:other-node", wall_now() + timedelta(hours=1)
    db.commit()

    result = locquota("restore", pending_image)

    assert result.exit_code == 1
    assert "scrubber is deleting" in result.output
    assert image_status(db, pending_image) is ImageStatus.PENDING_DELETE
    assert [(loc.status, loc.claimed_by) for loc in locations_of(db, pending_image)] == [
        (LocationStatus.PENDING_DELETE, "scrubber:other-node")
    ]


def test_cli_restore_rejects_a_malformed_id(locquota):
    result = locquota("restore", "not-a-uuid")

    assert result.exit_code == 2
    assert "IMAGE_ID" in result.output


def set_scrub_after(db: Session, image_id: str, when: datetime) -> None:
    db.rollback()
    for location in db.scalars(select(Location).where(Location.image_id == uuid.UUID(image_id))):
        location.scrub_after = when
    db.commit()


def test_cli_scrub_processes_due_locations_and_prints_a_summary(app, db, store, locquota, new_image, upload, tenant):
    due, later = new_image(name="due")["id"], new_image(name="later")["id"]
    for image_id in (due, later):
        upload(image_id, DATA)
        app.delete(f"/v2/images/{image_id}", headers=tenant, status=204)
    set_scrub_after(db, due, wall_now() - timedelta(minutes=1))
    set_scrub_after(db, later, wall_now() + timedelta(hours=1))

    result = locquota("scrub")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "scrubbed in 1 batches: deleted 1"
    assert not (store.root / due).exists()
    assert [loc.status for loc in locations_of(db, due)] == [LocationStatus.DELETED]
    assert image_status(db, due) is ImageStatus.DELETED
    assert (store.root / later).read_bytes() == DATA
    assert [loc.status for loc in locations_of(db, later)] == [LocationStatus.PENDING_DELETE]


def test_cli_scrub_with_nothing_due_says_so(db, store, locquota, pending_image):
    set_scrub_after(db, pending_image, wall_now() + timedelta(hours=1))

    result = locquota("scrub")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "scrubbed in 0 batches: nothing due"
    assert (store.root / pending_image).exists()


# --- purge -------------------------------------------------------------------------------------------------


@pytest.fixture
def four_states(app, db, new_image, upload, tenant, clock, scrubber) -> dict[str, str]:
    """Images whose one location is: deleted at T0+61 s, deleted 3 days later, pending_delete, active."""
    images = {}
    for name in ("old", "newer", "pending", "active"):
        images[name] = new_image(name=name)["id"]
        upload(images[name], DATA)
    app.delete(f"/v2/images/{images['old']}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber.run_once()
    clock.advance(days=3)
    app.delete(f"/v2/images/{images['newer']}", headers=tenant, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber.run_once()
    app.delete(f"/v2/images/{images['pending']}", headers=tenant, status=204)
    statuses = {name: [loc.status for loc in locations_of(db, image_id)] for name, image_id in images.items()}
    assert statuses == {
        "old": [LocationStatus.DELETED],
        "newer": [LocationStatus.DELETED],
        "pending": [LocationStatus.PENDING_DELETE],
        "active": [LocationStatus.ACTIVE],
    }
    return images


def location_counts(db: Session, images: dict[str, str]) -> dict[str, int]:
    return {name: len(locations_of(db, image_id)) for name, image_id in images.items()}


def test_purge_removes_only_rows_deleted_longer_ago_than_the_age(db, engine, clock, four_states):
    clock.advance(days=5)  # "old" was deleted 8 days and ~2 minutes ago, "newer" 5 days ago

    purged = purge_deleted_locations(unit_of_work_on(engine), clock, timedelta(days=7), batch_size=1)

    assert purged == 1
    assert location_counts(db, four_states) == {"old": 0, "newer": 1, "pending": 1, "active": 1}
    assert image_status(db, four_states["old"]) is ImageStatus.DELETED  # the image row stays


def test_purge_keeps_rows_deleted_exactly_at_the_cutoff(db, engine, clock, four_states):
    [old] = locations_of(db, four_states["old"])
    clock.advance(seconds=(old.deleted_at + timedelta(days=7) - clock.now()).total_seconds())

    purged = purge_deleted_locations(unit_of_work_on(engine), clock, timedelta(days=7), batch_size=10)

    assert purged == 0
    assert location_counts(db, four_states) == {"old": 1, "newer": 1, "pending": 1, "active": 1}


def test_cli_purge_older_than_7_days(db, locquota, four_states):
    # The CLI runs on the wall clock: date the two deletions relative to it.
    db.rollback()
    for name, age in (("old", timedelta(days=7, hours=1)), ("newer", timedelta(days=6, hours=23))):
        [location] = db.scalars(select(Location).where(Location.image_id == uuid.UUID(four_states[name]))).all()
        location.deleted_at = wall_now() - age
    db.commit()

    result = locquota("purge", "--older-than", "7")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "purged 1 deleted location rows and 0 expired import task rows"
    assert location_counts(db, four_states) == {"old": 0, "newer": 1, "pending": 1, "active": 1}


@pytest.mark.parametrize("days", ["-1", "soon", ""])
def test_cli_purge_rejects_a_bad_age(db, locquota, four_states, days):
    result = locquota("purge", "--older-than", days)

    assert result.exit_code == 2
    assert "--older-than" in result.output
    assert location_counts(db, four_states) == {"old": 1, "newer": 1, "pending": 1, "active": 1}


# --- GET /v1/scrubber/backlog ------------------------------------------------------------------------------


@pytest.fixture
def backlog_images(app, new_image, upload, tenant, clock) -> list[str]:
    """Three pending_delete images of sizes 100, 200 and 300 bytes, deleted 25 s, 15 s and 5 s ago.

    They are deleted in an order other than their creation, so oldest-first differs from id order.
    """
    created = []
    for size in (100, 200, 300):
        image_id = new_image(name=f"s{size}")["id"]
        upload(image_id, b"x" * size)
        created.append(image_id)
    order = [created[2], created[0], created[1]]
    for image_id in order:
        app.delete(f"/v2/images/{image_id}", headers=tenant, status=204)
        clock.advance(seconds=10)
    clock.advance(seconds=-5)
    return order


def test_backlog_pages_oldest_first_with_age_and_totals(app, admin, store, backlog_images, clock):
    first = app.get("/v1/scrubber/backlog", {"limit": "2"}, headers=admin, status=200)
    second = app.get(first.json["next"], headers=admin, status=200)

    entries = first.json["locations"] + second.json["locations"]
    assert [entry["image_id"] for entry in entries] == backlog_images
    assert [entry["age_seconds"] for entry in entries] == [25.0, 15.0, 5.0]
    assert [entry["size_bytes"] for entry in entries] == [300, 100, 200]
    assert {entry["store"] for entry in entries} == {"file"}
    assert all(entry["attempts"] == 0 and entry["last_error"] is None for entry in entries)
    assert all(entry["due"] is False and entry["claimed"] is False for entry in entries)
    assert len(first.json["locations"]) == 2
    assert "next" not in second.json
    for page in (first, second):
        assert page.json["totals"] == [{"store": "file", "locations": 3, "size_bytes": 600}]


def test_backlog_never_shows_a_location_url(app, admin, store, backlog_images):
    res = app.get("/v1/scrubber/backlog", headers=admin, status=200)

    assert len(res.json["locations"]) == 3
    assert "file:" not in res.text
    assert str(store.root) not in res.text
    assert "url" not in {key for entry in res.json["locations"] for key in entry}


def test_backlog_shows_attempts_and_last_error_after_a_failed_scrub(app, admin, store, pending_image, clock, scrubber):
    store.fail_deletes = 1
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber.run_once()
    clock.advance(seconds=4)

    res = app.get("/v1/scrubber/backlog", headers=admin, status=200)

    [entry] = res.json["locations"]
    assert entry["image_id"] == pending_image
    assert entry["attempts"] == 1
    assert entry["last_error"] == "StoreError: fake store: injected delete failure"
    assert entry["age_seconds"] == SCRUB_TIME + 5
    assert entry["due"] is False  # retried after the 30 s backoff
    assert entry["claimed"] is False
    assert res.json["totals"] == [{"store": "file", "locations": 1, "size_bytes": len(DATA)}]


def test_backlog_shows_a_live_claim(app, db, admin, pending_image, clock, store):
    clock.advance(seconds=SCRUB_TIME + 1)
    db.rollback()
    claim(db, clock, references_on(db, store), "scrubber:other-node", POLICY, limit=10)
    db.commit()

    [entry] = app.get("/v1/scrubber/backlog", headers=admin, status=200).json["locations"]

    assert (entry["due"], entry["claimed"]) == (True, True)


def test_empty_backlog(app, admin, stored_image):
    res = app.get("/v1/scrubber/backlog", headers=admin, status=200)

    assert res.json == {"locations": [], "totals": []}


@pytest.mark.parametrize("caller", ["tenant", "other_tenant"])
def test_backlog_needs_the_admin_role(app, request, backlog_images, caller):
    res = app.get("/v1/scrubber/backlog", headers=request.getfixturevalue(caller), status=403)

    assert res.json["error"]["code"] == "forbidden"
    assert "locations" not in res.json


def test_backlog_without_identity_is_401(app, backlog_images):
    res = app.get("/v1/scrubber/backlog", status=401)

    assert res.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_query_parameter"),
        ("limit=abc", "invalid_query_parameter"),
        ("limit=-1", "invalid_query_parameter"),
        ("limit=5000", "invalid_query_parameter"),
        ("limit=1&limit=2", "invalid_query_parameter"),
        ("marker=abc", "invalid_query_parameter"),
        ("marker=999999", "invalid_marker"),
        ("marker=99999999999", "invalid_marker"),
        ("marker=9999999999999999999999", "invalid_query_parameter"),
        ("sort_key=id", "invalid_query_parameter"),
        ("limit=1&bogus=1", "invalid_query_parameter"),
        ("limit=%FF", "invalid_query_parameter"),
    ],
)
def test_backlog_rejects_hostile_parameters(app, admin, backlog_images, query, code):
    res = app.get(f"/v1/scrubber/backlog?{query}", headers=admin, status=400)

    assert res.json["error"]["code"] == code
    assert "locations" not in res.json


def test_backlog_marker_of_a_location_that_left_the_backlog_is_400(app, db, admin, pending_image):
    [location] = locations_of(db, pending_image)
    app.post(f"/v1/images/{pending_image}/restore", headers=admin, status=200)

    res = app.get(f"/v1/scrubber/backlog?marker={location.id}", headers=admin, status=400)

    assert res.json["error"]["code"] == "invalid_marker"
