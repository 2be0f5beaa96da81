"""The one lease mechanism (locquota.leases): take, renew while working, run out, take over.

Exercised on the `uploads` table's lease (any table's two lease columns behave alike; the scrubber's
claims on locations are the other user). Runs on PostgreSQL and SQLite.
"""

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from locations.models import Upload
from locations.services.upload_leases import UPLOAD_LEASE
from locquota.leases import LeaseTerms, new_holder, renew
from tests.conftest import T0

TERMS = LeaseTerms(timedelta(seconds=60))


@pytest.fixture
def leased(app, engine, tenant, new_image) -> uuid.UUID:
    """An image whose upload lease "first" holds until T0 + 60 s."""
    image_id = uuid.UUID(new_image()["id"])
    with Session(engine) as session, session.begin():
        session.add(Upload(image_id=image_id, holder="first", expires_at=TERMS.until(T0), started_at=T0))
    return image_id


def expiry(engine, image_id: uuid.UUID) -> tuple[str, datetime]:
    with Session(engine) as session:
        row = session.get(Upload, image_id)
        return row.holder, row.expires_at


def take_over(engine, image_id: uuid.UUID, holder: str, now: datetime) -> bool:
    """What a reaper does: the lease, if it ran out, becomes holder's (conditional: one taker wins)."""
    with Session(engine) as session, session.begin():
        taken = session.execute(
            update(Upload)
            .where(Upload.image_id == image_id, UPLOAD_LEASE.expired(now))
            .values(UPLOAD_LEASE.granted(holder, TERMS.until(now)))
        )
        return taken.rowcount == 1


def test_the_holder_renews_and_no_one_else_can(engine, leased):
    later = T0 + timedelta(seconds=40)
    with Session(engine) as session, session.begin():
        assert renew(session, UPLOAD_LEASE, Upload.image_id == leased, "first", TERMS.until(later))
        assert not renew(session, UPLOAD_LEASE, Upload.image_id == leased, "someone-else", TERMS.until(T0))
    assert expiry(engine, leased) == ("first", later + TERMS.duration)


def test_a_lease_is_free_only_once_it_has_run_out(engine, leased):
    def free_at(now: datetime) -> bool:
        with Session(engine) as session:
            return session.scalar(select(Upload.image_id).where(UPLOAD_LEASE.free(now))) == leased

    deadline = T0 + TERMS.duration
    assert not free_at(deadline)  # still held at its last instant
    assert free_at(deadline + timedelta(microseconds=1))


def test_a_run_out_lease_is_taken_over_once_and_the_old_holder_is_fenced_off(engine, leased):
    now = T0 + TERMS.duration + timedelta(seconds=1)
    assert not take_over(engine, leased, "too-early", T0)
    assert take_over(engine, leased, "reaper-1", now)
    assert not take_over(engine, leased, "reaper-2", now)  # taken: not run out any more
    with Session(engine) as session, session.begin():
        assert not renew(session, UPLOAD_LEASE, Upload.image_id == leased, "first", TERMS.until(now))
    assert expiry(engine, leased) == ("reaper-1", now + TERMS.duration)


def test_renewal_is_due_once_half_the_lease_is_spent():
    expires_at = TERMS.until(T0)
    assert not TERMS.renewal_due(expires_at, T0 + timedelta(seconds=29))
    assert TERMS.renewal_due(expires_at, T0 + timedelta(seconds=30))
    assert TERMS.safety_margin == timedelta(seconds=6)


def test_holders_are_unique_and_say_who_they_are():
    first, second = new_holder("upload"), new_holder("upload")
    assert first != second
    kind, _host, pid, _random = first.split(":")
    assert (kind, pid.isdigit(), len(first) <= 64) == ("upload", True, True)
