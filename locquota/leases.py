"""The one lease mechanism: claim a row, renew while working, expire, take over (STYLE section 14).

A lease is two columns on the row it guards: who holds it, and until when. Work that a process does
outside a transaction (deleting a location's data, streaming an upload) is leased: if the process
dies, the lease runs out and another takes the row over. Every change a holder makes is conditional
on still holding the lease (holder unchanged): a holder that stalled past its lease and was taken
over finds out at its next renewal and stops, so two processes never both act on one row.
"""

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session


def new_holder(kind: str) -> str:
    """A lease holder unique to this process and run, readable in logs (kind:host:pid:random)."""
    return f"{kind}:{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """How long a lease lasts, and when its holder renews it."""

    duration: timedelta

    def until(self, now: datetime) -> datetime:
        """When a lease taken or renewed now runs out."""
        return now + self.duration

    def renewal_due(self, expires_at: datetime, now: datetime) -> bool:
        """Renew once half the lease is spent: a holder alive and working never lets it run out."""
        return now >= expires_at - self.duration / 2

    @property
    def safety_margin(self) -> timedelta:
        """Irreversible work does not start under a lease this close to running out."""
        return self.duration / 10


@dataclass(frozen=True, slots=True)
class LeaseColumns:
    """The two columns of one kind of lease on one table."""

    holder: InstrumentedAttribute[str | None]
    expires_at: InstrumentedAttribute[datetime | None]

    def free(self, now: datetime) -> ColumnElement[bool]:
        """Rows nobody holds: never leased, released, or run out."""
        return or_(self.expires_at.is_(None), self.expires_at < now)

    def held_by(self, holder: str) -> ColumnElement[bool]:
        """Rows this holder still holds (whether or not the time ran out, nobody has taken them over)."""
        return self.holder == holder

    def expired(self, now: datetime) -> ColumnElement[bool]:
        """Rows whose holder stopped renewing (a crash, a kill, an outage)."""
        return and_(self.expires_at.is_not(None), self.expires_at < now)

    def granted(self, holder: str, expires_at: datetime) -> dict[str, Any]:
        """The values that give the lease to holder until expires_at."""
        return {self.holder.key: holder, self.expires_at.key: expires_at}

    def released(self) -> dict[str, Any]:
        """The values of a row nobody holds."""
        return {self.holder.key: None, self.expires_at.key: None}


def renew(db: Session, columns: LeaseColumns, row_filter: ColumnElement[bool], holder: str, until: datetime) -> bool:
    """Extend holder's lease on the rows row_filter selects; False if it was taken over (stop working)."""
    table = columns.holder.class_
    renewed = db.execute(
        update(table)
        .where(row_filter, columns.held_by(holder))
        .values(**{columns.expires_at.key: until})
        .execution_options(synchronize_session=False)
    )
    return bool(renewed.rowcount)  # type: ignore[attr-defined]


def take_over(
    db: Session,
    columns: LeaseColumns,
    key: InstrumentedAttribute[Any],
    among: ColumnElement[bool],
    holder: str,
    now: datetime,
    until: datetime,
    limit: int,
) -> list[Any]:
    """The keys of up to limit rows (among those `among` selects) whose lease ran out, now leased to holder.

    SKIP LOCKED keeps takers on every node apart; the update is conditional, so that of two takers (or a
    renewal racing in) exactly one wins each row. The caller commits.
    """
    table = columns.holder.class_
    candidates = list(
        db.scalars(
            select(key)
            .where(among, columns.expired(now))
            .order_by(columns.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not candidates:
        return []
    db.execute(
        update(table)
        .where(key.in_(candidates), columns.expired(now))
        .values(columns.granted(holder, until))
        .execution_options(synchronize_session=False)
    )
    return list(db.scalars(select(key).where(key.in_(candidates), columns.held_by(holder))))
