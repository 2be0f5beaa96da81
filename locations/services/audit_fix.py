"""`locquota audit --fix`: each finding repaired in its own short unit of work, after checking it again.

    missing     the data is lost: its location active -> deleted (the audit confirmed the data is gone),
                last_error says so; the image killed when no active location is left
    wrong_size  the data is not what was uploaded: active -> pending_delete, due now, so the scrubber
                deletes it; the image killed when no active location is left
    orphan,     data nothing references: recorded as a pending_delete location, due now, of an image of
    partial     the reserved project AUDIT_PROJECT, so the scrubber deletes it, charged to no tenant
    stuck       the upload reaper ends the upload (an image in saving without a lease gets a run-out one)
    unreadable  never: an operator must look

Every unit locks the owner's usage first (the one lock order: usage, then images, rows and data keys), then
reads the row again FOR UPDATE: a finding that is no longer true is left alone (Repair.CHANGED).
"""

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import (
    UNFINISHED_TASK_STATUSES,
    UPLOADING_IMAGE_STATUSES,
    Image,
    ImageStatus,
    Location,
    LocationStatus,
    Task,
    Upload,
    Visibility,
)
from locations.services.audit import Finding, Found, upload_names
from locations.services.data_references import DataKeys, DataReferences
from locations.services.image_import.tasks import run_out_task
from locations.services.lifecycle import LocationLifecycle
from locations.stores.base import StoreError, StoreNotFoundError, StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlNotReadableError, UrlVault
from locquota.errors import LocquotaError
from locquota.leases import new_holder
from locquota.scripting import UnitOfWork
from quota.models import UNLIMITED, Resource
from quota.services.limits import Limits

log = logging.getLogger(__name__)

# The reserved project that orphaned data is charged to while it waits for the scrubber: no tenant's.
AUDIT_PROJECT = "locquota-audit"
ORPHAN_IMAGE_NAME = "orphaned data found by locquota audit"
# A new image after this many pieces of data: the scrubber reads an image's locations with each one it deletes.
ORPHAN_IMAGE_LOCATIONS = 100
NO_LIMITS = Limits(dict.fromkeys(Resource, UNLIMITED), frozenset())
FOUND_BY = "(found by locquota audit)"


class Repair(StrEnum):
    """What --fix did with one finding."""

    FIXED = "fixed"
    CHANGED = "changed"  # no longer true when checked again: left alone
    KEPT = "kept"  # reported only (unreadable), or not safe to repair in this run


class AuditRepairs:
    """Repairs of one run's findings. reap: runs the upload reaper once (stuck uploads)."""

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        stores: StoreRegistry,
        clock: Clock,
        reap: Callable[[], object],
        *,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._unit, self._stores, self._clock, self._reap = unit_of_work, stores, clock, reap
        self._keys = DataKeys(stores, vault)
        self._orphans: tuple[uuid.UUID, int] | None = None  # this run's orphaned-data image, and its locations

    def repair(self, found: Found) -> Repair:
        """Repair one finding of the store or location walks (stuck ones go to end_stuck)."""
        if not found.is_repairable:
            return Repair.KEPT
        if found.kind is Finding.MISSING:
            return self._mark_lost(found)
        if found.kind is Finding.WRONG_SIZE:
            return self._retire_corrupt(found)
        if found.kind in (Finding.ORPHAN, Finding.PARTIAL):
            return self._collect(found)
        return Repair.KEPT

    # --- locations whose data is lost or corrupt -----------------------------------------------------------------

    def _mark_lost(self, found: Found) -> Repair:
        with self._unit() as db:
            lifecycle = LocationLifecycle(db, self._clock, vault=self._keys.vault)
            location = self._lock_active(db, lifecycle, found)
            if location is None:
                return Repair.CHANGED
            try:
                self._stores[location.store].get_size(self._keys.vault.open(location.url))
            except StoreNotFoundError:
                pass  # still gone
            except (StoreError, LocquotaError, UrlNotReadableError):
                return Repair.CHANGED  # a store that does not answer now proves nothing: kept
            else:
                return Repair.CHANGED  # the data is back
            lifecycle.move(location, LocationStatus.DELETED)
            location.last_error = f"data lost: missing from its store {FOUND_BY}"
            self._kill_if_dataless(lifecycle, location.image)
            log.warning("audit: location %s of image %s: data lost, marked deleted", location.id, location.image_id)
            return Repair.FIXED

    def _retire_corrupt(self, found: Found) -> Repair:
        with self._unit() as db:
            lifecycle = LocationLifecycle(db, self._clock, vault=self._keys.vault)
            location = self._lock_active(db, lifecycle, found)
            if location is None:
                return Repair.CHANGED
            try:
                size_bytes = self._stores[location.store].get_size(self._keys.vault.open(location.url))
            except (StoreError, LocquotaError, UrlNotReadableError):
                return Repair.CHANGED  # gone since: the next run reports it as missing
            if location.size_bytes is None or size_bytes == location.size_bytes:
                return Repair.CHANGED
            lifecycle.retire(location, delay=timedelta(0))
            location.last_error = f"data corrupt: size {size_bytes}, expected {location.size_bytes} {FOUND_BY}"
            self._kill_if_dataless(lifecycle, location.image)
            log.warning("audit: location %s of image %s: wrong size, retired", location.id, location.image_id)
            return Repair.FIXED

    def _lock_active(self, db: Session, lifecycle: LocationLifecycle, found: Found) -> Location | None:
        """The owner's usage, the image and the location locked, if the location is still active and theirs."""
        if found.owner is None or found.image_id is None:
            return None
        lifecycle.lock_usage([found.owner])
        image = db.scalar(select(Image).where(Image.id == found.image_id).with_for_update())
        if image is None or image.owner != found.owner:
            return None  # given to another project since: its usage is not the one locked
        return db.scalar(
            select(Location)
            .where(
                Location.id == found.location_id,
                Location.image_id == image.id,
                Location.status == LocationStatus.ACTIVE,
                Location.store == found.store,
            )
            .with_for_update()
        )

    @staticmethod
    def _kill_if_dataless(lifecycle: LocationLifecycle, image: Image) -> None:
        """An active image left without an active location has no data to serve: killed, no longer counted."""
        if image.status is ImageStatus.ACTIVE and not image.active_locations:
            lifecycle.set_image_status(image, ImageStatus.KILLED)

    # --- data nothing references -----------------------------------------------------------------------------

    def _collect(self, found: Found) -> Repair:
        store = self._stores.get(found.store or "")
        if store is None or found.url is None:
            return Repair.KEPT
        try:  # store calls first, outside the transaction
            size_bytes, identity = store.get_size(found.url), store.identify(found.url)
        except (StoreError, LocquotaError):
            return Repair.CHANGED  # gone since
        if size_bytes != found.size_bytes:
            return Repair.CHANGED  # written to since: not left behind after all
        with self._unit() as db:
            lifecycle = LocationLifecycle(db, self._clock, vault=self._keys.vault)
            lifecycle.lock_usage([AUDIT_PROJECT])
            if DataReferences(db, self._keys).find(identity, url=found.url, lock=True):
                return Repair.CHANGED  # a location reaches it now
            named = upload_names(db, self._keys, store)
            if named is None or identity.key in named:
                return Repair.CHANGED  # an upload names it now (or may)
            image, held = self._orphan_image(db, lifecycle)
            metadata: dict[str, object] = {"found_by": "locquota audit", "finding": found.kind.value}
            location = lifecycle.add(image, found.url, identity, store.name, metadata, size_bytes, limits=None)
            lifecycle.retire(location, delay=timedelta(0))
            db.flush()
            image_id, location_id = image.id, location.id
        self._orphans = (image_id, held + 1)  # once committed
        log.info("audit: %s data in store %s retired as location %s", found.kind, store.name, location_id)
        return Repair.FIXED

    def _orphan_image(self, db: Session, lifecycle: LocationLifecycle) -> tuple[Image, int]:
        """The run's image for orphaned data (locked), and how many locations it holds; a new one when full.

        Created in the unit of work of its first location, so it never stays without one. The scrubber
        makes it deleted with its last location: then the next piece of data gets a new image.
        """
        if self._orphans is not None and self._orphans[1] < ORPHAN_IMAGE_LOCATIONS:
            image_id, held = self._orphans
            image = db.scalar(
                select(Image).where(Image.id == image_id, Image.status == ImageStatus.PENDING_DELETE).with_for_update()
            )
            if image is not None:
                return image, held
        now = self._clock.now()
        image = Image(
            id=uuid.uuid4(),
            name=ORPHAN_IMAGE_NAME,
            status=ImageStatus.PENDING_DELETE,  # hidden from the API, as every image waiting for the scrubber
            visibility=Visibility.PRIVATE,
            owner=AUDIT_PROJECT,
            min_disk=0,
            min_ram=0,
            protected=False,
            os_hidden=False,
            created_at=now,
            updated_at=now,
        )
        db.add(image)
        db.flush()
        lifecycle.create_image(image, NO_LIMITS)  # the reserved project has no limits: nothing to admit
        return image, 0

    # --- stuck uploads ---------------------------------------------------------------------------------------

    def end_stuck(self, stuck: Iterable[Found]) -> dict[uuid.UUID, Repair]:
        """Give a stuck image a lease that already ran out, then run the reapers once; which left where they were.

        Saving or uploading without an upload lease: a nameless run-out upload lease (the upload reaper returns
        the image to queued). Importing without a task: a run-out task (the import reaper ends it as failed:
        staged data released, the image back to queued).
        """
        image_ids = {found.image_id: found.owner for found in stuck if found.image_id is not None}
        for image_id, owner in image_ids.items():
            if owner is not None:
                self._lease_ran_out(image_id, owner)
        self._reap()
        with self._unit() as db:
            stuck_still = set(
                db.scalars(select(Image.id).where(Image.id.in_(image_ids), Image.status.in_(UPLOADING_IMAGE_STATUSES)))
            )
        return {image_id: Repair.KEPT if image_id in stuck_still else Repair.FIXED for image_id in image_ids}

    def _lease_ran_out(self, image_id: uuid.UUID, owner: str) -> None:
        """As migration 0007 did for uploads from before leases: a lease without names, already run out."""
        with self._unit() as db:
            LocationLifecycle(db, self._clock).lock_usage([owner])  # usage, then the upload, as the reaper locks
            image = db.scalar(
                select(Image).where(Image.id == image_id, Image.status.in_(UPLOADING_IMAGE_STATUSES)).with_for_update()
            )
            if image is None:
                return
            if image.status is ImageStatus.IMPORTING:
                if not db.scalar(
                    select(Task.id).where(Task.image_id == image_id, Task.status.in_(UNFINISHED_TASK_STATUSES))
                ):
                    db.add(run_out_task(image, self._clock.now()))
                return
            if db.get(Upload, image_id) is not None:
                return
            now = self._clock.now()
            db.add(
                Upload(
                    image_id=image_id,
                    holder=new_holder("audit"),
                    expires_at=now - timedelta(seconds=1),
                    started_at=image.updated_at,
                )
            )
