"""Removing rows whose history has ended: locations deleted long enough ago, import tasks past their time to live."""

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, select
from sqlalchemy.orm import InstrumentedAttribute

from locations.models import FINISHED_TASK_STATUSES, Location, LocationStatus, Task
from locquota.clock import Clock
from locquota.scripting import UnitOfWork


def purge_deleted_locations(unit_of_work: UnitOfWork, clock: Clock, older_than: timedelta, batch_size: int) -> int:
    """Delete rows of locations deleted before now - older_than, one batch per transaction; the count."""
    cutoff = clock.now() - older_than
    ended = and_(Location.status == LocationStatus.DELETED, Location.deleted_at < cutoff)
    return _delete_in_batches(unit_of_work, Location.id, ended, batch_size)


def purge_expired_tasks(unit_of_work: UnitOfWork, clock: Clock, batch_size: int) -> int:
    """Delete the rows of finished tasks no longer shown (past Glance's task_time_to_live); the count."""
    ended = and_(Task.status.in_(FINISHED_TASK_STATUSES), Task.expires_at < clock.now())
    return _delete_in_batches(unit_of_work, Task.id, ended, batch_size)


def _delete_in_batches(
    unit_of_work: UnitOfWork, key: InstrumentedAttribute[Any], ended: ColumnElement[bool], batch_size: int
) -> int:
    """Delete the rows `ended` selects, a batch per transaction (no long lock on a large table); the count."""
    purged = 0
    while True:
        with unit_of_work() as db:
            ids = list(db.scalars(select(key).where(ended).limit(batch_size)))
            if not ids:
                return purged
            db.execute(delete(key.class_).where(key.in_(ids)).execution_options(synchronize_session=False))
        purged += len(ids)
