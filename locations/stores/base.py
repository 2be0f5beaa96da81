"""What a store must do, and the registry that picks the store for a URL.

Stores are plug-ins: the `locquota.stores` entry-point group maps a name to a class taking
(name, options). Hashing and size counting happen above the store, so a store only moves bytes,
and names its data: only the store knows which spellings of a URL reach the same data (SPEC section 6).
"""

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Protocol

from locquota.errors import LocationOutsideStore, UnsupportedScheme

ENTRY_POINT_GROUP = "locquota.stores"


class StoreError(Exception):
    """The store could not do what was asked; the data is in an unknown state for that call."""


class StoreNotFoundError(StoreError):
    """No data at this name: the store answered, and it has nothing there.

    Only this means "gone" to the audit and the upload reaper; any other StoreError (a store that cannot be
    reached, a timeout, a refusal) says nothing about the data, and nothing is concluded from it.
    """


class StoreFullError(StoreError):
    """No space left for the data."""


class StoreDuplicateError(StoreError):
    """Data is already stored under the name new data would take; it is never overwritten."""


@dataclass(frozen=True, slots=True)
class DataIdentity:
    """What a location URL names in its store, whatever its spelling.

    key: the canonical name of the data; two URLs whose keys are equal reach the same data (for `file`,
    the real path inside the root as a file URL). inode: for stores with hard links, "device:inode" of
    the data where it exists, so another name of the same file is recognised; links: how many names it has.
    """

    key: str
    inode: str | None = None
    links: int = 1


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where an upload's bytes go, named before the first byte is written (the upload lease records it).

    url: where the finished data ends up (the new location's URL); scratch_url: where the bytes are
    written first. Whatever a crash leaves at either is found again by these names and cleaned up.
    """

    url: str
    scratch_url: str


@dataclass(frozen=True, slots=True)
class StoredData:
    """One piece of data found in a store by its inventory (what `locquota audit` compares)."""

    url: str  # the canonical URL, equal to its data key
    size_bytes: int
    modified_at: datetime  # UTC, naive like every time in the database
    is_scratch: bool  # an upload's bytes not yet put in place


class Store(Protocol):
    """One configured backend where image data lives."""

    name: str
    scheme: str  # the store's type, as Glance's /v2/info/stores/detail shows it (file, rbd, swift, s3, http)
    schemes: tuple[str, ...]  # the URL schemes of its locations (swift: swift, swift+http, swift+https, swift+config)
    description: str  # shown by GET /v2/info/stores (Glance's store_description)
    is_read_only: bool  # data is only read from it (Glance's http store)

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """Name the data an upload will write, before it writes anything."""

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = ...) -> str:
        """Write every chunk at target.scratch_url, then put it at target.url and return that URL.

        ready() is called when the bytes are durable, just before they are put in place; if it raises,
        they are not.

        On failure leave nothing behind. Never overwrites data already there (StoreDuplicateError):
        another location may reach it.
        """

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the data at url."""

    def delete(self, url: str) -> None:
        """Remove the data at url; data already gone is not an error (deleting twice is harmless)."""

    def get_size(self, url: str) -> int:
        """The size in bytes of the data at url; StoreNotFoundError if there is none (never 0 for an error)."""

    def validate_url(self, url: str) -> None:
        """Raise LocationOutsideStore unless url names data inside this store."""

    def identify(self, url: str) -> DataIdentity:
        """The canonical identity of the data url names; a 400 LocquotaError if it cannot be decided."""

    def inventory(self) -> Iterator[StoredData]:
        """Every piece of data in the store, in a stable order, without loading them all at once."""


class StoreRegistry:
    """The enabled stores, by name, and the default one uploads go to."""

    def __init__(self, stores: Mapping[str, Store], default: str, *, staging: Store | None = None) -> None:
        self._stores = dict(stores)
        self.default = self._stores[default]
        # The staging area of image import (Glance's os_glance_staging_store): found by name, so that its
        # data's locations are scrubbed like any other, but never listed, chosen, or matched by a URL.
        self.staging = staging
        self._by_name = {**self._stores, **({staging.name: staging} if staging else {})}

    def __iter__(self) -> Iterator[Store]:
        """The stores in the order they were enabled (never the staging area)."""
        return iter(self._stores.values())

    def __getitem__(self, name: str) -> Store:
        return self._by_name[name]

    def get(self, name: str) -> Store | None:
        """The store of this name, None if it is not configured here (an imported `glance:<name>` location)."""
        return self._by_name.get(name)

    def enabled(self, name: str) -> Store | None:
        """One of the stores clients may name (never the staging area), None if there is no such store."""
        return self._stores.get(name)

    def for_url(self, url: str) -> Store:
        """The store that owns url; 400 if its scheme is not enabled or it lies outside every store."""
        scheme = url.partition(":")[0].lower() if ":" in url else ""
        candidates = [store for store in self._stores.values() if scheme in store.schemes]
        if not candidates:
            raise UnsupportedScheme("The location URL's scheme is not enabled.", scheme=scheme[:32])
        refusal: LocationOutsideStore | None = None
        for store in candidates:
            try:
                store.validate_url(url)
            except LocationOutsideStore as exc:
                refusal = exc
            else:
                return store
        assert refusal is not None  # noqa: S101  (candidates is not empty)
        raise refusal

    def identify(self, url: str, store_name: str) -> DataIdentity:
        """What a stored location's URL reaches, through its own store.

        A store not configured here (an imported `glance:rbd` location) cannot canonicalise: the URL's text
        is the key until it is configured and the rows are re-keyed. Raises the store's 400 LocquotaError
        when it refuses the URL now (a symlink swapped to lead out of its root, a loop).
        """
        store = self.get(store_name)
        return DataIdentity(url) if store is None else store.identify(url)


def load_stores(
    backends: Iterable[tuple[str, str]], options: Mapping[str, Mapping[str, str]], setting: str = "enabled_backends"
) -> dict[str, Store]:
    """Instantiate each (name, type) store from its type's entry point with its locquota.store.<name>.* options.

    setting: the .ini key that named the stores, for the error message.
    """
    available = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    stores: dict[str, Store] = {}
    for name, kind in backends:
        if kind not in available:
            known = ", ".join(sorted(available))
            raise ValueError(
                f"locquota.{setting}: store {name!r} has type {kind!r}, which no plug-in provides ({known})"
            )
        stores[name] = available[kind].load()(name, options.get(name, {}))
    unknown = set(options) - set(stores)
    if unknown:
        raise ValueError(f"locquota.store.{sorted(unknown)[0]}.*: that store is not enabled")
    return stores
