"""Staging: PUT /v2/images/{id}/stage, and the end of staged data.

Staged bytes are received exactly as an upload's are (an upload lease, the same hand-over on any
failure), into the staging store, and charged to image_stage_total, admitted exactly when they are
durable. The image is `uploading` meanwhile and after, until its glance-direct import. Staged data
leaves only one way, `release_staged`: its charge released and its bytes handed to the scrubber as a
pending_delete location of the staging store, in the same transaction, so none is ever left behind
(after an import, a failed import, or the image's deletion).
"""

import uuid
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, StagedData
from locations.services.data_references import DataKeys, DataReferences
from locations.services.images import ImageService
from locations.services.lifecycle import LocationLifecycle
from locations.services.upload import ImageDataService, Landed, Receipt
from locations.services.upload_leases import FoundData, retire_found
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import UrlNotReadableError, UrlVault
from locquota.errors import InvalidImageStatus, LocquotaError, NotFound
from locquota.identity import Identity
from quota.models import Resource
from quota.services.ledger import UsageLedger


class StagingService:
    """The stage request."""

    def __init__(
        self, db: Session, images: ImageService, data: ImageDataService, stores: StoreRegistry, clock: Clock
    ) -> None:
        self._db, self._images, self._data, self._stores, self._clock = db, images, data, stores, clock

    def stage(self, caller: Identity, image_id: uuid.UUID, body: BinaryIO, content_length: int | None) -> Image:
        """Stream body into the staging area; the image ends uploading (staged), or back in queued."""
        staging = self._stores.staging
        if staging is None:
            raise NotFound("No resource at this URL.")  # as Glance answers without a staging area
        image = self._images.get(caller, image_id, "modify_image", with_details=False)  # Glance's rule for stage
        if image.status is not ImageStatus.QUEUED:
            raise InvalidImageStatus(f"Image status transition from {image.status} to uploading is not allowed.")
        receipt = Receipt(ImageStatus.UPLOADING, Resource.IMAGE_STAGE_TOTAL, self._record)
        return self._data.receive(image, body, content_length, staging, receipt)

    def _record(self, landed: Landed) -> Image:
        """The staged bytes recorded and admitted to image_stage_total; the image stays uploading."""
        size = landed.reader.size
        ledger = UsageLedger(self._db, self._clock)
        ledger.charge(landed.owner, {Resource.IMAGE_STAGE_TOTAL: size}, within=landed.limits)  # the first lock taken
        image = self._data.hold_landing(landed, ImageStatus.UPLOADING, size=size)
        self._db.add(
            StagedData(
                image_id=image.id,
                store=landed.store,
                url=self._data.vault.seal(landed.url),
                size_bytes=size,
                checksum=landed.reader.md5.hexdigest(),
                os_hash_value=landed.reader.digest.hexdigest(),
                staged_at=self._clock.now(),
            )
        )
        self._db.flush()
        return image


def staged_of(db: Session, image_id: uuid.UUID, *, lock: bool = False) -> StagedData | None:
    """The image's staged data, if any."""
    query = select(StagedData).where(StagedData.image_id == image_id)
    return db.scalar(query.with_for_update() if lock else query)


def release_staged(
    db: Session, lifecycle: LocationLifecycle, stores: StoreRegistry, vault: UrlVault, image: Image
) -> list[Location]:
    """The image's staged data leaves staging: charge released, bytes to the scrubber (due now).

    The caller has locked the owner's usage. Returns the pending_delete locations to delete at once.
    """
    staged = staged_of(db, image.id, lock=True)
    if staged is None:
        return []
    UsageLedger(db, lifecycle.clock).charge(image.owner, {Resource.IMAGE_STAGE_TOTAL: -staged.size_bytes})
    db.delete(staged)
    store = stores.get(staged.store)
    if store is None:
        return []  # staging turned off since: `locquota audit` reports what is left in that directory
    try:
        url = vault.open(staged.url)
        found = [FoundData(url, store.identify(url), staged.size_bytes)]
    except (LocquotaError, UrlNotReadableError):
        return []
    references = DataReferences(db, DataKeys(stores, vault))
    return retire_found(lifecycle, references, image, staged.store, found)
