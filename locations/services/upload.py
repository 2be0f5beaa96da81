"""Image data in and out: a streamed upload into the default store, and a streamed download.

An upload spans three units of work: queued -> saving is committed with the upload's lease and the names
the store will write at, before the bytes arrive (so other requests see the upload in progress, and a
crash leaves a record of where to clean up); the bytes stream into the store outside any transaction,
the lease renewed while they flow; the last unit records the location and activates the image, if the
lease is still this request's. The request's transaction manager is handed over for it: each unit is
committed (or, when the last one fails, aborted) and the next begun.

Quota: starting counts towards image_count_uploading; the body is cut off as soon as it passes what is
left of image_size_total (the store deletes the partial data); the last unit admits the size exactly,
since concurrent requests may have used the space meanwhile. A refused upload leaves the image queued
and its data on the pending_delete path (upload_leases.hand_over). An upload that dies (a killed
worker, a database outage) leaves its lease to run out: the reaper then does the same.
"""

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session, lazyload
from transaction import TransactionManager

from locations.models import Image, ImageStatus, Location, Upload
from locations.services.data_references import DataKeys, DataReferences
from locations.services.images import ImageService
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import ScrubPolicy, delete_now
from locations.services.upload_leases import FoundData, UploadLease, find_data, hand_over
from locations.stores.base import Store, StoreDuplicateError, StoreError, StoreFullError, StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlNotReadableError, UrlVault
from locquota.db import abort_and_begin, commit_and_begin
from locquota.errors import (
    Forbidden,
    ImageConflict,
    ImageTooLarge,
    IncompleteUpload,
    InvalidBody,
    InvalidImageStatus,
    LocationDataChanged,
    LocquotaError,
    QuotaExceeded,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    UploadInterrupted,
)
from locquota.identity import Identity
from locquota.leases import LeaseTerms
from locquota.write_conflicts import run_and_commit
from metrics.instruments import ADMISSIONS_REFUSED, IDENTITY_MISMATCHES, LOCATION_DECRYPT_ERRORS
from quota.models import Resource
from quota.services.limits import Limits, LimitService

HASH_ALGORITHM = "sha512"
log = logging.getLogger(__name__)


def quota_refusal(
    size_bytes: int, remaining_bytes: int, resource: Resource = Resource.IMAGE_SIZE_TOTAL
) -> QuotaExceeded:
    """The 413 for an upload larger than what is left of its resource (counted as a refused admission)."""
    ADMISSIONS_REFUSED.labels(resource.value).inc()
    return QuotaExceeded(
        f"Quota exceeded for {resource.value}: the upload needs more than the {remaining_bytes} bytes left.",
        resource=resource.value,
        remaining=remaining_bytes,
        requested=size_bytes,
        unit="bytes",
    )


class HashingReader:
    """Reads the body in fixed-size chunks, counting and hashing as it goes; stops past the cap or the quota."""

    def __init__(
        self,
        body: BinaryIO,
        expected_bytes: int | None,
        cap_bytes: int,
        chunk_bytes: int,
        quota_bytes: int | None,
        keep_alive: Callable[[], None] = lambda: None,
        *,
        resource: Resource = Resource.IMAGE_SIZE_TOTAL,
    ) -> None:
        self._body, self._expected, self._cap, self._chunk = body, expected_bytes, cap_bytes, chunk_bytes
        self._quota, self._keep_alive, self._resource = quota_bytes, keep_alive, resource
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.digest = hashlib.new(HASH_ALGORITHM)

    def chunks(self) -> Iterator[bytes]:
        """Yield the body; raise before yielding any byte past the cap, or on a short body."""
        while chunk := self._read():
            self.size += len(chunk)
            if self.size > self._cap:
                raise ImageTooLarge(f"The image is larger than the {self._cap}-byte limit.")
            if self._quota is not None and self.size > self._quota:
                raise quota_refusal(self.size, self._quota, self._resource)
            self.md5.update(chunk)
            self.digest.update(chunk)
            self._keep_alive()  # bytes are flowing: the upload's lease must not run out under it
            yield chunk
        if self._expected is not None and self.size != self._expected:
            raise IncompleteUpload("The body ended before Content-Length bytes arrived.")

    def _read(self) -> bytes:
        try:
            return self._body.read(self._chunk)
        except OSError as exc:  # WebOb's DisconnectionError and socket errors alike
            raise IncompleteUpload("The client disconnected during the upload.") from exc


@dataclass(frozen=True, slots=True)
class Landed:
    """Data an upload put in its store, durable, not yet recorded: what the last unit of work records."""

    lease: UploadLease
    image_id: uuid.UUID
    owner: str
    store: str
    url: str
    reader: HashingReader
    limits: Limits


@dataclass(frozen=True, slots=True)
class Receipt:
    """What receiving data means for one kind of request.

    The image's status meanwhile, the resource its bytes count towards, and the last unit of work (an
    upload lands a location; staging records staged data).
    """

    status: ImageStatus
    resource: Resource
    land: Callable[[Landed], Image]
    kill_on_store_failure: bool = False  # an upload's image is killed when its store breaks; staging's is not


class ImageDataService:
    """Uploads and downloads of image data."""

    def __init__(  # noqa: PLR0913 - the URL vault and the two leases' terms are collaborators too
        self,
        db: Session,
        images: ImageService,
        stores: StoreRegistry,
        clock: Clock,
        transactions: TransactionManager,
        limits: LimitService,
        *,
        chunk_bytes: int,
        size_cap_bytes: int,
        lease: LeaseTerms,
        scrub_policy: ScrubPolicy,
        multi_store: bool = False,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._db, self._images, self._stores, self._clock = db, images, stores, clock
        self._transactions, self._limits, self._vault = transactions, limits, vault
        self._chunk_bytes, self._cap, self._lease, self._scrub_policy = chunk_bytes, size_cap_bytes, lease, scrub_policy
        self._lifecycle = LocationLifecycle(db, clock, vault=vault)
        self._keys = DataKeys(stores, vault)
        self._multi_store = multi_store  # locations then carry metadata {"store": name}, as Glance's do

    @property
    def vault(self) -> UrlVault:
        """How names of stored data are sealed at rest."""
        return self._vault

    def _checkpoint(self) -> None:
        commit_and_begin(self._transactions)

    def upload(
        self,
        caller: Identity,
        image_id: uuid.UUID,
        body: BinaryIO,
        content_length: int | None,
        *,
        store: str | None = None,
    ) -> Image:
        """Stream body into the store named (the default if None); the image ends active, or queued/killed."""
        image = self._images.get(caller, image_id, "upload_image", with_details=False)
        if image.status is not ImageStatus.QUEUED:
            raise InvalidImageStatus(f"Image status transition from {image.status} to saving is not allowed.")
        if not image.disk_format or not image.container_format:
            raise InvalidBody("Properties disk_format and container_format must be set prior to saving data.")
        target_store = self._stores.default if store is None else self._stores[store]
        if target_store.is_read_only:
            raise StoreReadOnly(f"Store {target_store.name!r} is read-only: data cannot be uploaded to it.")
        receipt = Receipt(ImageStatus.SAVING, Resource.IMAGE_SIZE_TOTAL, self._activate, kill_on_store_failure=True)
        return self.receive(image, body, content_length, target_store, receipt)

    def receive(
        self, image: Image, body: BinaryIO, content_length: int | None, target_store: Store, receipt: "Receipt"
    ) -> Image:
        """Stream body into target_store under an upload lease, then land it as receipt says (or hand it back)."""
        image_id = image.id
        if content_length is not None and content_length > self._cap:
            raise ImageTooLarge(f"The image is larger than the {self._cap}-byte limit.")
        owner, limits = image.owner, self._limits.for_tenant(image.owner)
        remaining = self._lifecycle.space_left(owner, limits, receipt.resource)
        if remaining is not None and content_length is not None and content_length > remaining:
            raise quota_refusal(content_length, remaining, receipt.resource)
        target = target_store.plan_upload(image_id)
        lease = UploadLease(self._db, self._clock, self._lease, self._vault, image_id)

        def start() -> None:
            self._lifecycle.change_image_status(image_id, owner, ImageStatus.QUEUED, receipt.status, limits=limits)
            lease.take(target_store.name, target)

        run_and_commit(self._transactions, start)  # no byte read yet: a write conflict runs the unit again
        reader = HashingReader(
            body,
            content_length,
            self._cap,
            self._chunk_bytes,
            remaining,
            lambda: lease.keep_alive(self._checkpoint),
            resource=receipt.resource,
        )
        try:
            # Checked once more when the bytes are durable, just before they are put in place (renewed if half
            # spent, so at least half is left): data is never linked under a lease the reaper may take over.
            ready = lambda: lease.keep_alive(self._checkpoint)  # noqa: E731 - named for the comment
            url = target_store.add(target, reader.chunks(), ready=ready)
        except Exception as exc:
            broken = isinstance(exc, StoreError) and not isinstance(exc, StoreDuplicateError)
            if broken and self._may_have_left_data(lease):
                # The store failed, and so may have its own clean-up (a store that went down mid-write): what
                # is at the upload's names goes to the scrubber; while the store does not answer, the lease
                # runs out and the reaper does it.
                self._give_back(lease, owner)
            else:  # the store cleaned up: nothing is stored. Give the image back (or kill it), if still ours.
                ending = ImageStatus.KILLED if broken and receipt.kill_on_store_failure else ImageStatus.QUEUED
                self._end_without_data(lease, owner, receipt.status, ending)
            if isinstance(exc, StoreDuplicateError):
                raise ImageConflict("Data is already stored under this image's name in the store.") from exc
            if isinstance(exc, StoreFullError):
                raise StoreFull("The store has no space left for this image.") from exc
            if isinstance(exc, StoreError):
                raise StoreUnavailable("The store failed while writing the image data.") from exc
            raise
        try:
            landed = Landed(lease, image_id, owner, target_store.name, url, reader, limits)
            # Committed here, not by the request: the bytes cannot be read again, but this unit can run again.
            return run_and_commit(self._transactions, lambda: receipt.land(landed))
        except Exception:
            # Refused (concurrent requests used the space while the bytes streamed) or failed: nothing of
            # this unit stays; the image goes back to queued and its data to the scrubber, not stranded.
            self._give_back(lease, owner)
            raise

    def _may_have_left_data(self, lease: UploadLease) -> bool:
        """Whether the store holds something at the upload's names, or cannot say (store calls, no transaction).

        A database or store that cannot answer now means "may have": _give_back then copes, or the lease runs out.
        """
        try:
            abort_and_begin(self._transactions)
            upload = self._db.get(Upload, lease.image_id)
            if upload is None or upload.holder != lease.holder:
                return False  # taken over: the reaper looks
            return bool(find_data(self._stores, self._vault, upload))
        except Exception:  # noqa: BLE001 - a clean-up's question: it must never hide why the upload failed
            return True

    def _end_without_data(self, lease: UploadLease, owner: str, during: ImageStatus, status: ImageStatus) -> None:
        """The image from during (saving) to status and the lease ended, if still held (else the reaper does it)."""
        abort_and_begin(self._transactions)  # a renewal may have failed half-way through its unit

        def end() -> None:
            self._lifecycle.lock_usage([owner])
            upload = lease.hold()
            if upload is None:
                return  # taken over: the reaper ends it
            image = self._db.scalars(select(Image).where(Image.id == lease.image_id).with_for_update()).one()
            if image.status is during:  # else deleted meanwhile: it stays so
                self._lifecycle.set_image_status(image, status)
            self._db.delete(upload)

        try:
            run_and_commit(self._transactions, end)
        except Exception:  # a clean-up: it must never hide why the upload failed (the lease is the backstop)
            log.exception("image %s: the failed upload could not be ended now; its lease will run out", lease.image_id)
            abort_and_begin(self._transactions)

    def _reaches_its_data(self, location: Location, store: Store, url: str) -> bool:
        """Whether the URL still reaches the data it was keyed for.

        A symlink swapped since (to another file, or out of the root) makes it reach something else,
        which is never served.
        """
        try:
            identity = store.identify(url)
        except LocquotaError:
            identity = None
        if identity is not None and self._keys.still_names(location, identity):
            return True
        IDENTITY_MISMATCHES.labels("download").inc()
        log.error("location %s: its URL reaches other data than when it was added; not served", location.id)
        return False

    def _activate(self, landed: "Landed") -> Image:
        """The image active with the upload's first location: admitted first, so a refusal finds nothing written."""
        store_name, url, reader = landed.store, landed.url, landed.reader
        identity = self._stores[store_name].identify(url)  # a store call: before the unit locks anything
        self._lifecycle.admit_upload(landed.owner, reader.size, landed.limits)
        image = self.hold_landing(
            landed,
            ImageStatus.SAVING,
            status=ImageStatus.ACTIVE,
            size=reader.size,
            checksum=reader.md5.hexdigest(),
            os_hash_algo=HASH_ALGORITHM,
            os_hash_value=reader.digest.hexdigest(),
        )
        metadata: dict[str, object] = {"store": store_name} if self._multi_store else {}
        self._lifecycle.land_upload(image, url, identity, store_name, reader.size, metadata)
        self._db.flush()
        return image

    def hold_landing(self, landed: "Landed", during: ImageStatus, **changes: object) -> Image:
        """The last unit, once admitted: the lease ended if still ours, the image changed if still `during`.

        Two guarded writes, no reads: the upload's row deleted only by its holder, the image updated only
        in the status it had (RETURNING gives it back). Either refused means the upload was ended or the
        image deleted meanwhile; raising then rolls the admission back with them.
        """
        if not landed.lease.end():
            # Only a process frozen longer than the lease between its last renewal and here gets this far:
            # the reaper may not have seen this data. `locquota audit` finds it as an orphan.
            log.error("image %s: lease taken over after its data was stored in %s", landed.image_id, landed.store)
            raise UploadInterrupted("The upload stalled past its lease and was ended; upload the data again.")
        guarded = (
            update(Image)
            .where(Image.id == landed.image_id, Image.status == during)
            .values(updated_at=self._clock.now(), **changes)
        )
        loading = (lazyload(Image.properties), lazyload(Image.tags))  # the landing touches neither
        if self._db.get_bind().dialect.update_returning:
            image = self._db.scalar(
                guarded.returning(Image).options(*loading).execution_options(populate_existing=True)
            )
        else:  # MariaDB has no UPDATE ... RETURNING: read the row back, which this transaction now holds locked
            changed = self._db.execute(guarded.execution_options(synchronize_session=False)).rowcount == 1
            reread = select(Image).where(Image.id == landed.image_id).options(*loading)
            image = self._db.scalar(reread.execution_options(populate_existing=True)) if changed else None
        if image is None:  # deleted while its data streamed in
            status = self._db.scalar(select(Image.status).where(Image.id == landed.image_id))
            raise InvalidImageStatus(f"Image status transition from {status} to active is not allowed.")
        return image

    def _give_back(self, lease: UploadLease, owner: str) -> None:
        """The image back to queued and its stored data handed to the scrubber, then deleted at once.

        A failure here is logged, not raised: the lease then runs out and the reaper does the same.
        """
        abort_and_begin(self._transactions)
        try:
            upload = self._db.get(Upload, lease.image_id)
            if upload is None or upload.holder != lease.holder:
                return  # taken over: the reaper hands the data over
            found = find_data(self._stores, self._vault, upload)
            retired = run_and_commit(self._transactions, lambda: self._hand_back(lease, owner, found))
        except Exception:  # as above
            log.exception("image %s: a failed upload could not be ended now; its lease will run out", lease.image_id)
            abort_and_begin(self._transactions)
            return
        if not retired:
            return
        try:  # as an immediate delete does: pending_delete is committed, now the data goes
            delete_now(
                self._db, self._clock, self._stores, self._scrub_policy, self._checkpoint, retired, vault=self._vault
            )
            self._checkpoint()
        except Exception:  # the image is queued again and its data pending_delete: the scrubber deletes it
            log.warning("image %s: the failed upload's data is left to the scrubber", lease.image_id, exc_info=True)
            abort_and_begin(self._transactions)

    def _hand_back(self, lease: UploadLease, owner: str, found: list[FoundData]) -> list[int]:
        """The unit of _give_back: the image back to queued, its data pending_delete (none if the lease is gone)."""
        self._lifecycle.lock_usage([owner])
        upload = lease.hold()
        if upload is None:
            return []
        image = self._db.scalars(select(Image).where(Image.id == lease.image_id).with_for_update()).one()
        references = DataReferences(self._db, self._keys)
        retired = hand_over(self._db, self._lifecycle, references, upload, image, found)
        self._db.flush()
        return [location.id for location in retired]

    def open(self, caller: Identity, image_id: uuid.UUID) -> tuple[Image, Iterator[bytes] | None]:
        """The image and a stream of its data from the first readable active location (None: no data).

        Each location is read only through its own store, and only if its URL still reaches the data it was
        keyed for when added: a symlink swapped since then leaks nothing (it is skipped and counted).
        """
        image = self._images.get(caller, image_id, "download_image", with_details=False)
        if image.status is ImageStatus.DEACTIVATED and not caller.is_admin:
            raise Forbidden("The requested image has been deactivated. Image data download is prohibited.")
        locations, changed = image.active_locations, False
        for location in locations:
            try:
                url = self._vault.open(location.url)
            except UrlNotReadableError:
                LOCATION_DECRYPT_ERRORS.labels("download").inc()
                log.error("location %s: its sealed URL cannot be opened; trying the next one", location.id)
                continue
            store = self._stores.get(location.store)
            if store is None:
                continue
            if not self._reaches_its_data(location, store, url):
                changed = True
                continue
            try:
                return image, store.get(url, self._chunk_bytes)
            except (StoreError, LocquotaError):
                continue
        if changed:
            raise LocationDataChanged("The image's data changed in its store since it was added; it is not served.")
        if locations:
            raise StoreUnavailable("No store could serve the image data.")
        return image, None
