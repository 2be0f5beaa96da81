"""Location URLs at rest: the key ring's start-up check, the plaintext guard, the encrypt and rotate passes.

See SPEC section 9 and docs/encryption.md.

The passes walk the table by id, one transaction per batch, so they resume where a crash left them and
run while the service serves: a row under an older key stays readable (the ring holds that key) until
its batch re-seals it, and lookups ask for the hashes of every key meanwhile (UrlVault.digests).
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from sqlalchemy import Engine, func, inspect, not_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from locations.models import Location
from locations.services.data_references import DataKeys
from locquota.crypto import SEALED_PREFIX, UrlNotReadableError, UrlVault, is_sealed
from locquota.scripting import UnitOfWork
from locquota.settings import SettingsError

log = logging.getLogger(__name__)
SAMPLE_ROWS = 10


class PlaintextUrlRefusedError(RuntimeError):
    """A location URL about to be written in plaintext although encryption keys are configured (a bug)."""


def check_key_ring(session_factory: sessionmaker[Session], vault: UrlVault) -> None:
    """Refuse to start (SettingsError) if the database holds sealed URLs that the configured ring cannot open.

    Samples the first sealed rows by id: with no key configured any one is fatal; with keys, at least one
    of them must open (a single tampered row must not stop the service; it is counted when read).
    A database that cannot be read now (down, not migrated) is not checked: every read opens URLs
    anyway, and an unreadable one is left out of responses, never served as a URL.
    """
    try:
        with session_factory() as db:
            sample = db.scalars(
                select(Location.url)
                .where(Location.url.startswith(SEALED_PREFIX, autoescape=True))
                .order_by(Location.id)
                .limit(SAMPLE_ROWS)
            ).all()
    except SQLAlchemyError as exc:
        log.warning("location encryption keys not checked against the database (%s)", type(exc).__name__)
        return
    if not sample:
        return
    if not vault.is_enabled:
        raise SettingsError(
            "locquota.location_encryption_keys: the database holds encrypted location URLs and no key is "
            "configured; set LOCQUOTA_LOCATION_ENCRYPTION_KEYS or locquota.location_encryption_key_file"
        )
    for stored in sample:
        try:
            vault.open(stored)
        except UrlNotReadableError:
            continue
        return
    raise SettingsError(
        "locquota.location_encryption_keys: none of the configured keys opens the encrypted location URLs "
        "in the database (a wrong key, or the key they were sealed under was removed from the ring)"
    )


def refuse_plaintext(session: Session, _context: object, _instances: object) -> None:
    """before_flush, with keys configured: a location URL written in plaintext is a bug; fail the transaction."""
    for obj in chain(session.new, session.dirty):
        if not isinstance(obj, Location) or is_sealed(obj.url):
            continue
        if obj in session.new or inspect(obj).attrs.url.history.has_changes():
            raise PlaintextUrlRefusedError(f"location {obj.id}: a plaintext URL write with encryption keys configured")


@dataclass(frozen=True, slots=True)
class ResealBatch:
    """One committed batch: rows looked at, rows re-sealed, rows no key opens (left as they are)."""

    scanned: int
    resealed: int
    unreadable: int


def rows_to_scan(unit_of_work: UnitOfWork, *, plaintext_only: bool) -> int:
    """How many rows a pass will look at (for its progress bar)."""
    with unit_of_work() as db:
        query = select(func.count()).select_from(Location)
        if plaintext_only:
            query = query.where(not_(Location.url.startswith(SEALED_PREFIX, autoescape=True)))
        return db.scalar(query) or 0


def reseal_batches(
    unit_of_work: UnitOfWork, keys: DataKeys, batch_size: int, *, plaintext_only: bool
) -> Iterator[ResealBatch]:
    """Seal every row under the primary key, batch by batch, each batch its own transaction.

    plaintext_only (encrypt): only rows not sealed yet, found by SQL; otherwise (rotate-key) every row,
    since which key sealed a token is known only by trying it. A re-sealed row's data key is hashed
    again under the primary key, from its store's canonical key.
    """
    vault = keys.vault
    if not vault.is_enabled:
        raise SettingsError("locquota.location_encryption_keys: no key is configured; nothing to seal with")
    after = 0
    while True:
        with unit_of_work() as db:
            query = select(Location.id, Location.url, Location.store).where(Location.id > after)
            if plaintext_only:
                query = query.where(not_(Location.url.startswith(SEALED_PREFIX, autoescape=True)))
            # FOR UPDATE (PostgreSQL): a request changing one of these rows waits for this short batch, and
            # the batch waits for it, so no row is skipped and one pass is complete.
            rows = db.execute(query.order_by(Location.id).limit(batch_size).with_for_update()).all()
            if not rows:
                return
            changes, unreadable = [], 0
            for location_id, stored, store in rows:
                try:
                    resealed = vault.resealed(stored)
                except UrlNotReadableError:
                    unreadable += 1
                    log.error("location %s: its sealed URL cannot be opened; left as it is", location_id)
                    continue
                if resealed is not None:
                    token, url = resealed
                    changes.append({"id": location_id, "url": token, **keys.columns(url, store)})
            if changes:
                db.execute(update(Location), changes)
            after = rows[-1].id
        yield ResealBatch(len(rows), len(changes), unreadable)


def scrub_old_copies(engine: Engine) -> None:
    """SQLite: rewrite the file (VACUUM, then truncate the WAL) so no freed page keeps a URL's plaintext.

    PostgreSQL keeps old row versions until VACUUM; docs/encryption.md says to run VACUUM FULL.
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM"))
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
