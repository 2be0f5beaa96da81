"""One tenant's locations for the quota benchmark, grown in steps by INSERT ... SELECT generate_series.

The rows are made inside PostgreSQL, a batch of BATCH_LOCATIONS per transaction, so a million images and
their locations load in well under a minute and nothing of them is held in Python. Image n of the tenant
has the id md5('<tenant>:<n>')::uuid (so the client can name any of them without reading them back) and one
location, `file:///var/lib/glance/images/<id>` with data_key_hash = sha256 of the URL, as data_key_digest computes it.
n % 100 decides the status: DELETED_PERCENT of the images are deleted (their location too), the next
PENDING_PERCENT pending_delete (their location pending_delete), the rest active.

Rows loaded directly skip the ledger, so after every step the real reconcile repair (Reconciler.compare
on recount, fix=True, in one transaction) brings tenant_usage and store_usage to a recount.
"""

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from locations.models import data_key_digest
from locations.services.recount import recount
from locquota.clock import Clock
from quota.services.reconcile import Drift, Reconciler

BATCH_LOCATIONS = 100_000
DELETED_PERCENT, PENDING_PERCENT = 3, 2
IMAGE_SIZE_BYTES = 1 << 20  # plus n % 4096, so the sums are not trivial

ProgressCallback = Callable[[int], None]

IMAGES = text(
    """
    INSERT INTO images (id, name, status, visibility, owner, size, disk_format, container_format,
                        min_disk, min_ram, protected, os_hidden, created_at, updated_at)
    SELECT md5(:tenant || ':' || n)::uuid, 'quota-' || n,
           CASE WHEN n % 100 < :deleted THEN 'deleted'
                WHEN n % 100 < :deleted + :pending THEN 'pending_delete'
                ELSE 'active' END,
           'private', :tenant, :size + n % 4096, 'raw', 'bare', 0, 0, false, false,
           timestamp '2025-01-01' + n * interval '1 second', timestamp '2025-01-01' + n * interval '1 second'
    FROM generate_series(:start, :stop - 1) AS n
    """
)
# The batch's images are found by their creation times through ix_images_owner_created_at_id.
LOCATIONS = text(
    """
    INSERT INTO locations (image_id, url, data_key_hash, store, metadata, status, size_bytes, created_at, updated_at,
                           deleted_at, pending_since, scrub_after, attempts)
    SELECT id, url, encode(sha256(convert_to(url, 'UTF8')), 'hex'), 'file', '{}', status, size,
           created_at, updated_at,
           CASE WHEN status = 'deleted' THEN updated_at END,
           CASE WHEN status = 'pending_delete' THEN updated_at END,
           CASE WHEN status = 'pending_delete' THEN updated_at + interval '1 day' END,
           0
    FROM (SELECT id, 'file:///var/lib/glance/images/' || id AS url, status, size, created_at, updated_at
          FROM images
          WHERE owner = :tenant
            AND created_at >= timestamp '2025-01-01' + :start * interval '1 second'
            AND created_at < timestamp '2025-01-01' + :stop * interval '1 second') AS batch
    """
)


def image_id(tenant: str, n: int) -> uuid.UUID:
    """The id of the tenant's image n, as the loader made it."""
    return uuid.UUID(hashlib.md5(f"{tenant}:{n}".encode(), usedforsecurity=False).hexdigest())


def is_active(n: int) -> bool:
    """Whether image n (and its location) was loaded active."""
    return n % 100 >= DELETED_PERCENT + PENDING_PERCENT


def grow(engine: Engine, tenant: str, start: int, stop: int, progress: ProgressCallback | None = None) -> None:
    """Add the tenant's images start..stop-1, one location each, then VACUUM ANALYZE both tables."""
    for batch in range(start, stop, BATCH_LOCATIONS):
        bounds = {"tenant": tenant, "start": batch, "stop": min(batch + BATCH_LOCATIONS, stop)}
        with engine.begin() as connection:
            connection.execute(
                IMAGES, {**bounds, "deleted": DELETED_PERCENT, "pending": PENDING_PERCENT, "size": IMAGE_SIZE_BYTES}
            )
            connection.execute(LOCATIONS, bounds)
        if progress is not None:
            progress(bounds["stop"] - batch)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # A table that grew over months has been vacuumed (visibility map, hint bits) and analyzed by
        # autovacuum; without this the first recount would pay for setting hint bits on every row.
        connection.execute(text("VACUUM ANALYZE images, locations"))
    _check_data_key_hash(engine, tenant, stop - 1)


def _check_data_key_hash(engine: Engine, tenant: str, n: int) -> None:
    """The SQL-made data_key_hash must be what the product computes, or the data_key_hash index lookups find nothing."""
    with engine.connect() as connection:
        url, digest = connection.execute(
            text("SELECT url, data_key_hash FROM locations WHERE image_id = :id"), {"id": image_id(tenant, n)}
        ).one()
    if digest != data_key_digest(url):
        raise RuntimeError(f"loaded data_key_hash {digest} differs from data_key_digest {data_key_digest(url)}")


def repair_usage(engine: Engine, tenant: str) -> list[Drift]:
    """The reconcile repair for one tenant, as `locquota reconcile --fix` runs it: lock, recount, compare, fix."""
    with Session(engine) as db, db.begin():
        reconciler = Reconciler(db, Clock())
        reconciler.lock([tenant])
        return reconciler.compare(recount(db, [tenant]), fix=True)


def drift_of(engine: Engine, tenant: str) -> list[Drift]:
    """How the stored usage differs from a recount (rolled back: it records nothing)."""
    with Session(engine) as db:
        try:
            return Reconciler(db, Clock()).compare(recount(db, [tenant]), fix=False)
        finally:
            db.rollback()


def stored_total(engine: Engine, tenant: str, resource: str) -> int:
    """One stored total of the tenant's usage row (0 without a row)."""
    with engine.connect() as connection:
        value = connection.execute(
            text(f"SELECT {resource} FROM tenant_usage WHERE tenant_id = :tenant"),  # noqa: S608 - a Resource name
            {"tenant": tenant},
        ).scalar()
    return int(value or 0)


def location_files(store_root: Path, prefix: str, count: int) -> list[str]:
    """`count` distinct 1-byte files in the store root, as file URLs (FileStore.url_for's form)."""
    urls = []
    for number in range(count):
        path = store_root / f"{prefix}-{number}"
        path.write_bytes(b"x")
        urls.append("file://" + quote(str(path)))
    return urls


def count_rows(engine: Engine) -> dict[str, int]:
    """Rows per table at the end, so the reader sees what the database held."""
    with engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
            for table in ("images", "locations", "tenant_usage", "store_usage", "tenant_limits")
        }
