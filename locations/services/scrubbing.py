"""Deleting the data of pending_delete locations, safely from any number of processes at once.

A deletion goes in three steps, each its own unit of work:
1. claim: mark due locations as taken by one worker until a lease expires (FOR UPDATE SKIP LOCKED on
   PostgreSQL; a conditional UPDATE makes the claim exact on SQLite too), and note whether another
   live location shares the data;
2. delete the data, outside any transaction, unless it is shared or the lease is nearly spent;
3. record: the location becomes deleted (and its image, with its last location), or keeps
   pending_delete with the attempt, the error and a backed-off retry time.
A worker that dies after step 1 leaves a claim that expires; deleting data twice is harmless.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import Any, NamedTuple

from sqlalchemy import Row, and_, select, update
from sqlalchemy.orm import Session

from locations.models import Location, LocationStatus
from locations.services.data_references import (
    DataKeys,
    DataReferences,
    Question,
    Reference,
    connection_of,
)
from locations.services.lifecycle import LocationLifecycle
from locations.stores.base import DataIdentity, StoreError, StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlNotReadableError, UrlVault
from locquota.errors import LocquotaError
from locquota.leases import LeaseColumns, LeaseTerms, new_holder
from locquota.sql_batches import one_of
from metrics.instruments import IDENTITY_MISMATCHES, LOCATION_DECRYPT_ERRORS, SCRUB_DELETIONS, SCRUB_FAILURES

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 1000


# A scrubber's claim on a pending_delete location is a lease (locquota.leases) on these columns.
CLAIM = LeaseColumns(Location.claimed_by, Location.claim_expires_at)


def new_worker_id(kind: str = "scrubber") -> str:
    """A claim owner unique to this process and run."""
    return new_holder(kind)


@dataclass(frozen=True, slots=True)
class ScrubPolicy:
    """How long a claim lasts, and how retries back off after a store error."""

    lease: timedelta
    retry_base: timedelta
    retry_max: timedelta

    def retry_delay(self, attempts: int) -> timedelta:
        """Exponential backoff: base, 2 x base, 4 x base, ... capped at retry_max."""
        return min(self.retry_base * 2 ** max(attempts - 1, 0), self.retry_max)

    @property
    def safety_margin(self) -> timedelta:
        """Data is not deleted under a claim this close to expiring (a restore may follow its expiry)."""
        return LeaseTerms(self.lease).safety_margin


@dataclass(frozen=True, slots=True)
class Claim:
    """A location this worker may delete the data of until expires_at.

    url is the opened URL and identity what it reaches now; problem, when set, says why the data must not
    be deleted now (a sealed URL no key opens, a URL its store refuses, data other than it was keyed
    for): the deletion fails and is retried, and the failure is counted for the operators.
    """

    location_id: int
    url: str | None
    identity: DataIdentity | None
    store: str
    size_bytes: int | None
    is_shared: bool
    expires_at: datetime
    problem: tuple[str, str] | None = None  # (error, reason label)


class Outcome(StrEnum):
    """What deleting one claimed location's data came to."""

    DELETED = "deleted"  # the store confirmed the data is gone
    SHARED = "shared"  # another live location references the data: only the location goes
    FAILED = "failed"  # the store failed; retry later
    EXPIRED = "expired"  # the lease ran out before deletion started; another worker will take it
    REQUEUED = "requeued"  # reported only: the claim was lost, or shared data was released for deletion


# What a claim reads of each location it takes (RETURNING of the claiming UPDATE).
CLAIMED_COLUMNS = (
    Location.id,
    Location.url,
    Location.store,
    Location.size_bytes,
    Location.data_key_hash,
    Location.data_key_version,
)


def due_filter(now: datetime) -> list[object]:
    """Pending locations whose scrub time has passed and that no live claim holds."""
    return [
        Location.status == LocationStatus.PENDING_DELETE,
        Location.scrub_after <= now,
        CLAIM.free(now),
    ]


def claim(
    db: Session,
    clock: Clock,
    references: DataReferences,
    worker: str,
    policy: ScrubPolicy,
    *,
    limit: int,
    location_ids: list[int] | None = None,
) -> list[Claim]:
    """Claim up to limit due locations, oldest first (or exactly location_ids, if given), for worker."""
    now = clock.now()
    candidates = select(Location.id).where(*due_filter(now))
    if location_ids is not None:
        candidates = candidates.where(one_of(db, Location.id, location_ids))
    # SKIP LOCKED: scrubbers on every node must not queue behind each other's batches.
    candidates = candidates.order_by(Location.scrub_after, Location.id).limit(limit).with_for_update(skip_locked=True)
    ids = list(connection_of(db).scalars(candidates))
    if not ids:
        return []
    expires_at = now + policy.lease
    # Conditional: on SQLite the SELECT above locks nothing, and another worker may have claimed first. What
    # it returns is exactly what this worker now holds, with the columns a claim needs: no second read.
    granted = (
        update(Location)
        .where(one_of(db, Location.id, ids), *due_filter(now))
        .values(CLAIM.granted(worker, expires_at))
        .execution_options(synchronize_session=False)
    )
    if db.get_bind().dialect.update_returning:
        rows = sorted(db.execute(granted.returning(*CLAIMED_COLUMNS)), key=attrgetter("id"))
    else:  # MariaDB has no UPDATE ... RETURNING: read back what this lease now holds (locked by the UPDATE)
        db.execute(granted)
        held = select(*CLAIMED_COLUMNS).where(
            one_of(db, Location.id, ids), CLAIM.held_by(worker), Location.claim_expires_at == expires_at
        )
        rows = list(db.execute(held.order_by(Location.id)))
    claims = [_claim_of(references.keys, row, expires_at) for row in rows]
    # One question for the whole batch: which claimed data does another live location reach by its name?
    asking = [item for item in claims if item.identity is not None and item.problem is None]
    questions = [Question(item.identity, item.url, item.location_id) for item in asking]  # type: ignore[arg-type]
    shared = {
        item.location_id
        for item, answer in zip(asking, references.find_all(questions), strict=True)
        if any(reference.shares_name for reference in answer)
    }
    if not shared:
        return claims
    return [replace(item, is_shared=True) if item.location_id in shared else item for item in claims]


def release(db: Session, worker: str, location_ids: list[int]) -> int:
    """Give back worker's claims on these locations, untouched: due again at once, for any worker.

    For claims whose data the worker never started on (a batch claimed ahead when the scrubber stops):
    only the lease goes, the attempts and the scrub time stay as they were. Returns how many it released.
    """
    if not location_ids:
        return 0
    released = db.execute(
        update(Location)
        .where(
            one_of(db, Location.id, location_ids),
            CLAIM.held_by(worker),
            Location.status == LocationStatus.PENDING_DELETE,
        )
        .values(CLAIM.released())
        .execution_options(synchronize_session=False)
    )
    return int(released.rowcount)  # type: ignore[attr-defined]


def _claim_of(keys: DataKeys, row: Row[Any], expires_at: datetime) -> Claim:
    """A claim of one row, with what its URL reaches now, or the problem that keeps its data from deletion."""
    try:
        url = keys.vault.open(row.url)
    except UrlNotReadableError:
        LOCATION_DECRYPT_ERRORS.labels("scrubber").inc()
        log.error("location %s: its sealed URL cannot be opened (tampered, or its key is missing)", row.id)
        problem = ("the location's sealed URL cannot be opened", "UrlNotReadableError")
        return Claim(row.id, None, None, row.store, row.size_bytes, False, expires_at, problem)
    try:
        identity = keys.identify_stored(url, row.store)
    except LocquotaError as exc:  # a symlink now leading out of the root, a loop: nothing is deleted
        problem = (f"{type(exc).__name__}: {exc.message}", type(exc).__name__)
        return Claim(row.id, url, None, row.store, row.size_bytes, False, expires_at, problem)
    if not keys.still_names(row, identity):
        IDENTITY_MISMATCHES.labels("scrubber").inc()
        log.error("location %s: its URL reaches other data than when it was added; not deleted", row.id)
        problem = ("the location's URL reaches other data than when it was added", "DataIdentityChanged")
        return Claim(row.id, url, identity, row.store, row.size_bytes, False, expires_at, problem)
    return Claim(row.id, url, identity, row.store, row.size_bytes, False, expires_at)


class Deletion(NamedTuple):
    """What deleting one claimed location's data came to; reason is a bounded label for a failure."""

    outcome: Outcome
    error: str = ""
    reason: str = ""


def delete_data(stores: StoreRegistry, clock: Clock, policy: ScrubPolicy, item: Claim) -> Deletion:
    """Step 2, outside any transaction: delete the data unless shared or the lease is nearly spent."""
    if item.is_shared:
        return Deletion(Outcome.SHARED)
    if clock.now() >= item.expires_at - policy.safety_margin:
        return Deletion(Outcome.EXPIRED)
    if item.problem is not None or item.url is None:
        error, reason = item.problem or ("the location's URL is unknown", "UrlNotReadableError")
        return Deletion(Outcome.FAILED, error, reason)
    try:
        stores[item.store].delete(item.url)
    except KeyError:
        return Deletion(Outcome.FAILED, f"store {item.store!r} is not configured", "StoreNotConfigured")
    except (StoreError, LocquotaError, OSError) as exc:
        return Deletion(Outcome.FAILED, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], type(exc).__name__)
    return Deletion(Outcome.DELETED)


def count(item: Claim, deletion: Deletion, *, recorded: bool) -> None:
    """The scrubber's counters: a deletion once recorded, a failure as it happened."""
    if recorded:
        SCRUB_DELETIONS.labels(item.store).inc()
    elif deletion.outcome is Outcome.FAILED:
        SCRUB_FAILURES.labels(item.store, deletion.reason).inc()


def record(
    db: Session,
    clock: Clock,
    lifecycle: LocationLifecycle,
    references: DataReferences,
    worker: str,
    policy: ScrubPolicy,
    item: Claim,
    deletion: Deletion,
) -> bool:
    """Step 3: write what happened, if the claim is still this worker's; True when the location is deleted.

    A location whose data was kept as shared is marked deleted only if another live reference still
    holds the data now; if the others went meanwhile (two references scrubbed together), it is
    released, due at once, so the next claim deletes the data instead of leaking it.
    """
    outcome, error = deletion.outcome, deletion.error
    group: list[Reference] = []
    if outcome is Outcome.SHARED and item.identity is not None:
        # The whole group, in id order, before any single row (this one included).
        group = references.find(item.identity, url=item.url, lock=True)
    location = db.scalar(
        select(Location)
        .where(
            and_(
                Location.id == item.location_id,
                CLAIM.held_by(worker),
                Location.status == LocationStatus.PENDING_DELETE,
            )
        )
        .with_for_update()
    )
    if location is None:
        log.warning("location %s: claim lost before its outcome (%s) was recorded", item.location_id, outcome)
        return False
    if outcome is Outcome.SHARED and not any(ref.shares_name for ref in group if ref.location_id != location.id):
        location.claimed_by = location.claim_expires_at = None
        location.scrub_after = clock.now()
        log.info("location %s: its data is no longer shared; released for deletion", location.id)
        return False
    if outcome in (Outcome.DELETED, Outcome.SHARED):
        lifecycle.move(location, LocationStatus.DELETED)
        lifecycle.settle(location.image)
        return True
    location.claimed_by = location.claim_expires_at = None
    if outcome is Outcome.FAILED:
        location.attempts += 1
        location.last_error = error
        location.scrub_after = clock.now() + policy.retry_delay(location.attempts)
        log.warning("location %s: deletion failed (attempt %s): %s", location.id, location.attempts, error)
    return False


def lock_for_recording(lifecycle: LocationLifecycle, references: DataReferences, items: list[Claim]) -> None:
    """Lock what recording these outcomes may change, in the one order every writer uses.

    The owners' usage (by tenant id), then each shared data key's group (by key): two scrubbers, or a
    scrubber and a request, never wait on each other in a cycle.
    """
    lifecycle.lock_owners([item.location_id for item in items])
    groups = {item.identity.key: item for item in items if item.is_shared and item.identity is not None}
    for key in sorted(groups):
        item = groups[key]
        references.find(item.identity, url=item.url, lock=True)  # type: ignore[arg-type]


def delete_now(
    db: Session,
    clock: Clock,
    stores: StoreRegistry,
    policy: ScrubPolicy,
    checkpoint: Callable[[], None],
    location_ids: list[int],
    *,
    vault: UrlVault = PLAINTEXT,
) -> None:
    """Delete just-retired locations' data within a request, as the scrubber would.

    The claims and the pending_delete status are committed first (checkpoint): a crash or a store
    error then leaves work for the scrubber, so data is never leaked or lost track of.
    """
    lifecycle = LocationLifecycle(db, clock, vault=vault)
    references = DataReferences(db, DataKeys(stores, vault))
    worker = new_worker_id("api")
    claims = claim(db, clock, references, worker, policy, limit=len(location_ids), location_ids=location_ids)
    checkpoint()
    deletions = [delete_data(stores, clock, policy, item) for item in claims]
    lock_for_recording(lifecycle, references, claims)
    for item, deletion in zip(claims, deletions, strict=True):
        recorded = record(db, clock, lifecycle, references, worker, policy, item, deletion)
        count(item, deletion, recorded=recorded)
