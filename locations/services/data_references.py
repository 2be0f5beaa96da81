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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from locations.models import (
    DATA_KEY_VERSION,
    LIVE_LOCATION_STATUSES,
    TEXT_KEY_VERSION,
    DataKeyLockSlot,
    Image,
    Location,
    LocationStatus,
)
from locations.stores.base import DataIdentity, StoreRegistry
from locquota.crypto import UrlNotReadableError, UrlVault
from locquota.errors import LocquotaError
from locquota.sql_batches import one_of

# What a reference needs, read as plain columns: cheaper than loading Location objects for every claim.
REFERENCE_COLUMNS = (
    Location.id,
    Location.image_id,
    Image.owner,
    Location.status,
    Location.claim_expires_at,
    Location.data_key_hash,
    Location.data_key_version,
    Location.data_inode,
    Location.url,
    Location.store,
)


def connection_of(db: Session) -> Connection:
    """The session's connection (its transaction), its pending changes flushed first as its execute would.

    For reads whose rows need none of the ORM's loading (plain columns): Core execution skips the ORM's
    per-statement and per-row work. Never for writes: the request's transaction (zope.sqlalchemy) learns
    of a write only through the session, and would roll back one made behind its back.
    """
    if db.autoflush:
        db.flush()
    return db.connection()


def lock_data_keys(db: Session, key_hashes: Sequence[str]) -> None:
    """Lock data keys until the transaction ends, in the order given (callers give them sorted: no deadlock).

    PostgreSQL: an advisory lock per key, all in one statement (unnest WITH ORDINALITY keeps the order, and
    the plan is a bare Function Scan that takes them row by row). MariaDB: one UPDATE of the keys' slots, in
    slot order (DataKeyLockSlot). SQLite serialises every writer anyway.
    """
    name = db.get_bind().dialect.name
    if name == "postgresql":
        ids = list(dict.fromkeys(int(key_hash[:15], 16) for key_hash in key_hashes))
        ordered = (
            "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS t(k, n) ORDER BY n"
        )
        db.execute(text(ordered).bindparams(bindparam("ids", ids)))
    elif name in ("mysql", "mariadb"):
        # One UPDATE by primary key: InnoDB locks the slots in key order, whoever asks.
        slots = sorted({int(key_hash[:4], 16) for key_hash in key_hashes})
        db.execute(
            update(DataKeyLockSlot)
            .where(DataKeyLockSlot.slot.in_(slots))
            .values(taken=DataKeyLockSlot.taken + 1)
            .execution_options(synchronize_session=False)
        )


class Keyed(Protocol):
    """What still_names reads of a location: a Location, or a row of these columns."""

    data_key_hash: str
    data_key_version: int


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

    def still_names(self, location: Keyed, identity: DataIdentity) -> bool:
        """Whether the row's URL (identity: what it reaches now) still reaches the data it was keyed for.

        False when a symlink was swapped since. Rows not yet re-keyed cannot be checked: True.
        """
        if location.data_key_version != DATA_KEY_VERSION:
            return True
        return location.data_key_hash in self.digests(identity)

    def opened(self, stored_url: str, store_name: str) -> tuple[str, DataIdentity] | None:
        """A stored row's URL opened with the key ring and identified through its store; None if either fails."""
        try:
            url = self.vault.open(stored_url)
            return url, self.identify_stored(url, store_name)
        except (LocquotaError, UrlNotReadableError):
            return None


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


@dataclass(frozen=True, slots=True)
class Question:
    """Who else reaches this data? url: the spelling asked about (matches rows not re-keyed yet by its text)."""

    identity: DataIdentity
    url: str | None = None
    excluding: int | None = None  # the asking location itself


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

        lock: lock those rows (and, on PostgreSQL, the key itself, so two transactions adding a first
        reference to the same data serialize) until the caller's commit.
        """
        question = Question(identity, url, excluding)
        if lock:
            self._lock_key(self.keys.digests(identity)[-1])
        return self.find_all([question], lock=lock)[0]

    def find_all(self, questions: Sequence[Question], *, lock: bool = False) -> list[list[Reference]]:
        """The answers to several questions from one query (a scrubber batch asks for all its claims at once)."""
        if not questions:
            return []
        digests: dict[str, frozenset[str]] = {}  # a key and its URL are often one text: hashed once

        def hashes_of(text: str) -> frozenset[str]:
            found = digests.get(text)
            if found is None:
                found = digests[text] = frozenset(self.keys.vault.digests(text))
            return found

        key_hashes = [hashes_of(question.identity.key) for question in questions]
        text_hashes = [hashes_of(q.url) if q.url is not None else frozenset() for q in questions]
        inodes = {question.identity.inode for question in questions if question.identity.inode is not None}
        all_keys = frozenset().union(*key_hashes)
        matches = [one_of(self._db, Location.data_key_hash, all_keys)]
        # A text hash that is also a key hash (a URL spelled canonically) is matched above whatever the version.
        legacy_only = frozenset().union(*text_hashes) - all_keys
        if legacy_only:
            legacy = one_of(self._db, Location.data_key_hash, legacy_only)
            matches.append(and_(Location.data_key_version != DATA_KEY_VERSION, legacy))
        if inodes:
            matches.append(one_of(self._db, Location.data_inode, inodes))
        query = (
            select(*REFERENCE_COLUMNS)
            .join(Location.image)
            .where(or_(*matches), Location.status.in_(LIVE_LOCATION_STATUSES))
            .order_by(Location.id)
        )
        if lock:
            query = query.with_for_update(of=Location)
        by_hash: dict[str, list[Row[Any]]] = defaultdict(list)
        by_inode: dict[str, list[Row[Any]]] = defaultdict(list)
        for row in connection_of(self._db).execute(query):
            by_hash[row.data_key_hash].append(row)
            if row.data_inode is not None:
                by_inode[row.data_inode].append(row)
        answers = []
        for question, keys, texts in zip(questions, key_hashes, text_hashes, strict=True):
            candidates = {row.id: row for digest in keys for row in by_hash.get(digest, ())}
            candidates.update((row.id, row) for digest in texts - keys for row in by_hash.get(digest, ()))
            candidates.update((row.id, row) for row in by_inode.get(question.identity.inode or "", ()))
            answers.append(self._answer(question, [candidates[key] for key in sorted(candidates)], keys, texts))
        return answers

    def _answer(
        self, question: Question, rows: list[Row[Any]], key_hashes: frozenset[str], text_hashes: frozenset[str]
    ) -> list[Reference]:
        identity, references = question.identity, []
        for row in rows:
            if row.id == question.excluding:
                continue
            is_legacy = row.data_key_version != DATA_KEY_VERSION
            by_name = row.data_key_hash in key_hashes or (is_legacy and row.data_key_hash in text_hashes)
            same_inode = identity.inode is not None and row.data_inode == identity.inode
            if not by_name and not (same_inode and self._same_file(row.url, row.store, identity)):
                continue  # another question's data, or an inode number reused by other data since
            # One name only: the other spelling reaches this very name (a case-folding filesystem).
            shares_name = by_name or identity.links <= 1
            references.append(Reference(row.id, row.image_id, row.owner, row.status, row.claim_expires_at, shares_name))
        return references

    def find_for(self, location: Location, *, lock: bool = False) -> list[Reference] | None:
        """The other live locations reaching a stored location's data; None if its URL cannot be identified."""
        opened = self.keys.opened(location.url, location.store)
        if opened is None:
            return None
        url, identity = opened
        return self.find(identity, url=url, excluding=location.id, lock=lock)

    def _same_file(self, stored_url: str, store: str, identity: DataIdentity) -> bool:
        opened = self.keys.opened(stored_url, store)
        return opened is not None and opened[1].inode == identity.inode

    def _lock_key(self, key_hash: str) -> None:
        lock_data_keys(self._db, [key_hash])
