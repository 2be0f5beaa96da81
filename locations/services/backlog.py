"""The pending-delete backlog as operators read it: oldest first, and totals by store."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from locations.models import Location, LocationStatus
from locquota.clock import Clock
from locquota.errors import InvalidMarker


@dataclass(frozen=True, slots=True)
class BacklogEntry:
    """One pending_delete location, without its URL (it may carry credentials)."""

    location_id: int
    image_id: str
    store: str
    size_bytes: int | None
    pending_since: datetime
    age_seconds: float
    scrub_after: datetime
    is_due: bool
    attempts: int
    last_error: str | None
    is_claimed: bool


@dataclass(frozen=True, slots=True)
class StoreBacklog:
    """The backlog of one store, for monitoring: how much waits, how much is due, how much keeps failing."""

    store: str
    locations: int
    size_bytes: int
    overdue: int  # past their scrub time
    failing: int  # failed at least once
    oldest_since: datetime


@dataclass(frozen=True, slots=True)
class StoreTotal:
    """The backlog of one store."""

    store: str
    locations: int
    size_bytes: int


def by_store_query(now: datetime) -> Select:  # type: ignore[type-arg]
    """One query on the pending_delete partial index: its cost follows the backlog, not the active locations."""
    return (
        select(
            Location.store,
            func.count(),
            func.coalesce(func.sum(Location.size_bytes), 0),
            func.coalesce(func.sum(case((Location.scrub_after <= now, 1), else_=0)), 0),
            func.coalesce(func.sum(case((Location.attempts > 0, 1), else_=0)), 0),
            func.min(Location.pending_since),
        )
        .where(Location.status == LocationStatus.PENDING_DELETE)
        .group_by(Location.store)
        .order_by(Location.store)
    )


class BacklogService:
    """Reads of pending_delete locations; every query runs on the partial indexes of that status."""

    def __init__(self, db: Session, clock: Clock) -> None:
        self._db, self._clock = db, clock

    def page(self, limit: int, marker: int | None) -> tuple[list[BacklogEntry], int | None]:
        """Up to limit entries after marker (a location id), oldest first, and the next marker."""
        pending = Location.status == LocationStatus.PENDING_DELETE
        query = select(Location).where(pending)
        if marker is not None:
            since = self._db.scalar(select(Location.pending_since).where(Location.id == marker, pending))
            if since is None:
                raise InvalidMarker("The marker is not a location in the backlog.")
            query = query.where(
                or_(Location.pending_since > since, and_(Location.pending_since == since, Location.id > marker))
            )
        rows = self._db.scalars(query.order_by(Location.pending_since, Location.id).limit(limit + 1)).all()
        now = self._clock.now()
        entries = [
            BacklogEntry(
                location_id=row.id,
                image_id=str(row.image_id),
                store=row.store,
                size_bytes=row.size_bytes,
                pending_since=row.pending_since,  # type: ignore[arg-type]
                age_seconds=(now - row.pending_since).total_seconds(),  # type: ignore[operator]
                scrub_after=row.scrub_after,  # type: ignore[arg-type]
                is_due=row.scrub_after <= now,  # type: ignore[operator]
                attempts=row.attempts,
                last_error=row.last_error,
                is_claimed=row.claim_expires_at is not None and row.claim_expires_at > now,
            )
            for row in rows[:limit]
        ]
        return entries, (entries[-1].location_id if len(rows) > limit else None)

    def by_store(self) -> list[StoreBacklog]:
        """Everything monitoring wants, per store (metrics scrape it): see by_store_query."""
        rows = self._db.execute(by_store_query(self._clock.now())).all()
        return [
            StoreBacklog(store, int(count), int(size), int(overdue), int(failing), oldest)
            for store, count, size, overdue, failing, oldest in rows
        ]

    def totals(self) -> list[StoreTotal]:
        """Pending locations and bytes per store."""
        rows = self._db.execute(
            select(Location.store, func.count(), func.coalesce(func.sum(Location.size_bytes), 0))
            .where(Location.status == LocationStatus.PENDING_DELETE)
            .group_by(Location.store)
            .order_by(Location.store)
        ).all()
        return [StoreTotal(store, int(count), int(size)) for store, count, size in rows]
