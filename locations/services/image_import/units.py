"""The units of work of one import task's worker, and what it works with.

Every unit starts fresh (abort_and_begin), locks the image owner's usage, then the task (still this
worker's lease, or LeaseLost), and ends with a commit: status changes and their charges commit together.
Store calls happen between units, never inside one.
"""

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyramid.request import Request
from sqlalchemy import select

from locations.models import Image, TaskCopy
from locations.services.data_references import DataKeys, DataReferences
from locations.services.image_import.tasks import TaskLease
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import ScrubPolicy, delete_now
from locations.services.upload_leases import find_data, retire_found
from locations.stores.base import StoreError, StoreRegistry, UploadTarget
from locquota.clock import Clock
from locquota.crypto import UrlVault
from locquota.db import abort_and_begin, commit_and_begin
from locquota.errors import LocquotaError
from locquota.leases import LeaseTerms
from quota.models import MIB, Resource
from quota.services.ledger import UsageLedger
from quota.services.limits import LimitService

log = logging.getLogger(__name__)


class LeaseLost(Exception):  # noqa: N818 - a signal to stop, not an error of the import
    """The task was taken over (its lease ran out): stop at once, change nothing more."""


class LeftToReaper(Exception):  # noqa: N818
    """A store cannot say what a failed copy left behind: the lease runs out and the reaper ends the task."""


class CopyError(Exception):
    """One copy (or the download) failed; its message is what the task reports."""


@dataclass(frozen=True, slots=True)
class Source:
    """The bytes to copy: where they are (opened URL), how many, and their checksums."""

    store: str
    url: str
    size: int
    md5: str | None
    sha512: str | None


@dataclass(frozen=True, slots=True)
class ImportTools:
    """What a task's worker works with, beside its request's session and transaction manager."""

    stores: StoreRegistry
    clock: Clock
    vault: UrlVault
    terms: LeaseTerms
    scrub_policy: ScrubPolicy
    chunk_bytes: int
    size_cap_bytes: int
    multi_store: bool
    download: Callable[[str, int], Iterator[bytes]]  # (url, max_bytes) -> chunks; WebDownload* errors


class TaskUnits:
    """One task's session, transactions and lease, and the units of work every step of it uses."""

    def __init__(self, request: Request, tools: ImportTools, task_id: uuid.UUID, holder: str) -> None:
        self.db, self.tm, self.tools = request.db, request.tm, tools
        self.limits = request.find_service(LimitService)
        self.lease = TaskLease(self.db, tools.clock, tools.terms, task_id, holder)
        self.lifecycle = LocationLifecycle(self.db, tools.clock, vault=tools.vault)
        self.keys = DataKeys(tools.stores, tools.vault)

    # -- units of work -------------------------------------------------------------------------------

    def commit(self) -> None:
        """End this unit of work and begin the next."""
        commit_and_begin(self.tm)

    def hold(self, owner: str) -> None:
        """Start a unit: the owner's usage locked, then the task; LeaseLost if it is no longer ours."""
        abort_and_begin(self.tm)
        self.lifecycle.lock_usage([owner])
        if self.lease.hold() is None:
            raise LeaseLost

    def image(self, image_id: uuid.UUID) -> Image:
        """The image, locked until this unit commits."""
        return self.db.scalars(select(Image).where(Image.id == image_id).with_for_update()).one()

    def keep_alive(self, copied: int = 0, *, force: bool = False) -> None:
        """Renew the task's lease once half of it is spent (or now), saying how far the copy got."""
        if not force and not self.lease.renew_due(self.tools.clock.now()):
            return
        if not self.lease.renew(message=f"Copied {copied // MIB} MiB"):
            raise LeaseLost
        self.commit()

    def owner(self, image_id: uuid.UUID) -> str:
        """The image's owner (whose usage every unit locks first)."""
        return self.db.scalar(select(Image.owner).where(Image.id == image_id)) or ""

    def record_copy(self, image_id: uuid.UUID, store: str, planned: UploadTarget, reserved_bytes: int) -> int:
        """Record a write about to start (its names, the space admitted for it) and commit; its row id."""
        copy = TaskCopy(
            task_id=self.lease.task_id,
            image_id=image_id,
            store=store,
            url=self.tools.vault.seal(planned.url),
            scratch_url=self.tools.vault.seal(planned.scratch_url),
            reserved_bytes=reserved_bytes,
            started_at=self.tools.clock.now(),
        )
        self.db.add(copy)
        self.db.flush()
        copy_id = copy.id
        self.commit()
        return copy_id

    def hand_back(self, copy_id: int, image_id: uuid.UUID) -> None:
        """A failed copy: what is at its names to the scrubber (deleted now), its reservation released."""
        abort_and_begin(self.tm)
        copy = self.db.get(TaskCopy, copy_id)
        if copy is None:
            return
        self.db.expunge(copy)
        try:
            found = find_data(self.tools.stores, self.tools.vault, copy)  # store calls: no transaction needed
        except StoreError as exc:
            raise LeftToReaper from exc
        self.hold(self.owner(image_id))
        copy = self.db.get(TaskCopy, copy_id)
        if copy is None:
            raise LeaseLost
        image = self.image(image_id)
        UsageLedger(self.db, self.tools.clock).charge(image.owner, {Resource.IMAGE_SIZE_TOTAL: -copy.reserved_bytes})
        references = DataReferences(self.db, self.keys)
        retired = [location.id for location in retire_found(self.lifecycle, references, image, copy.store, found)]
        self.db.delete(copy)
        self.commit()
        self.delete_now(retired)

    def delete_now(self, location_ids: list[int]) -> None:
        """Delete just-retired locations' data now, as the scrubber would (their pending_delete is committed)."""
        if location_ids:
            tools = self.tools
            delete_now(
                self.db, tools.clock, tools.stores, tools.scrub_policy, self.commit, location_ids, vault=tools.vault
            )
            self.commit()


def why(exc: Exception) -> str:
    """What a failed copy reports: our own errors' messages; a store's or an unexpected error's kind only."""
    if isinstance(exc, CopyError | LocquotaError):
        return str(exc.message if isinstance(exc, LocquotaError) else exc)[:300]
    if isinstance(exc, StoreError):
        return "The store failed while the data was written."
    return f"The copy failed ({type(exc).__name__})."
