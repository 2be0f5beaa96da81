"""Removing location rows that have been deleted for long enough (soft-deleted history has an end)."""

from datetime import timedelta

from sqlalchemy import delete, select

from locations.models import Location, LocationStatus
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
