"""Glance's v2.17 locations API: POST and GET /v2/images/{id}/locations.

What Nova and Cinder call since OSSN-0065/0090 instead of PATCHing locations. A location is added to a
queued image only. Its data is read once through its store before anything is locked, hashed as an upload
is (md5 checksum, sha512 os_hash_value) and checked against the caller's validation_data; then, in one short
transaction, the location is charged and admitted as any added location is (LocationChanges) and the image
becomes active with its size and hashes. Glance does the hashing in a background task and answers 202 first;
locquota answers 202 when it is done, so a hash that does not match is a 400 that changed nothing rather than
a task that failed later.
"""

import hashlib
import uuid
from dataclasses import dataclass

from locations.location_api_schema import NewLocation
from locations.models import ImageStatus
from locations.patch_schemas import LocationChange, LocationSpec
from locations.services.catalog import ImageView
from locations.services.image_policy import authorize_image, image_target
from locations.services.images import ImageService
from locations.services.location_changes import LocationChanges
from locations.stores.base import Store, StoreError, StoreNotFoundError, StoreRegistry
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.errors import (
    Forbidden,
    InvalidBody,
    InvalidImageStatus,
    LocationDataChanged,
    LocationDataMissing,
    StoreUnavailable,
)
from locquota.identity import Identity

CHECKSUM_ALGORITHM, HASH_ALGORITHM = "md5", "sha512"  # as uploads set them


@dataclass(frozen=True, slots=True)
class Digests:
    """What reading the data found: its size, and its digest under each algorithm asked for."""

    size: int
    hexdigests: dict[str, str]


class LocationApi:
    """Add and list locations the v2.17 way."""

    def __init__(
        self,
        images: ImageService,
        locations: LocationChanges,
        stores: StoreRegistry,
        chunk_bytes: int,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._images, self._locations, self._stores = images, locations, stores
        self._chunk_bytes, self._vault = chunk_bytes, vault

    def list(self, caller: Identity, image_id: uuid.UUID) -> list[dict[str, object]]:
        """The image's active locations, URL and metadata (rule fetch_image_location: service or admin)."""
        image = self._images.get(caller, image_id, "fetch_image_location", with_details=False)
        view = ImageView.from_record(image, self._vault)
        return [{"url": url, "metadata": metadata} for url, metadata in view.locations]

    def add(self, caller: Identity, image_id: uuid.UUID, new: NewLocation) -> None:
        """Read and hash the data, then add the location and activate the image (Glance's order of refusals)."""
        image = self._images.get(caller, image_id, "get_image", with_details=False)
        self._check(caller, image.status, image.owner, image.visibility)
        store = self._stores.for_url(new.url)
        if not store.is_read_only and not caller.may("locquota:location:any_store"):
            raise Forbidden("Without the service role, locations may only be added in an http store.")
        digests = self._read(store, new)
        image = self._images.get(caller, image_id, "get_image", for_update=True)
        self._check(caller, image.status, image.owner, image.visibility)  # again, under the lock
        change = LocationChange(op="add", index=None, locations=(LocationSpec(new.url, {}),))
        self._locations.apply(caller, image, [change])
        if image.size != digests.size:
            raise LocationDataChanged("The location's data changed while it was being read; try again.")
        image.checksum = digests.hexdigests[CHECKSUM_ALGORITHM]
        image.os_hash_algo, image.os_hash_value = HASH_ALGORITHM, digests.hexdigests[HASH_ALGORITHM]

    @staticmethod
    def _check(caller: Identity, status: ImageStatus, owner: str, visibility: object) -> None:
        if status is not ImageStatus.QUEUED:
            raise InvalidImageStatus(f"Locations can only be added this way to a queued image, not a {status} one.")
        authorize_image(caller, "add_image_location", image_target(owner, visibility))

    def _read(self, store: Store, new: NewLocation) -> Digests:
        """Every byte through the store, hashed; 400 if it does not match what the caller said it is."""
        algorithms = {CHECKSUM_ALGORITHM, HASH_ALGORITHM} | ({new.expected_hash[0]} if new.expected_hash else set())
        hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
        size = 0
        try:
            for chunk in store.get(new.url, self._chunk_bytes):
                size += len(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
        except StoreNotFoundError as exc:
            raise LocationDataMissing("No data at this location.") from exc
        except StoreError as exc:
            raise StoreUnavailable("The location's store cannot be read now; try again later.") from exc
        digests = Digests(size, {name: hasher.hexdigest() for name, hasher in hashers.items()})
        if new.expected_hash and digests.hexdigests[new.expected_hash[0]] != new.expected_hash[1]:
            raise InvalidBody("os_hash_value does not match the location's data.")
        return digests
