"""The one place that decides whether data is in use (SPEC section 6): by canonical data key, never by URL text.

Every decision about data that more than one location may reach asks here, under the same row locks:
adding a location (another tenant's data 403, already on this image 400, being deleted 409), the
scrubber's claim and its last check before recording a deletion, restore, and the Glance import.

A location's data_key_hash is the keyed hash of the canonical key its store computes (DataIdentity.key),
so every spelling of one file finds the same rows. A second name of a file (a hard link, or a spelling a
case-insensitive filesystem folds) is found by device and inode, checked again on disk so a reused inode
number of long-gone data matches nothing. Rows not yet re-keyed (data_key_version 0, before
`locquota locations rekey`) still carry the hash of their URL's text, and are matched by that too.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, contains_eager

from locations.models import DATA_KEY_VERSION, LIVE_LOCATION_STATUSES, TEXT_KEY_VERSION, Location, LocationStatus
from locations.stores.base import DataIdentity, StoreRegistry
from locquota.crypto import UrlNotReadableError, UrlVault
from locquota.errors import LocquotaError


class DataKeys:
    """Canonical identities of location URLs, and the hashes stored and looked up for them."""

    def __init__(self, stores: StoreRegistry, vault: UrlVault) -> None:
        self.stores, self.vault = stores, vault

    def identify(self, url: str) -> DataIdentity:
        """The identity of a URL given now; a 400 LocquotaError if no store owns it or it cannot be decided."""
        return self.stores.for_url(url).identify(url)

    def identify_stored(self, url: str, store_name: str) -> DataIdentity:
        """The identity of a stored row's (opened) URL through its own store (StoreRegistry.identify)."""
        return self.stores.identify(url, store_name)

    def digest(self, identity: DataIdentity) -> str:
        """The data_key_hash to store beside a location written now."""
        return self.vault.digest(identity.key)

    def digests(self, identity: DataIdentity) -> list[str]:
        """Every data_key_hash a row of this data may carry (one per key of the ring, and the unkeyed one)."""
        return self.vault.digests(identity.key)

    def columns(self, url: str, store_name: str) -> dict[str, object]:
        """The data key columns of a stored row's (opened) URL, as `locquota locations rekey` writes them.

        A URL its store refuses now cannot be keyed: it keeps the hash of its text (version 0), by which
        lookups still match it, and every later rekey tries it again.
        """
        try:
            identity = self.identify_stored(url, store_name)
        except LocquotaError:
            return {"data_key_hash": self.vault.digest(url), "data_key_version": TEXT_KEY_VERSION, "data_inode": None}
        return {
            "data_key_hash": self.digest(identity),
            "data_key_version": DATA_KEY_VERSION,
            "data_inode": identity.inode,
        }

    def still_names(self, location: Location, identity: DataIdentity | None = None) -> bool:
        """Whether the row's URL still reaches the data it was keyed for (no symlink was swapped since).

        identity: the URL's identity if already computed. Rows not yet re-keyed cannot be checked: True.
        """
        if location.data_key_version != DATA_KEY_VERSION:
            return True
        if identity is None:
            try:
                identity = self.identify_stored(self.vault.open(location.url), location.store)
            except (LocquotaError, UrlNotReadableError):
                return False
        return location.data_key_hash in self.digests(identity)


@dataclass(frozen=True, slots=True)
class Reference:
    """A live location that reaches the data asked about.

    shares_name: it reaches the data by the same name, so deleting the data under one location deletes it
    under the other; False for another name of the same file (a hard link), whose removal leaves this one.
    """

    location_id: int
    image_id: uuid.UUID
    owner: str
    status: LocationStatus
    claim_expires_at: datetime | None
    shares_name: bool


class DataReferences:
    """Who else references some data, in the caller's transaction."""

    def __init__(self, db: Session, keys: DataKeys) -> None:
        self._db, self.keys = db, keys

    def find(
        self,
        identity: DataIdentity,
        *,
        url: str | None = None,
        excluding: int | None = None,
        lock: bool = False,
    ) -> list[Reference]:
        """The live locations (but excluding) that reach this data, in id order.

        url: the spelling asked about, to match rows not yet re-keyed by their URL's text. lock: lock those
        rows (and, on PostgreSQL, the key itself, so two transactions adding a first reference to the same
        data serialize) until the caller's commit.
        """
        hashes = self.keys.digests(identity)
        if lock:
            self._lock_key(hashes[-1])
        matches = [Location.data_key_hash.in_(hashes)]
        if url is not None:
            matches.append(
                and_(
                    Location.data_key_version != DATA_KEY_VERSION,
                    Location.data_key_hash.in_(self.keys.vault.digests(url)),
                )
            )
        if identity.inode is not None:
            matches.append(Location.data_inode == identity.inode)
        query = (
            select(Location)
            .join(Location.image)
            .options(contains_eager(Location.image))
            .where(or_(*matches), Location.status.in_(LIVE_LOCATION_STATUSES))
            .order_by(Location.id)
        )
        if excluding is not None:
            query = query.where(Location.id != excluding)
        if lock:
            query = query.with_for_update(of=Location)
        references = []
        for location in self._db.scalars(query):
            by_name = location.data_key_hash in hashes or location.data_key_version != DATA_KEY_VERSION
            if not by_name and not self._same_file(location, identity):
                continue  # an inode number reused by other data since that row was written
            # One name only: the other spelling reaches this very name (a case-folding filesystem).
            references.append(
                Reference(
                    location.id,
                    location.image_id,
                    location.image.owner,
                    location.status,
                    location.claim_expires_at,
                    shares_name=by_name or identity.links <= 1,
                )
            )
        return references

    def find_for(self, location: Location, *, lock: bool = False) -> list[Reference] | None:
        """The other live locations reaching a stored location's data; None if its URL cannot be identified."""
        try:
            url = self.keys.vault.open(location.url)
            identity = self.keys.identify_stored(url, location.store)
        except (LocquotaError, UrlNotReadableError):
            return None
        return self.find(identity, url=url, excluding=location.id, lock=lock)

    def _same_file(self, location: Location, identity: DataIdentity) -> bool:
        try:
            current = self.keys.identify_stored(self.keys.vault.open(location.url), location.store)
        except (LocquotaError, UrlNotReadableError):
            return False
        return current.inode == identity.inode

    def _lock_key(self, key_hash: str) -> None:
        # PostgreSQL: a transaction-scoped advisory lock per data key; SQLite serialises every writer anyway.
        if self._db.get_bind().dialect.name == "postgresql":
            self._db.execute(select(func.pg_advisory_xact_lock(int(key_hash[:15], 16))))
