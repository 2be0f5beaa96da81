"""Running one import task in the background: web-download into staging, then a copy into each store.

Each copy is admitted before its data moves: one unit of work charges the image's size to
image_size_total (exactly, under the usage row lock; a copy that does not fit fails for that store
alone and charges nothing) and records the names the store will write at (a task_copies row). The
bytes then stream outside any transaction, checked against the source's size and checksum, the
task's lease renewed as they flow. A last unit turns the reservation into an active location. A copy
that fails hands whatever is at its names to the scrubber; a worker that dies leaves its lease to run
out, and the import reaper does the same (image_import.reaper). Then end_import ends the task.
"""

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyramid.request import Request
from sqlalchemy import func, select

from locations.models import (
    LIVE_LOCATION_STATUSES,
    UNFINISHED_TASK_STATUSES,
    Image,
    ImageStatus,
    Location,
    StagedData,
    Task,
    TaskCopy,
    TaskStatus,
)
from locations.services.data_references import DataKeys, DataReferences
from locations.services.image_import.ending import end_import, method_of, must_all_succeed, target_stores
from locations.services.image_import.staging import staged_of
from locations.services.image_import.tasks import IMPORTING_TO, TaskLease, merge_stores
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import ScrubPolicy, delete_now
from locations.services.upload import HASH_ALGORITHM
from locations.services.upload_leases import find_data, retire_found
from locations.stores.base import Store, StoreError, StoreRegistry, UploadTarget
from locquota.clock import Clock
from locquota.crypto import UrlNotReadableError, UrlVault
from locquota.db import abort_and_begin, commit_and_begin
from locquota.errors import LocquotaError, QuotaExceeded
from locquota.leases import LeaseTerms
from quota.models import MIB, UNLIMITED, Resource
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


class ImportRun:
    """One task, run by the worker that holds its lease."""

    def __init__(self, request: Request, tools: ImportTools, task_id: uuid.UUID, holder: str) -> None:
        self._db, self._tm, self._tools = request.db, request.tm, tools
        self._limits = request.find_service(LimitService)
        self._lease = TaskLease(self._db, tools.clock, tools.terms, task_id, holder)
        self._lifecycle = LocationLifecycle(self._db, tools.clock, vault=tools.vault)
        self._keys = DataKeys(tools.stores, tools.vault)

    def run(self) -> None:
        """Run the task to its end, unless it was taken over or another worker has it."""
        try:
            with self._tm:
                task = self._lease.hold()
                if task is None or task.status not in UNFINISHED_TASK_STATUSES:
                    return
                task.status, task.updated_at = TaskStatus.PROCESSING, self._tools.clock.now()
                image_id, method = task.image_id, method_of(task)
                stores, must_succeed = target_stores(task), must_all_succeed(task)
                uri = task.task_input["import_req"]["method"].get("uri")  # type: ignore[index,union-attr]
                self._commit()
                assert image_id is not None  # noqa: S101  (import tasks always name their image)
                failed, error = self._work(image_id, method, stores, must_succeed, uri)
                self._end(failed, error)
        except (LeaseLost, LeftToReaper) as exc:
            log.warning("import task %s: %s; the import reaper ends it", self._lease.task_id, type(exc).__name__)

    def _work(
        self, image_id: uuid.UUID, method: str, stores: list[str], must_succeed: bool, uri: str | None
    ) -> tuple[dict[str, str], str | None]:
        """The copies; returns the failed stores (with why) and why the import stopped early, if it did."""
        failed: dict[str, str] = {}
        try:
            if method == "web-download":
                self._download(image_id, str(uri))
            source = self._source(image_id, method)
            # A direct import's image turns active with its first copy; copy-image's is active throughout.
            expected = (ImageStatus.ACTIVE,) if method == "copy-image" else (ImageStatus.IMPORTING, ImageStatus.ACTIVE)
            for store in stores:
                reason = self._copy(image_id, store, source, expected)
                if reason is not None:
                    failed[store] = reason
                    if must_succeed:
                        break
        except CopyError as exc:
            return failed, str(exc)
        except (LeaseLost, LeftToReaper):
            raise
        except Exception:
            log.exception("import task %s failed", self._lease.task_id)
            return failed, "The import failed unexpectedly; see the service's log."
        return failed, None

    # -- units of work -------------------------------------------------------------------------------

    def _commit(self) -> None:
        commit_and_begin(self._tm)

    def _hold(self, owner: str) -> None:
        """Start a unit: the owner's usage locked, then the task; LeaseLost if it is no longer ours."""
        abort_and_begin(self._tm)
        self._lifecycle.lock_usage([owner])
        if self._lease.hold() is None:
            raise LeaseLost

    def _image(self, image_id: uuid.UUID) -> Image:
        return self._db.scalars(select(Image).where(Image.id == image_id).with_for_update()).one()

    def _keep_alive(self, copied: int = 0, *, force: bool = False) -> None:
        """Renew the task's lease once half of it is spent (or now), saying how far the copy got."""
        if not force and not self._lease.renew_due(self._tools.clock.now()):
            return
        if not self._lease.renew(message=f"Copied {copied // MIB} MiB"):
            raise LeaseLost
        self._commit()

    def _owner(self, image_id: uuid.UUID) -> str:
        return self._db.scalar(select(Image.owner).where(Image.id == image_id)) or ""

    # -- the source ----------------------------------------------------------------------------------

    def _source(self, image_id: uuid.UUID, method: str) -> Source:
        """The staged data (glance-direct, web-download), or the image's first readable active location."""
        abort_and_begin(self._tm)
        if method != "copy-image":
            staged = staged_of(self._db, image_id)
            if staged is None:
                raise CopyError("The image has no staged data (it was deleted meanwhile).")
            return Source(
                staged.store,
                self._tools.vault.open(staged.url),
                staged.size_bytes,
                staged.checksum,
                staged.os_hash_value,
            )
        image = self._db.get(Image, image_id)
        assert image is not None  # noqa: S101  (tasks keep their image's row)
        for location in image.active_locations:
            store = self._tools.stores.get(location.store)
            try:
                url = self._tools.vault.open(location.url)
                if store is None or not self._keys.still_names(location, store.identify(url)):
                    continue
            except (LocquotaError, UrlNotReadableError):
                continue
            sha512 = image.os_hash_value if image.os_hash_algo == HASH_ALGORITHM else None
            return Source(location.store, url, image.size or 0, image.checksum, sha512)
        raise CopyError("No location of the image can be read to copy from.")

    def _checked(self, chunks: Iterator[bytes], source: Source) -> Iterator[bytes]:
        """The source's bytes, checked against its size and checksums as they pass; the lease kept alive."""
        md5, sha512, copied = hashlib.md5(usedforsecurity=False), hashlib.new(HASH_ALGORITHM), 0
        for chunk in chunks:
            copied += len(chunk)
            if copied > source.size:
                raise CopyError("The source holds more bytes than the image's size.")
            md5.update(chunk)
            sha512.update(chunk)
            self._keep_alive(copied)
            yield chunk
        if copied != source.size:
            raise CopyError("The source holds fewer bytes than the image's size.")
        if (source.md5 and md5.hexdigest() != source.md5) or (source.sha512 and sha512.hexdigest() != source.sha512):
            raise CopyError("The copied bytes do not match the image's checksum.")

    # -- one copy ------------------------------------------------------------------------------------

    def _copy(
        self, image_id: uuid.UUID, store_name: str, source: Source, expected: tuple[ImageStatus, ...]
    ) -> str | None:
        """Copy the source into one store; None when it landed, else why it failed (nothing kept, nothing charged)."""
        store = self._tools.stores.enabled(store_name)
        if store is None:
            return "The store is no longer configured."
        admitted = self._admit(image_id, store, source, expected)
        if isinstance(admitted, str):
            return admitted
        copy_id, planned = admitted
        try:
            chunks = self._checked(self._tools.stores[source.store].get(source.url, self._tools.chunk_bytes), source)
            url = store.add(planned, chunks, ready=lambda: self._keep_alive(force=True))
            self._land(copy_id, image_id, store, url, source, expected)
        except (LeaseLost, LeftToReaper):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one copy is that store's alone
            self._hand_back(copy_id, image_id)
            return _why(exc)
        return None

    def _admit(
        self, image_id: uuid.UUID, store: Store, source: Source, expected: tuple[ImageStatus, ...]
    ) -> tuple[int, UploadTarget] | str:
        """One unit: the copy's bytes admitted to image_size_total and its names recorded (or why not)."""
        self._hold(self._owner(image_id))
        image = self._image(image_id)
        if image.status not in expected:
            return f"The image became {image.status} during the import."
        limits = self._limits.for_tenant(image.owner)
        per_image = limits[Resource.LOCATIONS_PER_IMAGE]
        if per_image != UNLIMITED and self._live_and_copying(image_id) >= per_image:
            return f"An image may have at most {per_image} locations."
        try:
            UsageLedger(self._db, self._tools.clock).charge(
                image.owner, {Resource.IMAGE_SIZE_TOTAL: source.size}, within=limits
            )
        except QuotaExceeded as exc:
            abort_and_begin(self._tm)
            return exc.message
        planned = store.plan_upload(image_id)
        copy = TaskCopy(
            task_id=self._lease.task_id,
            image_id=image_id,
            store=store.name,
            url=self._tools.vault.seal(planned.url),
            scratch_url=self._tools.vault.seal(planned.scratch_url),
            reserved_bytes=source.size,
            started_at=self._tools.clock.now(),
        )
        self._db.add(copy)
        self._db.flush()
        copy_id = copy.id
        self._commit()
        return copy_id, planned

    def _live_and_copying(self, image_id: uuid.UUID) -> int:
        live = self._db.scalar(
            select(func.count())
            .select_from(Location)
            .where(Location.image_id == image_id, Location.status.in_(LIVE_LOCATION_STATUSES))
        )
        copying = self._db.scalar(select(func.count()).select_from(TaskCopy).where(TaskCopy.image_id == image_id))
        return int(live or 0) + int(copying or 0)

    def _land(
        self,
        copy_id: int,
        image_id: uuid.UUID,
        store: Store,
        url: str,
        source: Source,
        expected: tuple[ImageStatus, ...],
    ) -> None:
        """One unit: the reservation becomes an active location; a glance-direct image becomes active."""
        self._hold(self._owner(image_id))
        copy = self._db.get(TaskCopy, copy_id)
        image = self._image(image_id)
        if copy is None:
            raise LeaseLost
        if image.status not in expected:
            raise CopyError(f"The image became {image.status} during the import.")
        UsageLedger(self._db, self._tools.clock).charge(image.owner, {Resource.IMAGE_SIZE_TOTAL: -copy.reserved_bytes})
        metadata: dict[str, object] = {"store": store.name} if self._tools.multi_store else {}
        self._lifecycle.add(image, url, store.identify(url), store.name, metadata, source.size, limits=None)
        self._db.delete(copy)
        if image.status is ImageStatus.IMPORTING:
            self._lifecycle.set_image_status(image, ImageStatus.ACTIVE)
            image.checksum, image.os_hash_algo, image.os_hash_value = source.md5, HASH_ALGORITHM, source.sha512
        merge_stores(image, IMPORTING_TO, remove=[store.name])
        self._commit()

    def _hand_back(self, copy_id: int, image_id: uuid.UUID) -> None:
        """A failed copy: what is at its names to the scrubber (deleted now), its reservation released."""
        abort_and_begin(self._tm)
        copy = self._db.get(TaskCopy, copy_id)
        if copy is None:
            return
        self._db.expunge(copy)
        try:
            found = find_data(self._tools.stores, self._tools.vault, copy)  # store calls: no transaction needed
        except StoreError as exc:
            raise LeftToReaper from exc
        self._hold(self._owner(image_id))
        copy = self._db.get(TaskCopy, copy_id)
        if copy is None:
            raise LeaseLost
        image = self._image(image_id)
        UsageLedger(self._db, self._tools.clock).charge(image.owner, {Resource.IMAGE_SIZE_TOTAL: -copy.reserved_bytes})
        references = DataReferences(self._db, self._keys)
        retired = [location.id for location in retire_found(self._lifecycle, references, image, copy.store, found)]
        self._db.delete(copy)
        self._commit()
        self._delete_now(retired)

    def _delete_now(self, location_ids: list[int]) -> None:
        if location_ids:
            tools = self._tools
            delete_now(
                self._db, tools.clock, tools.stores, tools.scrub_policy, self._commit, location_ids, vault=tools.vault
            )
            self._commit()

    # -- web-download --------------------------------------------------------------------------------

    def _download(self, image_id: uuid.UUID, uri: str) -> None:
        """Fetch the URL into the staging store and record it as staged (admitted to image_stage_total)."""
        staging = self._tools.stores.staging
        if staging is None:
            raise CopyError("There is no staging area to download into.")
        self._hold(self._owner(image_id))
        image = self._image(image_id)
        if image.status is not ImageStatus.IMPORTING:
            raise CopyError(f"The image became {image.status} during the import.")
        limits = self._limits.for_tenant(image.owner)
        left = UsageLedger(self._db, self._tools.clock).remaining(image.owner, Resource.IMAGE_STAGE_TOTAL, limits)
        most = self._tools.size_cap_bytes if left is None else min(left, self._tools.size_cap_bytes)
        planned = staging.plan_upload(image_id)
        copy = TaskCopy(
            task_id=self._lease.task_id,
            image_id=image_id,
            store=staging.name,
            url=self._tools.vault.seal(planned.url),
            scratch_url=self._tools.vault.seal(planned.scratch_url),
            reserved_bytes=0,
            started_at=self._tools.clock.now(),
        )
        self._db.add(copy)
        self._db.flush()
        copy_id = copy.id
        self._commit()
        md5, sha512, size = hashlib.md5(usedforsecurity=False), hashlib.new(HASH_ALGORITHM), 0

        def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                size += len(chunk)
                md5.update(chunk)
                sha512.update(chunk)
                self._keep_alive(size)
                yield chunk

        try:
            url = staging.add(
                planned, counted(self._tools.download(uri, most)), ready=lambda: self._keep_alive(force=True)
            )
            self._stage(copy_id, image_id, url, size, md5.hexdigest(), sha512.hexdigest())
        except (LeaseLost, LeftToReaper):
            raise
        except Exception as exc:
            self._hand_back(copy_id, image_id)
            raise CopyError(_why(exc)) from exc

    def _stage(self, copy_id: int, image_id: uuid.UUID, url: str, size: int, md5: str, sha512: str) -> None:
        """One unit: the downloaded bytes admitted to image_stage_total and recorded as staged."""
        self._hold(self._owner(image_id))
        copy = self._db.get(TaskCopy, copy_id)
        image = self._image(image_id)
        if copy is None:
            raise LeaseLost
        if image.status is not ImageStatus.IMPORTING:
            raise CopyError(f"The image became {image.status} during the import.")
        limits = self._limits.for_tenant(image.owner)
        UsageLedger(self._db, self._tools.clock).charge(image.owner, {Resource.IMAGE_STAGE_TOTAL: size}, within=limits)
        self._db.add(
            StagedData(
                image_id=image_id,
                store=copy.store,
                url=copy.url,
                size_bytes=size,
                checksum=md5,
                os_hash_value=sha512,
                staged_at=self._tools.clock.now(),
            )
        )
        image.size = size
        self._db.delete(copy)
        self._commit()

    # -- the end -------------------------------------------------------------------------------------

    def _end(self, failed: dict[str, str], error: str | None) -> None:
        """One unit: the task ended (end_import); then the data of retired copies and staging deleted now."""
        abort_and_begin(self._tm)
        owner = self._db.scalar(
            select(Image.owner).join(Task, Task.image_id == Image.id).where(Task.id == self._lease.task_id)
        )
        self._hold(owner or "")
        task = self._lease.hold()
        if task is None:
            raise LeaseLost
        tools = self._tools
        retired = end_import(self._db, self._lifecycle, tools.stores, tools.vault, task, failed, error=error)
        self._commit()
        self._delete_now(retired)


def _why(exc: Exception) -> str:
    """What a failed copy reports: our own errors' messages; a store's or an unexpected error's kind only."""
    if isinstance(exc, CopyError | LocquotaError):
        return str(exc.message if isinstance(exc, LocquotaError) else exc)[:300]
    if isinstance(exc, StoreError):
        return "The store failed while the data was written."
    return f"The copy failed ({type(exc).__name__})."
