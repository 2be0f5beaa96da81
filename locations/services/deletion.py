"""Deleting images (immediately or delayed) and restoring them, through the location lifecycle."""

import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from locations.models import Image, ImageMember, ImageStatus, Location, LocationStatus
from locations.services.data_references import DataKeys, DataReferences
from locations.services.image_import.staging import release_staged
from locations.services.images import ImageService
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import ScrubPolicy, delete_now
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.errors import ImageNotFound, ImageProtected, InvalidImageStatus, LocationInUse, ScrubInProgress
from locquota.identity import Identity


class DeletionService:
    """Image deletion as Glance's delayed_delete describes it, and the operator's restore."""

    def __init__(  # noqa: PLR0913 - the URL vault is one collaborator more than the usual eight
        self,
        db: Session,
        images: ImageService,
        stores: StoreRegistry,
        clock: Clock,
        checkpoint: Callable[[], None],
        policy: ScrubPolicy,
        *,
        delayed_delete: bool,
        scrub_delay: timedelta,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._db, self._images, self._stores, self._clock = db, images, stores, clock
        self._vault = vault
        self._checkpoint, self._policy = checkpoint, policy
        self._delayed, self._scrub_delay = delayed_delete, scrub_delay
        self._lifecycle = LocationLifecycle(db, clock, vault=vault)
        self._references = DataReferences(db, DataKeys(stores, vault))

    def delete_image(self, caller: Identity, image_id: uuid.UUID) -> None:
        """Retire every active location; with delayed_delete the scrubber deletes the data later.

        Without it the data goes now, but pending_delete is committed first: a crash or a store error
        leaves the location pending_delete for the scrubber, so data is never leaked or lost track of.
        """
        image = self._images.get(caller, image_id, "delete_image", for_update=True, with_details=False)
        if image.protected:
            raise ImageProtected("Image is protected and cannot be deleted.")
        live = image.active_locations
        delay = self._scrub_delay if self._delayed else timedelta(0)
        for location in live:
            self._lifecycle.retire(location, delay=delay)
        # Staged data cannot be restored: it leaves staging now, whatever delayed_delete says.
        staging = release_staged(self._db, self._lifecycle, self._stores, self._vault, image)
        self._lifecycle.set_image_status(image, ImageStatus.PENDING_DELETE if live else ImageStatus.DELETED)
        image.updated_at = self._clock.now()
        # As Glance: the memberships go with the image (a restore brings it back unshared), so members'
        # lists never walk past memberships of images that are gone.
        self._db.execute(delete(ImageMember).where(ImageMember.image_id == image.id))
        self._db.flush()
        ids = [location.id for location in (staging if self._delayed else [*live, *staging])]
        if ids:
            delete_now(self._db, self._clock, self._stores, self._policy, self._checkpoint, ids, vault=self._vault)

    def restore(self, image_id: uuid.UUID) -> Image:
        """Return a pending_delete image and its pending_delete locations to active (operators only).

        409 if a scrubber holds a live claim on any of them: its data may be going away right now.
        """
        now = self._clock.now()
        # Write first: on SQLite this takes the write lock, so no scrubber can claim between our read and write.
        touched = self._db.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == ImageStatus.PENDING_DELETE)
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if touched.rowcount != 1:  # type: ignore[attr-defined]
            if self._db.scalar(select(Image.id).where(Image.id == image_id)) is None:
                raise ImageNotFound("No image found with this id.")
            raise InvalidImageStatus("Only a pending_delete image can be restored.")
        image = self._db.scalars(select(Image).where(Image.id == image_id).with_for_update()).one()
        # Locked, and read after any claim in flight commits (PostgreSQL re-reads a row it waited for):
        # a claim taken just before us is seen here, and none can be taken until we commit.
        pending = self._db.scalars(
            select(Location)
            .where(Location.image_id == image_id, Location.status == LocationStatus.PENDING_DELETE)
            .with_for_update()
        ).all()
        if any(location.claim_expires_at is not None and location.claim_expires_at > now for location in pending):
            raise ScrubInProgress("The scrubber is deleting this image's data; it cannot be restored.")
        if not pending:
            raise InvalidImageStatus("No data of this image is left to restore.")
        self._lifecycle.lock_usage([image.owner])  # usage before data keys, as every writer locks them
        for location in pending:
            # Only data from before canonical keys can be another tenant's too: it is not handed back to anyone.
            others = self._references.find_for(location, lock=True) or []
            if any(reference.owner != image.owner for reference in others):
                raise LocationInUse("Another project's image references this image's data; it cannot be restored.")
        for location in pending:
            self._lifecycle.move(location, LocationStatus.ACTIVE)
        self._lifecycle.set_image_status(image, ImageStatus.ACTIVE)
        self._db.flush()
        return image
