"""`locquota audit`: do the stores and the database agree? (SPEC section 11). Finding only; repairs are audit_fix.

Three walks, in batches, memory flat:
- each configured store's inventory: data that no live location reaches (decided by data key and inode, as
  everywhere, never by URL text) and that no upload names is an orphan, or a partial for an upload's
  scratch file, once it is older than the grace;
- live locations by id: a sealed URL no key opens, a URL its store refuses now or that reaches other data
  than when it was keyed, is unreadable; an active location whose data is gone is missing, one whose size
  differs from its size_bytes is wrong_size;
- images in saving or uploading: stuck when their upload lease ran out more than the grace ago, or they have
  none (and, uploading, no staged data); images in importing: stuck without an import task still running.
Each batch reads the database in one short unit of work; store calls are made outside transactions.
"""

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from locations.models import (
    DATA_KEY_VERSION,
    LIVE_LOCATION_STATUSES,
    UNFINISHED_TASK_STATUSES,
    UPLOADING_IMAGE_STATUSES,
    Image,
    ImageStatus,
    Location,
    LocationStatus,
    StagedData,
    Task,
    TaskCopy,
    Upload,
)
from locations.services.data_references import DataKeys, DataReferences, Question
from locations.stores.base import DataIdentity, Store, StoredData, StoreError, StoreNotFoundError, StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlNotReadableError, UrlVault
from locquota.errors import LocquotaError
from locquota.scripting import UnitOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")


class Finding(StrEnum):
    """A kind of disagreement between a store and the database (each is a column of audit_runs)."""

    MISSING = "missing"  # an active location whose data its store no longer has
    WRONG_SIZE = "wrong_size"  # an active location whose data is not the size it records
    ORPHAN = "orphan"  # data in a store that nothing references
    PARTIAL = "partial"  # an upload's scratch data that no upload in flight names
    STUCK = "stuck"  # an image in saving/uploading/importing that no lease will end
    UNREADABLE = "unreadable"  # a live location whose URL cannot be opened or identified now: reported only


@dataclass(frozen=True, slots=True)
class Found:
    """One finding. url is set for data found in a store only (its canonical URL): never a location's URL.

    is_repairable: --fix may act on it (never for unreadable; not for missing data in a store whose
    inventory listed nothing in this run, which is what an unmounted or emptied root looks like).
    """

    kind: Finding
    store: str | None = None
    location_id: int | None = None
    image_id: uuid.UUID | None = None
    owner: str | None = None
    url: str | None = None
    size_bytes: int | None = None  # what the store holds
    expected_bytes: int | None = None  # what the location records
    detail: str = ""
    is_repairable: bool = True


@dataclass(frozen=True, slots=True)
class AuditBatch:
    """One batch of a walk: how many things it looked at, and what it found."""

    scanned: int
    findings: list[Found]


@dataclass(frozen=True, slots=True)
class UncheckedStore:
    """A store whose data could not be compared in this run, and why."""

    store: str
    reason: str


@dataclass
class AuditTally:
    """What the walks looked at besides their findings."""

    locations: int = 0  # live locations checked
    skipped: int = 0  # live locations in stores not configured here (an imported glance:rbd location)
    stored: int = 0  # pieces of data the inventories listed
    too_recent: int = 0  # of those, modified within the grace: not judged
    unchecked: list[UncheckedStore] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)  # stores whose inventory completed and listed some data


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to size items (itertools.batched is Python 3.12)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def upload_names(db: Session, keys: DataKeys, store: Store) -> set[str] | None:
    """The data keys of every name a write in flight holds in this store, and of staged data.

    Writes in flight: uploads and stage requests, and import tasks' copies (target and scratch names).
    None when a row's names cannot be opened or identified: what it names is then unknown.
    """
    names = set()
    for sealed in db.scalars(
        union_all(
            select(Upload.url).where(Upload.store == store.name),
            select(Upload.scratch_url).where(Upload.store == store.name),
            select(TaskCopy.url).where(TaskCopy.store == store.name),
            select(TaskCopy.scratch_url).where(TaskCopy.store == store.name),
            select(StagedData.url).where(StagedData.store == store.name),
        )
    ):
        if sealed is None:
            continue
        try:
            names.add(store.identify(keys.vault.open(sealed)).key)
        except (LocquotaError, UrlNotReadableError):
            return None
    return names


class Auditor:
    """The walks of one audit run; `unit_of_work()` yields a session in a transaction that commits on exit.

    Walk the stores before the locations: whether a store's inventory listed data decides whether its
    missing data may be marked lost.
    """

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        stores: StoreRegistry,
        store_names: Sequence[str],
        clock: Clock,
        *,
        grace: timedelta,
        batch_size: int,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._unit, self._stores, self.store_names = unit_of_work, stores, tuple(store_names)
        self._grace, self._batch_size = grace, batch_size
        self._keys = DataKeys(stores, vault)
        # One moment for the whole run: what counts as recent does not move while the walks go on.
        self.now = clock.now()
        self.tally = AuditTally()

    @property
    def cutoff(self) -> datetime:
        """Data modified, and leases run out, after this are too recent to judge."""
        return self.now - self._grace

    def count_locations(self) -> int:
        """Live locations, for the progress bar."""
        with self._unit() as db:
            return db.scalar(select(func.count()).where(Location.status.in_(LIVE_LOCATION_STATUSES))) or 0

    # --- the stores -----------------------------------------------------------------------------------------

    def stored_data(self, store_name: str) -> Iterator[AuditBatch]:
        """Orphans and partials of one store, a batch of its inventory at a time."""
        store = self._stores[store_name]
        with self._unit() as db:
            unkeyed = db.scalar(
                select(func.count()).where(
                    Location.store == store_name,
                    Location.status.in_(LIVE_LOCATION_STATUSES),
                    Location.data_key_version != DATA_KEY_VERSION,
                )
            )
        if unkeyed:
            # Those rows are matched by their URL's text only: other spellings of their data would look orphaned.
            reason = f"{unkeyed} live locations are not keyed by their data yet: run `locquota locations rekey`"
            self.tally.unchecked.append(UncheckedStore(store_name, reason))
            return
        listed = 0
        try:
            for chunk in batched(store.inventory(), self._batch_size):
                listed += len(chunk)
                findings = self._unreferenced(store, chunk)
                if findings is None:
                    reason = "an upload in flight names data that cannot be identified (see the reaper's log)"
                    self.tally.unchecked.append(UncheckedStore(store_name, reason))
                    return
                yield AuditBatch(len(chunk), findings)
        except StoreError as exc:
            self.tally.unchecked.append(UncheckedStore(store_name, f"its inventory failed: {exc}"))
            return
        if listed:
            self.tally.listed.add(store_name)

    def _unreferenced(self, store: Store, chunk: list[StoredData]) -> list[Found] | None:
        self.tally.stored += len(chunk)
        judged: list[tuple[StoredData, DataIdentity]] = []
        for item in chunk:
            if item.modified_at > self.cutoff:
                self.tally.too_recent += 1  # an upload in flight, a location being added
                continue
            try:
                judged.append((item, store.identify(item.url)))
            except LocquotaError as exc:  # changed under us (a directory now); the next run sees it settled
                log.warning("audit: stored data in %s could not be identified: %s", store.name, exc.code)
        if not judged:
            return []
        with self._unit() as db:
            references = DataReferences(db, self._keys).find_all(
                [Question(identity, item.url) for item, identity in judged]
            )
            named = upload_names(db, self._keys, store)
        if named is None:
            return None
        return [
            Found(
                Finding.PARTIAL if item.is_scratch else Finding.ORPHAN,
                store=store.name,
                url=item.url,
                size_bytes=item.size_bytes,
                detail=f"modified {item.modified_at.isoformat(sep=' ', timespec='seconds')}",
            )
            for (item, identity), reached_by in zip(judged, references, strict=True)
            if not reached_by and identity.key not in named
        ]

    # --- the locations --------------------------------------------------------------------------------------

    def locations(self) -> Iterator[AuditBatch]:
        """Unreadable live locations, and active ones whose data is missing or the wrong size, by id."""
        after = 0
        while True:
            with self._unit() as db:
                rows = db.execute(
                    select(Location, Image.owner)
                    .join(Location.image)
                    .where(Location.status.in_(LIVE_LOCATION_STATUSES), Location.id > after)
                    .order_by(Location.id)
                    .limit(self._batch_size)
                ).all()
                db.expunge_all()
            if not rows:
                return
            self.tally.locations += len(rows)
            findings = [found for location, owner in rows if (found := self._check(location, owner)) is not None]
            yield AuditBatch(len(rows), self._still_active(findings))
            after = rows[-1][0].id

    def _check(self, location: Location, owner: str) -> Found | None:
        store = self._stores.get(location.store)
        if store is None:
            self.tally.skipped += 1
            return None
        facts = {"store": store.name, "location_id": location.id, "image_id": location.image_id, "owner": owner}
        url, problem = self._reach(location, store)
        if problem is not None:
            return Found(Finding.UNREADABLE, detail=problem, is_repairable=False, **facts)
        if url is None or location.status is not LocationStatus.ACTIVE:
            return None  # pending_delete: the scrubber deletes it, whatever is left of it
        return self._check_data(store, url, location, facts)

    def _reach(self, location: Location, store: Store) -> tuple[str | None, str | None]:
        """The location's URL, opened; or why it cannot be used now (unreadable: an operator must look)."""
        try:
            url = self._keys.vault.open(location.url)
        except UrlNotReadableError:
            return None, "its sealed URL cannot be opened (tampered, or its key is not in the ring)"
        try:
            identity = store.identify(url)
        except LocquotaError as exc:
            return None, f"its store refuses its URL now ({exc.code})"
        if not self._keys.still_names(location, identity):
            return None, "its URL reaches other data than when it was added (a symlink swapped)"
        return url, None

    def _check_data(self, store: Store, url: str, location: Location, facts: dict[str, Any]) -> Found | None:
        """Missing or wrong-size data of an active location."""
        try:
            size_bytes = store.get_size(url)
        except StoreNotFoundError:
            # An unmounted or emptied root lists nothing, and then every location looks lost: none is marked so.
            is_listed = store.name in self.tally.listed
            detail = "its data is gone" if is_listed else "its data is gone, but its store listed no data (unmounted?)"
            return Found(
                Finding.MISSING, expected_bytes=location.size_bytes, detail=detail, is_repairable=is_listed, **facts
            )
        except StoreError as exc:  # the store did not answer: nothing is concluded about the data
            detail = f"its store cannot be reached now: {exc}"
            return Found(Finding.UNREADABLE, detail=detail, is_repairable=False, **facts)
        except LocquotaError as exc:
            detail = f"its data cannot be examined ({exc.code})"
            return Found(Finding.UNREADABLE, detail=detail, is_repairable=False, **facts)
        if location.size_bytes is not None and size_bytes != location.size_bytes:
            detail = f"size {size_bytes}, expected {location.size_bytes}"
            return Found(
                Finding.WRONG_SIZE, size_bytes=size_bytes, expected_bytes=location.size_bytes, detail=detail, **facts
            )
        return None

    def _still_active(self, findings: list[Found]) -> list[Found]:
        """Drop data findings of locations retired while their data was looked at (a delete under way)."""
        suspects = {found.location_id for found in findings if found.kind in (Finding.MISSING, Finding.WRONG_SIZE)}
        if not suspects:
            return findings
        with self._unit() as db:
            active = set(
                db.scalars(
                    select(Location.id).where(Location.id.in_(suspects), Location.status == LocationStatus.ACTIVE)
                )
            )
        return [found for found in findings if found.location_id not in suspects or found.location_id in active]

    # --- uploads and imports ------------------------------------------------------------------------------------

    def _why_stuck(
        self, status: ImageStatus, expires_at: datetime | None, *, staged: bool, has_task: bool
    ) -> str | None:
        """Why an image in saving, uploading or importing is stuck; None if a lease (or its import) will end it."""
        if status is ImageStatus.IMPORTING:
            return None if has_task else "in importing without an import task"
        if expires_at is None:
            if status is ImageStatus.UPLOADING and staged:
                return None  # staged, waiting for its glance-direct import: the owner's to import or delete
            return f"in {status} without an upload lease"
        if expires_at < self.cutoff:
            return f"its upload lease ran out at {expires_at.isoformat(sep=' ', timespec='seconds')}"
        return None  # in flight, or just ran out: the reaper's next pass ends it

    def stuck_images(self) -> Iterator[AuditBatch]:
        """Images that no lease will ever end, by id.

        In saving or uploading (a stage request) whose upload lease ran out more than the grace ago, or
        that have none; uploading without a lease nor staged data; importing without a task that has not
        ended. (Leases end all of these in normal life: only a lost row or a bug leaves one.)
        """
        after: uuid.UUID | None = None
        unfinished_task = (
            select(Task.id).where(Task.image_id == Image.id, Task.status.in_(UNFINISHED_TASK_STATUSES)).exists()
        )
        while True:
            with self._unit() as db:
                query = (
                    select(
                        Image.id,
                        Image.owner,
                        Image.status,
                        Upload.store,
                        Upload.expires_at,
                        StagedData.image_id.is_not(None),
                        unfinished_task,
                    )
                    .outerjoin(Upload, Upload.image_id == Image.id)
                    .outerjoin(StagedData, StagedData.image_id == Image.id)
                    .where(Image.status.in_(UPLOADING_IMAGE_STATUSES))
                    .order_by(Image.id)
                    .limit(self._batch_size)
                )
                if after is not None:
                    query = query.where(Image.id > after)
                rows = db.execute(query).all()
            if not rows:
                return
            findings = []
            for image_id, owner, status, store, expires_at, staged, has_task in rows:
                detail = self._why_stuck(status, expires_at, staged=staged, has_task=has_task)
                if detail is not None:
                    findings.append(Found(Finding.STUCK, store=store, image_id=image_id, owner=owner, detail=detail))
            yield AuditBatch(len(rows), findings)
            after = rows[-1][0]
