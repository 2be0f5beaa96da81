"""An upload's lease, and how an upload that will not finish hands its data to the scrubber.

The lease (a row of `uploads`, locquota.leases) is taken in the same transaction as queued -> saving,
with the names the store will write at, before the first byte. The uploading request renews it while
bytes flow. Every way an upload can end without landing (refused, failed, or dead and reaped) ends
the same way, through `hand_over`: the image back to queued, image_count_uploading released, and
whatever data is at those names recorded as pending_delete locations, so the scrubber deletes it
exactly once. Nothing written is ever left without a row that says it is there.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, Upload
from locations.services.data_references import DataReferences
from locations.services.lifecycle import LocationLifecycle
from locations.stores.base import DataIdentity, StoreNotFoundError, StoreRegistry, UploadTarget
from locquota.clock import Clock
from locquota.crypto import UrlNotReadableError, UrlVault
from locquota.errors import LocquotaError, UploadInterrupted
from locquota.leases import LeaseColumns, LeaseTerms, new_holder, renew

log = logging.getLogger(__name__)

UPLOAD_LEASE = LeaseColumns(Upload.holder, Upload.expires_at)


@dataclass(frozen=True, slots=True)
class FoundData:
    """Data found at one of an upload's names (url: opened, as the store takes it)."""

    url: str
    identity: DataIdentity
    size_bytes: int


class UploadLease:
    """One request's lease on one image's upload; what it changes later is conditional on still holding it."""

    def __init__(self, db: Session, clock: Clock, terms: LeaseTerms, vault: UrlVault, image_id: uuid.UUID) -> None:
        self._db, self._clock, self._terms, self._vault = db, clock, terms, vault
        self.image_id = image_id
        self.holder = new_holder("upload")
        self.expires_at = clock.now()

    def take(self, store: str, target: UploadTarget) -> None:
        """Record the lease and the names the store will write at (in the caller's queued -> saving unit)."""
        now = self._clock.now()
        self.expires_at = self._terms.until(now)
        self._db.add(
            Upload(
                image_id=self.image_id,
                holder=self.holder,
                expires_at=self.expires_at,
                store=store,
                url=self._vault.seal(target.url),
                scratch_url=self._vault.seal(target.scratch_url),
                started_at=now,
            )
        )

    def keep_alive(self, checkpoint: Callable[[], None], *, force: bool = False) -> None:
        """Renew (and commit) once half the lease is spent, or now with force; 409 if it was taken over."""
        now = self._clock.now()
        if not force and not self._terms.renewal_due(self.expires_at, now):
            return
        until = self._terms.until(now)
        if not renew(self._db, UPLOAD_LEASE, Upload.image_id == self.image_id, self.holder, until):
            raise UploadInterrupted("The upload stalled past its lease and was ended; upload the data again.")
        checkpoint()
        self.expires_at = until

    def end(self) -> bool:
        """Delete the upload's row if this lease still holds it (in the caller's landing unit); False if taken over."""
        ended = self._db.execute(
            delete(Upload)
            .where(Upload.image_id == self.image_id, UPLOAD_LEASE.held_by(self.holder))
            .execution_options(synchronize_session=False)
        )
        return ended.rowcount == 1  # type: ignore[attr-defined]

    def hold(self) -> Upload | None:
        """The upload's row, locked until the caller's commit, if this lease still holds it."""
        return self._db.scalar(
            select(Upload).where(Upload.image_id == self.image_id, UPLOAD_LEASE.held_by(self.holder)).with_for_update()
        )


def uploads_in_flight(db: Session, now: datetime) -> tuple[int, int]:
    """How many uploads hold a lease, and how many of those leases ran out (one small indexed table)."""
    row = db.execute(select(func.count(), func.count(case((UPLOAD_LEASE.expired(now), 1)))).select_from(Upload)).one()
    return row[0], row[1]


class WriteRecord(Protocol):
    """A record of data being written: an upload's row, or an import task's copy."""

    image_id: uuid.UUID
    store: str | None
    url: str | None
    scratch_url: str | None


def find_data(stores: StoreRegistry, vault: UrlVault, upload: WriteRecord) -> list[FoundData]:
    """What is at an upload's names now (store calls: outside any transaction).

    A name whose store is gone or refuses it yields nothing: `locquota audit` reports what is left there.
    A store that cannot answer now raises StoreError: nothing can be concluded, so the caller tries later.
    """
    store = stores.get(upload.store) if upload.store else None
    if store is None:
        return []
    found = []
    for sealed in (upload.url, upload.scratch_url):
        if sealed is None:
            continue
        try:
            url = vault.open(sealed)
            size = store.get_size(url)
            found.append(FoundData(url, store.identify(url), size))
        except StoreNotFoundError:
            continue  # nothing there: the upload had not written (or had already cleaned up) this name
        except (LocquotaError, UrlNotReadableError) as exc:
            log.error(
                "upload of image %s: one of its names in store %s cannot be examined: %s",
                upload.image_id,
                upload.store,
                type(exc).__name__,
            )
    return found


def hand_over(
    db: Session,
    lifecycle: LocationLifecycle,
    references: DataReferences,
    upload: Upload,
    image: Image,
    found: list[FoundData],
) -> list[Location]:
    """End an upload that will not land: image back to queued, its data pending_delete (due now), the lease gone.

    The caller has locked the upload row and the owner's usage. The data is charged as pending_delete, as
    all data waiting for the scrubber is; no admission, since it is already in the store. Data that a live
    location already reaches by the same name is that location's, and left to it.
    """
    if image.status in (ImageStatus.SAVING, ImageStatus.UPLOADING):  # an upload's, or a stage request's
        lifecycle.set_image_status(image, ImageStatus.QUEUED)
    retired = retire_found(lifecycle, references, image, upload.store, found) if upload.store else []
    db.delete(upload)
    return retired


def retire_found(
    lifecycle: LocationLifecycle, references: DataReferences, image: Image, store: str, found: list[FoundData]
) -> list[Location]:
    """Data found at a write's names, recorded as the image's pending_delete locations, due now (charged).

    The caller has locked the owner's usage. Data that a live location already reaches by the same
    name is that location's, and left to it.
    """
    retired = []
    for data in found:
        # Skipped only when another live location reaches it by this very name: a hard link (the scratch
        # file linked in place) is a second name, and each name is deleted on its own.
        if any(reference.shares_name for reference in references.find(data.identity, url=data.url, lock=True)):
            continue
        location = lifecycle.add(image, data.url, data.identity, store, {}, data.size_bytes, limits=None)
        lifecycle.retire(location, delay=timedelta(0))
        retired.append(location)
    return retired
