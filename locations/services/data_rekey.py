"""Re-keying location rows from their stores' canonical keys, and the report of data shared across tenants.

Migration 0006 leaves every existing row hashed from its URL's text (data_key_version 0); only the
application knows the stores and the URL encryption keys, so `locquota db upgrade` runs this pass right
after it, and `locquota locations rekey --all` runs it again after a store's root moves or the
canonicalisation changes. Batches of rows by id, each its own transaction: a crash loses one batch, and
a re-run takes up the rows still at version 0. Safe while the service runs (rows are locked per batch).

Rows of different tenants with one data key can only come from before canonical keys (an alias of
another tenant's file, or an import): they are reported, kept in data_key_collisions for the metrics,
and their data is never deleted while any of them is live (the scrubber asks by the same key).
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from locations.models import DATA_KEY_VERSION, LIVE_LOCATION_STATUSES, DataKeyCollision, Image, Location
from locations.services.data_references import DataKeys
from locquota.clock import Clock
from locquota.crypto import UrlNotReadableError
from locquota.scripting import UnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RekeyBatch:
    """One committed batch: rows looked at, rows whose key columns changed, rows left on their URL's text."""

    scanned: int
    changed: int
    unkeyed: int


@dataclass(frozen=True, slots=True)
class Collision:
    """Data that live locations of several tenants reference."""

    data_key_hash: str
    tenants: list[str]
    location_ids: list[int]


def rows_to_rekey(unit_of_work: UnitOfWork, *, everything: bool) -> int:
    """How many rows a pass will look at (for its progress bar)."""
    with unit_of_work() as db:
        query = select(func.count()).select_from(Location)
        if not everything:
            query = query.where(Location.data_key_version != DATA_KEY_VERSION)
        return db.scalar(query) or 0


def rekey_batches(
    unit_of_work: UnitOfWork, keys: DataKeys, batch_size: int, *, everything: bool
) -> Iterator[RekeyBatch]:
    """Recompute data_key_hash, data_key_version and data_inode of every row not keyed yet (or of every row)."""
    after = 0
    while True:
        with unit_of_work() as db:
            query = select(Location.id, Location.url, Location.store, *KEY_COLUMNS).where(Location.id > after)
            if not everything:
                query = query.where(Location.data_key_version != DATA_KEY_VERSION)
            rows = db.execute(query.order_by(Location.id).limit(batch_size).with_for_update()).all()
            if not rows:
                return
            changes, unkeyed = [], 0
            for row in rows:
                try:
                    url = keys.vault.open(row.url)
                except UrlNotReadableError:
                    unkeyed += 1
                    log.error("location %s: its sealed URL cannot be opened; not re-keyed", row.id)
                    continue
                columns = keys.columns(url, row.store)
                unkeyed += columns["data_key_version"] != DATA_KEY_VERSION
                if any(getattr(row, name) != value for name, value in columns.items()):
                    changes.append({"id": row.id, **columns})
            if changes:
                db.execute(update(Location), changes)
            after = rows[-1].id
        yield RekeyBatch(len(rows), len(changes), unkeyed)


KEY_COLUMNS = (Location.data_key_hash, Location.data_key_version, Location.data_inode)


def record_collisions(db: Session, clock: Clock) -> list[Collision]:
    """Find the data keys that live locations of more than one tenant share, and keep them for the metrics.

    One grouped scan of the live locations: an operator's command, not a request's work.
    """
    live = select(Location.data_key_hash, Location.id, Image.owner).join(Location.image)
    live = live.where(Location.status.in_(LIVE_LOCATION_STATUSES)).subquery()
    shared = (
        select(live.c.data_key_hash)
        .group_by(live.c.data_key_hash)
        .having(func.count(func.distinct(live.c.owner)) > 1)
        .subquery()
    )
    rows = db.execute(
        select(live.c.data_key_hash, live.c.id, live.c.owner)
        .where(live.c.data_key_hash.in_(select(shared.c.data_key_hash)))
        .order_by(live.c.data_key_hash, live.c.id)
    ).all()
    grouped: dict[str, Collision] = {}
    for data_key_hash, location_id, owner in rows:
        collision = grouped.setdefault(data_key_hash, Collision(data_key_hash, [], []))
        collision.location_ids.append(location_id)
        if owner not in collision.tenants:
            collision.tenants.append(owner)
    db.execute(delete(DataKeyCollision))
    now = clock.now()
    if grouped:
        db.execute(
            insert(DataKeyCollision),
            [
                {
                    "data_key_hash": c.data_key_hash,
                    "tenants": len(c.tenants),
                    "locations": len(c.location_ids),
                    "found_at": now,
                }
                for c in grouped.values()
            ],
        )
    return list(grouped.values())


def collision_count(db: Session) -> int:
    """How many pieces of data the last rekey found shared across tenants (for the metrics)."""
    return db.scalar(select(func.count()).select_from(DataKeyCollision)) or 0
