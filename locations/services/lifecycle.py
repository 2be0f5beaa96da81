"""The one place that changes a location's status, and derives its image's status from it (SPEC §2).

    data uploaded / location added  -> active
    active          -> deleted          the store confirmed the data is gone (immediate delete)
    active          -> pending_delete   delayed_delete, or an immediate delete that failed
    pending_delete  -> deleted          the scrubber deleted the data
    pending_delete  -> active           an operator restored the image before it was scrubbed

Anything else is refused (409) and changes nothing. Every status change of a location or an image passes
through here, and so does its charge to the owner's usage (quota's ledger), in the same transaction:
a crash leaves both or neither (SPEC section 11).

    location active or pending_delete   image_size_total += its size (an image in two stores counts twice)
    image not deleted or killed         image_count_total += 1
    image saving, uploading, importing  image_count_uploading += 1 (as Glance counts them)
"""

import uuid
from collections.abc import Container, Iterable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from locations.models import (
    DATA_KEY_VERSION,
    LIVE_LOCATION_STATUSES,
    UPLOADING_IMAGE_STATUSES,
    Image,
    ImageStatus,
    Location,
    LocationStatus,
)
from locations.stores.base import DataIdentity
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.errors import InvalidImageStatus, InvalidLocationTransition, LocationLimitExceeded
from metrics.instruments import ADMISSIONS_REFUSED
from quota.models import UNLIMITED, Resource, SpaceState
from quota.services.ledger import UsageLedger
from quota.services.limits import Limits

ALLOWED_TRANSITIONS = frozenset(
    {
        (None, LocationStatus.ACTIVE),
        (LocationStatus.ACTIVE, LocationStatus.DELETED),
        (LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE),
        (LocationStatus.PENDING_DELETE, LocationStatus.DELETED),
        (LocationStatus.PENDING_DELETE, LocationStatus.ACTIVE),
    }
)


UNCOUNTED_IMAGE_STATUSES = (ImageStatus.DELETED, ImageStatus.KILLED)
CHARGED_SPACE = {LocationStatus.ACTIVE: SpaceState.ACTIVE, LocationStatus.PENDING_DELETE: SpaceState.PENDING_DELETE}


def image_counts(status: ImageStatus | None) -> dict[Resource, int]:
    """What one image in this status counts towards (None: no image)."""
    return {
        Resource.IMAGE_COUNT_TOTAL: int(status is not None and status not in UNCOUNTED_IMAGE_STATUSES),
        Resource.IMAGE_COUNT_UPLOADING: int(status in UPLOADING_IMAGE_STATUSES),
    }


def count_changes(source: ImageStatus | None, target: ImageStatus) -> dict[Resource, int]:
    """The change in counts when an image goes from source to target."""
    before, after = image_counts(source), image_counts(target)
    return {resource: after[resource] - before[resource] for resource in after}


def settled_status(status: ImageStatus, location_statuses: Container[LocationStatus]) -> ImageStatus | None:
    """What an image's status becomes once its locations moved; None: it stays.

    A pending_delete image becomes deleted when its last live location is gone; an image whose
    locations were all retired becomes pending_delete, or deleted when none holds data any more. A
    deactivated image stays deactivated: an owner's or admin's decision that location changes never undo.
    """
    if status is ImageStatus.DEACTIVATED:
        return None
    if status in (ImageStatus.PENDING_DELETE, ImageStatus.DELETED):
        pending = LocationStatus.PENDING_DELETE in location_statuses
        return ImageStatus.PENDING_DELETE if pending else ImageStatus.DELETED
    return ImageStatus.ACTIVE if LocationStatus.ACTIVE in location_statuses else None


def check_transition(source: LocationStatus | None, target: LocationStatus) -> None:
    """Raise InvalidLocationTransition (409) unless the DAG allows source -> target."""
    if (source, target) not in ALLOWED_TRANSITIONS:
        raise InvalidLocationTransition(
            f"A location cannot go from {source or 'nothing'} to {target}.", source=str(source), target=str(target)
        )


class LocationLifecycle:
    """Status changes of locations and images, and their charges, in the caller's transaction."""

    def __init__(self, db: Session, clock: Clock, *, vault: UrlVault = PLAINTEXT) -> None:
        self._db, self._clock, self.vault = db, clock, vault
        self._ledger = UsageLedger(db, clock)

    @property
    def clock(self) -> Clock:
        """The clock status changes are stamped with."""
        return self._clock

    def create_image(self, image: Image, limits: Limits) -> None:
        """Charge a new image to its owner; 413 past image_count_total, changing nothing."""
        self._ledger.charge(image.owner, count_changes(None, image.status), within=limits)

    def space_left(self, owner: str, limits: Limits, resource: Resource = Resource.IMAGE_SIZE_TOTAL) -> int | None:
        """Bytes the owner may still store, or stage (None: unlimited); an upload is cut off past it."""
        return self._ledger.remaining(owner, resource, limits)

    def add(
        self,
        image: Image,
        url: str,
        identity: DataIdentity,
        store: str,
        metadata: dict[str, object],
        size_bytes: int | None,
        *,
        limits: Limits | None,
    ) -> Location:
        """A new active location: data that is there to serve, charged (413 past a limit, changing nothing).

        Adding a copy charges the image's size again: it takes that much more space. With limits None
        the charge is not admitted (data that is already there, such as an import's).
        """
        check_transition(None, LocationStatus.ACTIVE)
        per_image = UNLIMITED if limits is None else limits[Resource.LOCATIONS_PER_IMAGE]
        if per_image != UNLIMITED and sum(loc.status in LIVE_LOCATION_STATUSES for loc in image.locations) >= per_image:
            ADMISSIONS_REFUSED.labels(Resource.LOCATIONS_PER_IMAGE.value).inc()
            raise LocationLimitExceeded(f"An image may have at most {per_image} locations.")
        charged = size_bytes or 0
        self._ledger.charge(image.owner, {Resource.IMAGE_SIZE_TOTAL: charged}, within=limits)
        self._ledger.move_space(image.owner, store, None, SpaceState.ACTIVE, charged)
        return self._new_location(image, url, identity, store, metadata, size_bytes)

    def admit_upload(self, owner: str, size_bytes: int, limits: Limits) -> None:
        """An upload's landing starts here: its bytes and the end of saving, admitted in one conditional UPDATE.

        The owner's usage is the first row the landing locks (as every writer locks it first), so the lock
        is held only for the landing's few short writes and its commit; 413 changes nothing.
        """
        deltas = {Resource.IMAGE_SIZE_TOTAL: size_bytes, **count_changes(ImageStatus.SAVING, ImageStatus.ACTIVE)}
        self._ledger.charge(owner, deltas, within=limits)

    def land_upload(
        self,
        image: Image,
        url: str,
        identity: DataIdentity,
        store: str,
        size_bytes: int,
        metadata: dict[str, object] | None = None,
    ) -> Location:
        """An admitted upload's data is in the store: its first location, the bytes in the store's active space."""
        check_transition(None, LocationStatus.ACTIVE)
        self._ledger.move_space(image.owner, store, None, SpaceState.ACTIVE, size_bytes)
        return self._new_location(image, url, identity, store, metadata or {}, size_bytes)

    def _new_location(
        self,
        image: Image,
        url: str,
        identity: DataIdentity,
        store: str,
        metadata: dict[str, object],
        size_bytes: int | None,
    ) -> Location:
        now = self._clock.now()
        # Set from the location's side: the image's list of locations is not loaded just to append to it.
        location = Location(
            image=image,
            url=self.vault.seal(url),  # sealed when keys are configured: plaintext is never written then
            data_key_hash=self.vault.digest(identity.key),  # what it reaches, whatever the spelling (SPEC 6)
            data_key_version=DATA_KEY_VERSION,
            data_inode=identity.inode,
            store=store,
            location_metadata=metadata,
            status=LocationStatus.ACTIVE,
            size_bytes=size_bytes,
            created_at=now,
            updated_at=now,
            attempts=0,
        )
        self._db.add(location)
        return location

    def move(self, location: Location, target: LocationStatus, *, scrub_after: datetime | None = None) -> None:
        """Change one location's status along the DAG; the scrubber's bookkeeping follows the status."""
        check_transition(location.status, target)
        source, owner, charged = location.status, location.image.owner, location.size_bytes or 0
        was_live, is_live = source in LIVE_LOCATION_STATUSES, target in LIVE_LOCATION_STATUSES
        self._ledger.charge(owner, {Resource.IMAGE_SIZE_TOTAL: charged * (is_live - was_live)})
        self._ledger.move_space(owner, location.store, CHARGED_SPACE.get(source), CHARGED_SPACE.get(target), charged)
        now = self._clock.now()
        location.status, location.updated_at = target, now
        location.claimed_by = location.claim_expires_at = None
        if target is LocationStatus.PENDING_DELETE:
            location.pending_since, location.scrub_after = now, scrub_after or now
            location.attempts, location.last_error = 0, None
        elif target is LocationStatus.DELETED:
            location.deleted_at = now
        else:
            location.pending_since = location.scrub_after = location.last_error = None

    def retire(self, location: Location, *, delay: timedelta) -> None:
        """Take a location out of service: pending_delete, to be scrubbed once delay has passed."""
        self.move(location, LocationStatus.PENDING_DELETE, scrub_after=self._clock.now() + delay)

    def settle(self, image: Image) -> None:
        """Derive the image's status from its locations after they moved (see settled_status)."""
        target = settled_status(image.status, {location.status for location in image.locations})
        if target is not None:
            self.set_image_status(image, target)

    def set_image_status(self, image: Image, target: ImageStatus) -> None:
        """Change a loaded (and locked) image's status, and charge the counts it implies."""
        if target is image.status:
            return
        self._ledger.charge(image.owner, count_changes(image.status, target))
        image.status, image.updated_at = target, self._clock.now()

    def change_image_status(
        self,
        image_id: uuid.UUID,
        owner: str,
        source: ImageStatus,
        target: ImageStatus,
        *,
        limits: Limits | None = None,
    ) -> None:
        """A conditional status change: of concurrent requests exactly one moves the image (409 for the others).

        With limits, the counts it adds are admitted (413 past image_count_uploading).
        """
        # The usage row first, as every writer locks it; a refused status change rolls the charge back.
        self._ledger.charge(owner, count_changes(source, target), within=limits)
        moved = self._db.execute(
            update(Image)
            .where(Image.id == image_id, Image.status == source)
            .values(status=target, updated_at=self._clock.now())
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidImageStatus(f"Image status transition from {source} to {target} is not allowed.")

    def lock_owners(self, location_ids: list[int]) -> None:
        """Lock the usage of every tenant owning these locations, in one order (before changing several)."""
        owners = self._db.scalars(
            select(Image.owner).join(Location.image).where(Location.id.in_(location_ids)).distinct()
        )
        self.lock_usage(owners)

    def lock_usage(self, owners: Iterable[str]) -> None:
        """Lock these tenants' usage, in one order: taken before any data key (DataReferences), everywhere."""
        self._ledger.lock(owners)
