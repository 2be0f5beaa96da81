"""The location status DAG (SPEC section 2): every allowed transition, every refused one, on real rows."""

import itertools
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility, data_key_digest
from locations.services.lifecycle import ALLOWED_TRANSITIONS, LocationLifecycle, check_transition
from locations.stores.base import DataIdentity
from locquota.clock import FrozenClock
from locquota.errors import InvalidLocationTransition
from tests.conftest import T0

ACTIVE, PENDING, DELETED = LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE, LocationStatus.DELETED
SOURCES = (None, ACTIVE, PENDING, DELETED)
TARGETS = (ACTIVE, PENDING, DELETED)
ALLOWED = {
    (None, ACTIVE),
    (ACTIVE, DELETED),
    (ACTIVE, PENDING),
    (PENDING, DELETED),
    (PENDING, ACTIVE),
}
REFUSED = sorted(set(itertools.product(SOURCES, TARGETS)) - ALLOWED, key=str)


def pair_id(pair: tuple[LocationStatus | None, LocationStatus]) -> str:
    return f"{pair[0] or 'none'}->{pair[1]}"


def test_the_dag_is_exactly_the_specified_one():
    assert set(ALLOWED_TRANSITIONS) == ALLOWED
    assert len(REFUSED) == 7


@pytest.mark.parametrize("pair", sorted(ALLOWED, key=str), ids=pair_id)
def test_check_transition_allows(pair):
    source, target = pair
    check_transition(source, target)  # raises if refused


@pytest.mark.parametrize("pair", REFUSED, ids=pair_id)
def test_check_transition_refuses_with_409(pair):
    source, target = pair

    with pytest.raises(InvalidLocationTransition) as caught:
        check_transition(source, target)

    assert caught.value.status == 409
    assert caught.value.code == "invalid_location_transition"
    assert caught.value.details == {"source": str(source), "target": str(target)}


@pytest.mark.parametrize("target", TARGETS)
def test_deleted_is_final(target):
    with pytest.raises(InvalidLocationTransition):
        check_transition(DELETED, target)


# --- on real rows (PostgreSQL and SQLite) ---------------------------------------------------------------


def make_image(db: Session, status: ImageStatus = ImageStatus.ACTIVE) -> Image:
    image = Image(
        id=uuid.uuid4(),
        name="dag",
        status=status,
        visibility=Visibility.SHARED,
        owner="tenant-a",
        size=3,
        disk_format="raw",
        container_format="bare",
        min_disk=0,
        min_ram=0,
        protected=False,
        os_hidden=False,
        created_at=T0,
        updated_at=T0,
    )
    db.add(image)
    return image


def make_location(db: Session, status: LocationStatus) -> Location:
    """A committed location in status, with bookkeeping as the lifecycle would have left it."""
    image = make_image(db, ImageStatus.PENDING_DELETE if status is PENDING else ImageStatus.ACTIVE)
    pending = status is PENDING
    location = Location(
        url=f"file:///srv/images/{image.id}",
        data_key_hash=data_key_digest(f"file:///srv/images/{image.id}"),
        store="file",
        location_metadata={"k": "v"},
        status=status,
        size_bytes=3,
        created_at=T0,
        updated_at=T0,
        deleted_at=T0 if status is DELETED else None,
        pending_since=T0 if pending else None,
        scrub_after=T0 + timedelta(seconds=60) if pending else None,
        attempts=2 if pending else 0,
        last_error="StoreError: earlier failure" if pending else None,
        claimed_by=None,
        claim_expires_at=None,
    )
    image.locations.append(location)
    db.commit()
    return location


def snapshot(db: Session, location_id: int) -> dict[str, object]:
    """Every column of the row as committed in the database."""
    db.expire_all()
    row = db.get_one(Location, location_id)
    return {column.key: getattr(row, column.key) for column in inspect(Location).column_attrs}


@pytest.mark.parametrize("pair", [pair for pair in REFUSED if pair[0] is not None], ids=pair_id)
def test_refused_move_changes_nothing_on_a_real_row(db, pair):
    source, target = pair
    location = make_location(db, source)
    before = snapshot(db, location.id)
    clock = FrozenClock(T0 + timedelta(hours=1))
    lifecycle = LocationLifecycle(db, clock)

    with pytest.raises(InvalidLocationTransition):
        lifecycle.move(location, target)

    # Neither the object in the session nor what a commit would write has moved.
    assert {key: getattr(location, key) for key in before} == before
    db.commit()
    assert snapshot(db, location.id) == before


@pytest.mark.parametrize("target", TARGETS)
def test_deleted_row_stays_deleted(db, target):
    location = make_location(db, DELETED)
    before = snapshot(db, location.id)

    with pytest.raises(InvalidLocationTransition):
        LocationLifecycle(db, FrozenClock(T0 + timedelta(days=1))).move(location, target)

    db.commit()
    assert snapshot(db, location.id) == before
    assert before["status"] is DELETED


def test_active_to_pending_delete_starts_the_scrub_bookkeeping(db):
    location = make_location(db, ACTIVE)
    now = T0 + timedelta(hours=1)
    lifecycle = LocationLifecycle(db, FrozenClock(now))

    lifecycle.retire(location, delay=timedelta(seconds=60))
    db.commit()

    row = snapshot(db, location.id)
    assert row["status"] is PENDING
    assert row["pending_since"] == now
    assert row["scrub_after"] == now + timedelta(seconds=60)
    assert (row["attempts"], row["last_error"]) == (0, None)
    assert row["deleted_at"] is None
    assert row["updated_at"] == now


def test_active_to_deleted_stamps_deleted_at(db):
    location = make_location(db, ACTIVE)
    now = T0 + timedelta(hours=1)

    LocationLifecycle(db, FrozenClock(now)).move(location, DELETED)
    db.commit()

    row = snapshot(db, location.id)
    assert (row["status"], row["deleted_at"], row["updated_at"]) == (DELETED, now, now)


def test_pending_delete_to_deleted_stamps_deleted_at_and_drops_the_claim(db):
    location = make_location(db, PENDING)
    location.claimed_by, location.claim_expires_at = "scrubber:x", T0 + timedelta(minutes=5)
    db.commit()
    now = T0 + timedelta(minutes=2)

    LocationLifecycle(db, FrozenClock(now)).move(location, DELETED)
    db.commit()

    row = snapshot(db, location.id)
    assert (row["status"], row["deleted_at"]) == (DELETED, now)
    assert (row["claimed_by"], row["claim_expires_at"]) == (None, None)


def test_pending_delete_to_active_clears_the_scrub_bookkeeping(db):
    location = make_location(db, PENDING)
    now = T0 + timedelta(minutes=2)

    LocationLifecycle(db, FrozenClock(now)).move(location, ACTIVE)
    db.commit()

    row = snapshot(db, location.id)
    assert row["status"] is ACTIVE
    assert (row["pending_since"], row["scrub_after"], row["last_error"]) == (None, None, None)
    assert (row["claimed_by"], row["claim_expires_at"], row["deleted_at"]) == (None, None, None)


def test_add_creates_an_active_location(db):
    image = make_image(db)
    now = T0 + timedelta(minutes=1)

    identity = DataIdentity("file:///srv/images/x", "64:12", 1)
    location = LocationLifecycle(db, FrozenClock(now)).add(
        image, "file:///srv//images/./x", identity, "file", {}, 7, limits=None
    )
    db.commit()

    row = snapshot(db, location.id)
    assert (row["status"], row["size_bytes"], row["created_at"], row["attempts"]) == (ACTIVE, 7, now, 0)
    assert (location.data_key_hash, location.data_inode) == (data_key_digest("file:///srv/images/x"), "64:12")
    assert row["image_id"] == image.id
