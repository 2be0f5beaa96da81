"""Removing rows whose history has ended: locations deleted long enough ago, import tasks past their time to live."""

from datetime import timedelta

from sqlalchemy import delete, select

from locations.models import FINISHED_TASK_STATUSES, Location, LocationStatus, Task
from locquota.clock import Clock
from locquota.scripting import UnitOfWork


def purge_deleted_locations(unit_of_work: UnitOfWork, clock: Clock, older_than: timedelta, batch_size: int) -> int:
    """Delete rows of locations deleted before now - older_than, one batch per transaction; the count."""
    cutoff = clock.now() - older_than
    purged = 0
    while True:
        with unit_of_work() as db:
            ids = list(
                db.scalars(
                    select(Location.id)
                    .where(Location.status == LocationStatus.DELETED, Location.deleted_at < cutoff)
                    .limit(batch_size)
                )
            )
            if not ids:
                return purged
            db.execute(delete(Location).where(Location.id.in_(ids)).execution_options(synchronize_session=False))
        purged += len(ids)


def purge_expired_tasks(unit_of_work: UnitOfWork, clock: Clock, batch_size: int) -> int:
    """Delete the rows of finished tasks no longer shown (past Glance's task_time_to_live); the count."""
    purged = 0
    while True:
        with unit_of_work() as db:
            ids = list(
                db.scalars(
                    select(Task.id)
                    .where(Task.status.in_(FINISHED_TASK_STATUSES), Task.expires_at < clock.now())
                    .limit(batch_size)
                )
            )
            if not ids:
                return purged
            db.execute(delete(Task).where(Task.id.in_(ids)).execution_options(synchronize_session=False))
        purged += len(ids)
