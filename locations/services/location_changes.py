"""Adding and removing an image's locations through PATCH, with Glance's rules and locquota's safety rules.

- A URL must name data inside a configured store (400), that exists (400), not already on this image (400).
- Data another tenant's image references cannot be added (403): a tenant could otherwise read, and later
  delete, someone else's data.
- Data whose deletion is in flight cannot be added back (409).
- "This data" is what the store's canonical key names, under any spelling of the URL (data_references).
- At most locations_per_image live locations (413), and the image's size again within the owner's
  image_size_total (413): a copy takes that much more space; the last active location of an active image cannot
  be removed (403, as Glance); removing is admin-only, as in Glance's default policy.
- A removed location is retired like a deleted image's: pending_delete, then scrubbed (now or later).
"""

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.patch_schemas import LocationChange, LocationSpec
from locations.services.data_references import DataKeys, DataReferences
from locations.services.image_policy import image_target
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import ScrubPolicy, delete_now
from locations.stores.base import DataIdentity, StoreError, StoreNotFoundError, StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.errors import (
    DuplicateLocation,
    Forbidden,
    InvalidBody,
    InvalidImageStatus,
    InvalidPatchPath,
    LocationDataMissing,
    LocationInUse,
    LocationPendingDelete,
    NotFound,
    StoreNotEnabled,
    StoreUnavailable,
)
from locquota.identity import Identity
from quota.services.limits import Limits, LimitService

CHANGEABLE_IMAGE_STATUSES = (ImageStatus.QUEUED, ImageStatus.ACTIVE)


class LocationChanges:
    """Applies location changes to one image in the caller's transaction."""

    def __init__(  # noqa: PLR0913 - the URL vault is one collaborator more than the usual eight
        self,
        db: Session,
        stores: StoreRegistry,
        clock: Clock,
        checkpoint: Callable[[], None],
        policy: ScrubPolicy,
        limits: LimitService,
        *,
        delayed_delete: bool,
        scrub_delay: timedelta,
        multi_store: bool = False,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._db, self._stores, self._clock, self._checkpoint = db, stores, clock, checkpoint
        self._multi_store = multi_store  # locations then carry metadata {"store": name}, as Glance's do
        self._policy, self._limits, self._vault = policy, limits, vault
        self._delay = scrub_delay if delayed_delete else None
        self._lifecycle = LocationLifecycle(db, clock, vault=vault)
        self._references = DataReferences(db, DataKeys(stores, vault))

    def apply(self, caller: Identity, image: Image, changes: list[LocationChange]) -> None:
        """Apply every change or none; data of removed locations is deleted last (after a commit)."""
        if changes and image.status not in CHANGEABLE_IMAGE_STATUSES:
            raise InvalidImageStatus(f"Locations of a {image.status} image cannot be changed.")
        retired: list[Location] = []
        limits = self._limits.for_tenant(image.owner)  # the owner is charged, also when an admin adds
        for change in changes:
            active = image.active_locations
            if change.op == "add":
                if change.index is not None and change.index > len(active):
                    raise InvalidPatchPath("The location index is past the end of the list.")
                self._add(image, change.locations[0], limits)
            elif change.op == "remove":
                if change.index is None or change.index >= len(active):
                    raise InvalidPatchPath("No location at this index.")
                retired.append(self._remove(caller, image, active[change.index]))
            else:
                retired += self._replace(caller, image, change.locations, limits)
        self._db.flush()
        if retired and self._delay is None:
            ids = [location.id for location in retired]
            delete_now(self._db, self._clock, self._stores, self._policy, self._checkpoint, ids, vault=self._vault)

    def check_store_enabled(self, store_name: str) -> None:
        """409 unless the store is configured here."""
        if self._stores.get(store_name) is None:
            raise StoreNotEnabled("The store is not enabled here.", store=store_name[:64])

    def remove_from_store(self, image: Image, store_name: str) -> None:
        """Retire the image's active locations in one store (the caller may: delete_image_location, checked).

        Glance's rules: only an active image (409), never its only location (403: an image keeps data
        somewhere), 404 if it has none in that store. Retired as a removed location is: pending_delete,
        charged until scrubbed, or deleted at once without delayed delete.
        """
        if image.status is not ImageStatus.ACTIVE:
            raise InvalidImageStatus("Data can only be removed from a store of an active image.")
        active = image.active_locations
        if len(active) == 1:
            raise Forbidden("Cannot delete image data from the only store containing it.")
        in_store = [location for location in active if location.store == store_name]
        if not in_store:
            raise NotFound("The image has no data in this store.")
        if len(in_store) == len(active):
            raise Forbidden("Cannot delete image data from the only store containing it.")
        for location in in_store:
            self._lifecycle.retire(location, delay=self._delay or timedelta(0))
        image.updated_at = self._clock.now()
        self._db.flush()
        if self._delay is None:
            ids = [location.id for location in in_store]
            delete_now(self._db, self._clock, self._stores, self._policy, self._checkpoint, ids, vault=self._vault)

    def _replace(
        self, caller: Identity, image: Image, wanted: tuple[LocationSpec, ...], limits: Limits
    ) -> list[Location]:
        keys = self._references.keys
        wanted_keys = {keys.identify(spec.url).key: spec for spec in wanted}  # 400 for any unusable URL first
        # By id: a location whose URL cannot be opened or identified (tampered) is not wanted, so it is retired.
        current = {location.id: self._key_of(location) for location in image.active_locations}
        for key, spec in wanted_keys.items():
            if key not in current.values():
                self._add(image, spec, limits)
        return [
            self._remove(caller, image, location)
            for location in image.active_locations
            if location.id in current and current[location.id] not in wanted_keys
        ]

    def _metadata(self, spec: LocationSpec, store: str) -> dict[str, object]:
        """The location's metadata; with several stores it names the store its URL is in (400 if it names another)."""
        if not self._multi_store:
            return spec.metadata
        named = spec.metadata.get("store", store)
        if named != store:
            raise InvalidBody(f"The location's metadata names store {str(named)[:64]!r}, but its URL is in {store!r}.")
        return {**spec.metadata, "store": store}

    def _key_of(self, location: Location) -> str | None:
        opened = self._references.keys.opened(location.url, location.store)
        return None if opened is None else opened[1].key

    def _add(self, image: Image, spec: LocationSpec, limits: Limits) -> None:
        store = self._stores.for_url(spec.url)
        identity = store.identify(spec.url)
        self._check_data_is_free(image, identity, spec.url)
        try:
            size = store.get_size(spec.url)
        except StoreNotFoundError as exc:
            raise LocationDataMissing("No data at this location.") from exc
        except StoreError as exc:
            raise StoreUnavailable("The location's store cannot be reached; try again later.") from exc
        charged = image.size if image.size is not None else size
        self._lifecycle.add(
            image, spec.url, identity, store.name, self._metadata(spec, store.name), charged, limits=limits
        )
        if image.status is ImageStatus.QUEUED:
            # Glance: a queued image given a location becomes active, sized by its data.
            image.size = size
            self._lifecycle.set_image_status(image, ImageStatus.ACTIVE)
        image.updated_at = self._clock.now()

    def _check_data_is_free(self, image: Image, identity: DataIdentity, url: str) -> None:
        """400 if the image has it already, 403 if another tenant's image references it, 409 if being deleted.

        The references stay locked until the commit: a concurrent add of the same data waits for this one.
        """
        now = self._clock.now()
        self._lifecycle.lock_usage([image.owner])  # usage before data keys, as every writer locks them
        references = self._references.find(identity, url=url, lock=True)
        if any(reference.owner != image.owner for reference in references):
            raise LocationInUse("Another project's image references this data.")
        for reference in references:
            if reference.image_id == image.id and reference.status is LocationStatus.ACTIVE:
                raise DuplicateLocation("The image already has this location.")
            claimed = reference.claim_expires_at is not None and reference.claim_expires_at > now
            if reference.status is LocationStatus.PENDING_DELETE and claimed:
                raise LocationPendingDelete("This data is being deleted; it cannot be added back now.")

    def _remove(self, caller: Identity, image: Image, location: Location) -> Location:
        if not caller.may("delete_image_location", image_target(image.owner, image.visibility)):
            raise Forbidden("Policy does not allow delete_image_location: removing a location needs the admin role.")
        if image.status is ImageStatus.ACTIVE and len(image.active_locations) == 1:
            raise Forbidden("Cannot remove last location in the image.")
        self._lifecycle.retire(location, delay=self._delay or timedelta(0))
        image.updated_at = self._clock.now()
        return location
