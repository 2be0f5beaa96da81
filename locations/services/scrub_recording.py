"""Recording a scrubber batch's outcomes in a constant number of statements, whatever the batch's size.

record_batch writes exactly what scrubbing.record, called item by item in claim order after
lock_for_recording, writes (SPEC section 6): the same rows, the same usage, the same versions. It reads
once under the same locks, decides every item in Python as the per-row path would in that order (a
shared location is kept only while a reference not deleted earlier in the batch still holds its data),
then writes each kind of change with one statement for the whole batch:

    locks    the owners' usage (by tenant id), the shared data keys (by canonical key), the shared
             groups' rows and the batch's own rows (each one query, in id order)
    reads    which claims are still held (the lock query), the touched images' location counts
    writes   deleted locations (guarded UPDATE ... RETURNING), the others' bookkeeping, tenant_usage
             and store_usage grouped per tenant and (tenant, store) (quota.services.batch_ledger),
             the settled images

Per-row values go through `UPDATE ... FROM v` rather than executemany: one statement and one round trip
(data_references.rows_of: unnest of arrays on PostgreSQL, a constant statement; `WITH v(...) AS
(VALUES ...)` on SQLite, 3.33+ for UPDATE FROM, 3.35+ for RETURNING), where executemany is one
statement per row to the server. Sets of ids are one array parameter on PostgreSQL (data_references.one_of).
"""

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, auto
from operator import attrgetter
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.services.data_references import (
    DataReferences,
    Question,
    Reference,
    connection_of,
    lock_data_keys,
)
from locations.services.lifecycle import LocationLifecycle, count_changes, settled_status
from locations.services.scrubbing import CLAIM, Claim, Deletion, Outcome, ScrubPolicy
from locquota.clock import Clock
from locquota.sql_batches import one_of, rows_of
from quota.models import Resource
from quota.services.batch_ledger import SpaceMove, TenantChange, charge_tenants, release_pending_space

log = logging.getLogger(__name__)


class Verdict(Enum):
    """What recording one item comes to (the per-row path's branches)."""

    LOST = auto()  # the claim is no longer this worker's: nothing written
    DELETED = auto()  # the location (and perhaps its image) is deleted
    RELEASED = auto()  # shared data no longer shared: due again at once
    FAILED = auto()  # an attempt more, the error, a backed-off retry time
    CLEARED = auto()  # the claim is given back as it was (the lease ran out before deletion)


class HeldRow(NamedTuple):
    """A claimed location still this worker's, read under its row lock (a tuple: made from each row as read)."""

    location_id: int
    image_id: uuid.UUID
    store: str
    size_bytes: int | None
    attempts: int
    last_error: str | None
    scrub_after: datetime | None


@dataclass(slots=True)
class ImageState:
    """One image as settle sees it: its status, and how many of its locations are in each status."""

    owner: str
    status: ImageStatus
    locations: dict[LocationStatus, int]
    moved: bool = False  # its status changed at least once (updated_at is stamped)


def record_batch(
    db: Session,
    clock: Clock,
    lifecycle: LocationLifecycle,
    references: DataReferences,
    worker: str,
    policy: ScrubPolicy,
    claims: Sequence[Claim],
    deletions: Sequence[Deletion],
) -> list[bool]:
    """Record a batch's outcomes as `record` would item by item; True per item whose location is deleted.

    Takes the locks lock_for_recording takes, in its order: call it instead of that and `record`.
    """
    if len(claims) != len(deletions):
        raise ValueError("one deletion per claim")
    if not claims:
        return []
    now = clock.now()
    # lifecycle.lock_owners' locks, the owners read with one array parameter rather than an IN list.
    lifecycle.lock_usage(_owners(db, [item.location_id for item in claims]))
    groups = _lock_shared_groups(db, references, claims, deletions)
    held = _lock_held(db, worker, [item.location_id for item in claims])
    verdicts = decide(claims, deletions, held, groups)
    deleted = [
        held[item.location_id] for item, verdict in zip(claims, verdicts, strict=True) if verdict is Verdict.DELETED
    ]
    images = _read_images(db, {row.image_id for row in deleted})
    tenants, space = _settle(images, deleted)
    _write_deleted(db, worker, now, [row.location_id for row in deleted])
    _write_kept(db, worker, now, policy, claims, deletions, verdicts, held)
    charge_tenants(db, now, tenants)
    release_pending_space(db, space)
    _write_images(db, now, {image_id: state for image_id, state in images.items() if state.moved})
    _log(claims, deletions, verdicts, held)
    return [verdict is Verdict.DELETED for verdict in verdicts]


def decide(
    claims: Sequence[Claim],
    deletions: Sequence[Deletion],
    held: dict[int, HeldRow],
    groups: dict[int, list[Reference]],
) -> list[Verdict]:
    """Each item's verdict, in claim order, as the per-row path reaches it.

    groups: per shared item, the live references to its data as the batch began. The per-row path asks
    again before each shared item, and by then the items recorded before it are deleted: they no longer
    hold the data. Nothing else the batch writes changes whether a location is live.
    """
    deleted_so_far: set[int] = set()
    verdicts = []
    for item, deletion in zip(claims, deletions, strict=True):
        verdict = _verdict(item, deletion, held, groups.get(item.location_id, []), deleted_so_far)
        if verdict is Verdict.DELETED:
            deleted_so_far.add(item.location_id)
        verdicts.append(verdict)
    return verdicts


def _verdict(
    item: Claim, deletion: Deletion, held: dict[int, HeldRow], group: list[Reference], deleted_so_far: set[int]
) -> Verdict:
    if item.location_id not in held:
        return Verdict.LOST
    outcome = deletion.outcome
    if outcome is Outcome.SHARED:
        others = (ref for ref in group if ref.location_id != item.location_id and ref.location_id not in deleted_so_far)
        return Verdict.DELETED if any(ref.shares_name for ref in others) else Verdict.RELEASED
    if outcome is Outcome.DELETED:
        return Verdict.DELETED
    return Verdict.FAILED if outcome is Outcome.FAILED else Verdict.CLEARED


# --- locks and reads ------------------------------------------------------------------------------


def _lock_shared_groups(
    db: Session, references: DataReferences, claims: Sequence[Claim], deletions: Sequence[Deletion]
) -> dict[int, list[Reference]]:
    """Lock the data keys of the shared items (by key), then every row of their groups; each item's group.

    The keys are locked by canonical key as lock_for_recording locks them, so this path and the per-row
    one (and a scrubber of either version during an upgrade) take them in one order.
    """
    shared = [
        item
        for item, deletion in zip(claims, deletions, strict=True)
        if deletion.outcome is Outcome.SHARED and item.identity is not None
    ]
    if not shared:
        return {}
    by_key = {item.identity.key: item.identity for item in shared}  # type: ignore[union-attr]
    _lock_keys(db, [references.keys.digests(by_key[key])[-1] for key in sorted(by_key)])
    questions = [Question(item.identity, item.url) for item in shared]  # type: ignore[arg-type]
    answers = references.find_all(questions, lock=True)
    return {item.location_id: answer for item, answer in zip(shared, answers, strict=True)}


def _lock_keys(db: Session, key_hashes: list[str]) -> None:
    """DataReferences' lock of each key, all in one statement, in one order (no two batches deadlock)."""
    lock_data_keys(db, key_hashes)


def _owners(db: Session, location_ids: list[int]) -> list[str]:
    """The tenants owning these locations' images."""
    query = select(Image.owner).join(Location.image).where(one_of(db, Location.id, location_ids)).distinct()
    return list(connection_of(db).scalars(query))


def _lock_held(db: Session, worker: str, location_ids: list[int]) -> dict[int, HeldRow]:
    """Lock the batch's rows still claimed by worker and pending_delete (in id order); the others are lost."""
    query = (
        select(
            Location.id,
            Location.image_id,
            Location.store,
            Location.size_bytes,
            Location.attempts,
            Location.last_error,
            Location.scrub_after,
        )
        .where(_still_held(db, worker, location_ids))
        .order_by(Location.id)
        .with_for_update()
    )
    return {row[0]: HeldRow(*row) for row in connection_of(db).execute(query).all()}


def _still_held(db: Session, worker: str, location_ids: Collection[int]) -> ColumnElement[bool]:
    return (
        one_of(db, Location.id, location_ids)
        & CLAIM.held_by(worker)
        & (Location.status == LocationStatus.PENDING_DELETE)
    )


def _read_images(db: Session, image_ids: set[uuid.UUID]) -> dict[uuid.UUID, ImageState]:
    """The touched images, with their locations counted by status (what settle looks at)."""
    if not image_ids:
        return {}
    query: Select[Any] = (
        select(Image.id, Image.owner, Image.status, Location.status, func.count())
        .join(Location, Location.image_id == Image.id)
        .where(one_of(db, Image.id, image_ids))
        .group_by(Image.id, Image.owner, Image.status, Location.status)
    )
    images: dict[uuid.UUID, ImageState] = {}
    for image_id, owner, image_status, location_status, how_many in connection_of(db).execute(query).all():
        state = images.get(image_id)
        if state is None:
            state = images[image_id] = ImageState(owner, image_status, {})
        state.locations[location_status] = state.locations.get(location_status, 0) + how_many
    return images


# --- settling images and usage, in memory ---------------------------------------------------------


def _settle(
    images: dict[uuid.UUID, ImageState], deleted: list[HeldRow]
) -> tuple[dict[str, TenantChange], dict[tuple[str, str], SpaceMove]]:
    """Move each deleted location and settle its image after it, in claim order, as record does.

    Returns the charges per tenant, and what leaves each (tenant, store)'s pending_delete space.
    Settling after every move matters: an image can pass through a status and come back.
    """
    tenants: dict[str, TenantChange] = {}
    space: dict[tuple[str, str], SpaceMove] = {}
    moves: dict[tuple[ImageStatus, ImageStatus], dict[Resource, int]] = {}  # count_changes, once per pair
    for row in deleted:
        image = images[row.image_id]
        change = tenants.get(image.owner)
        if change is None:
            change = tenants[image.owner] = TenantChange()
        size = row.size_bytes or 0
        if size:  # _charge of the size alone, without building its dict
            change.deltas[Resource.IMAGE_SIZE_TOTAL] -= size
            change.charges += 1
        moved = space.get((image.owner, row.store))
        if moved is None:
            moved = space[image.owner, row.store] = SpaceMove()
        moved.add(size)
        counts = image.locations
        counts[LocationStatus.PENDING_DELETE] -= 1
        counts[LocationStatus.DELETED] = counts.get(LocationStatus.DELETED, 0) + 1
        target = settled_status(image.status, {status for status, count in counts.items() if count > 0})
        if target is not None and target is not image.status:
            pair = (image.status, target)
            if pair not in moves:
                moves[pair] = count_changes(*pair)
            _charge(change, moves[pair])
            image.status, image.moved = target, True
    return {owner: change for owner, change in tenants.items() if change.charges}, space


def _charge(change: TenantChange, deltas: dict[Resource, int]) -> None:
    """One UsageLedger.charge: a charge that changes no total sends nothing, and moves no version."""
    if any(deltas.values()):
        change.deltas.update(deltas)
        change.charges += 1


# --- writes: one statement per kind ---------------------------------------------------------------


def _write_deleted(db: Session, worker: str, now: datetime, location_ids: list[int]) -> None:
    """The deleted locations, guarded by the claim: every one must still be held (its row is locked)."""
    if not location_ids:
        return
    statement = (
        update(Location)
        .where(_still_held(db, worker, location_ids))
        .values(
            status=LocationStatus.DELETED,
            updated_at=now,
            deleted_at=now,
            **CLAIM.released(),
        )
        .execution_options(synchronize_session=False)
    )
    # Matched rows (MariaDB's connection counts found rows, not changed ones: SQLAlchemy's default there).
    written = db.execute(statement).rowcount  # type: ignore[attr-defined]
    if written != len(set(location_ids)):
        # Cannot happen under the row locks; if it does, write nothing rather than charge for a row not moved.
        raise RuntimeError(f"{len(set(location_ids)) - written} claimed locations changed under their lock")


def _write_kept(
    db: Session,
    worker: str,
    now: datetime,
    policy: ScrubPolicy,
    claims: Sequence[Claim],
    deletions: Sequence[Deletion],
    verdicts: Sequence[Verdict],
    held: dict[int, HeldRow],
) -> None:
    """The locations that stay pending_delete: the claim given back, and each one's retry bookkeeping."""
    rows = []
    for item, deletion, verdict in zip(claims, deletions, verdicts, strict=True):
        if verdict in (Verdict.LOST, Verdict.DELETED):
            continue
        row = held[item.location_id]
        attempts, last_error, scrub_after = row.attempts, row.last_error, row.scrub_after
        if verdict is Verdict.RELEASED:
            scrub_after = now
        elif verdict is Verdict.FAILED:
            attempts, last_error = attempts + 1, deletion.error
            scrub_after = now + policy.retry_delay(attempts)
        rows.append((row.location_id, attempts, last_error, scrub_after))
    if not rows:
        return
    columns = [
        ("id", Location.id.type),
        ("attempts", Location.attempts.type),
        ("last_error", Location.last_error.type),
        ("scrub_after", Location.scrub_after.type),
    ]
    kept = rows_of(db, "kept", columns, rows)
    db.execute(
        update(Location)
        .where(Location.id == kept.c.id, _still_held(db, worker, [row[0] for row in rows]))
        .values(
            attempts=kept.c.attempts,
            last_error=kept.c.last_error,
            scrub_after=kept.c.scrub_after,
            **CLAIM.released(),
        )
        .execution_options(synchronize_session=False)
    )


def _write_images(db: Session, now: datetime, moved: dict[uuid.UUID, ImageState]) -> None:
    """The images whose status changed (updated_at stamped, as set_image_status does)."""
    if not moved:
        return
    # In id order (UUIDs order by their int; sorting by it spares a Python-level comparison per pair).
    rows = [(image_id, moved[image_id].status) for image_id in sorted(moved, key=attrgetter("int"))]
    settled = rows_of(db, "settled", [("id", Image.id.type), ("status", Image.status.type)], rows)
    db.execute(
        update(Image)
        # The ids again as a plain test: the planner finds each image by its key rather than hashing the table.
        .where(Image.id == settled.c.id, one_of(db, Image.id, moved))
        .values(status=settled.c.status, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def _log(
    claims: Sequence[Claim],
    deletions: Sequence[Deletion],
    verdicts: Sequence[Verdict],
    held: dict[int, HeldRow],
) -> None:
    """The per-row path's log lines, item by item (operators follow a location by them)."""
    for item, deletion, verdict in zip(claims, deletions, verdicts, strict=True):
        if verdict is Verdict.LOST:
            log.warning(
                "location %s: claim lost before its outcome (%s) was recorded", item.location_id, deletion.outcome
            )
        elif verdict is Verdict.RELEASED:
            log.info("location %s: its data is no longer shared; released for deletion", item.location_id)
        elif verdict is Verdict.FAILED:
            attempts = held[item.location_id].attempts + 1
            log.warning("location %s: deletion failed (attempt %s): %s", item.location_id, attempts, deletion.error)
