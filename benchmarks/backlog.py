"""A scrubber backlog: pending_delete locations whose data files exist in a file store on local disk.

Rows go in through SQLAlchemy Core executemany in batches of BATCH_LOCATIONS, as benchmarks.dataset does,
and the files are written beside them, so 100k locations load in seconds. Each location belongs to its own
pending_delete image, as after a tenant deleted that many images with delayed_delete on: deleting the last
location also settles the image, the work the scrubber does in production.
"""

import os
import shutil
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, insert, text

from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility, data_key_digest
from locquota.clock import Clock

OWNER = "bench-scrub-tenant"
FILE_BYTES = 4096  # one filesystem block: the unlink, not the freeing of extents, is what is measured
BATCH_LOCATIONS = 5000
TABLES = ("locations", "image_properties", "image_tags", "images")

ProgressCallback = Callable[[int], None]


def reset(engine: Engine, store_root: Path) -> None:
    """An empty database and an empty store root: every run starts from the same state."""
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    shutil.rmtree(store_root, ignore_errors=True)
    store_root.mkdir(parents=True)


def load(engine: Engine, store_root: Path, count: int, progress: ProgressCallback | None = None) -> None:
    """Reset, then add `count` due pending_delete locations (oldest first by scrub time) and their files."""
    reset(engine, store_root)
    now = Clock().now()
    data = os.urandom(FILE_BYTES)
    for start in range(0, count, BATCH_LOCATIONS):
        images: list[dict[str, object]] = []
        locations: list[dict[str, object]] = []
        for n in range(start, min(start + BATCH_LOCATIONS, count)):
            image_id = uuid.uuid4()
            path = store_root / str(image_id)
            path.write_bytes(data)
            url = "file://" + quote(str(path))
            created = now - timedelta(days=30)
            pending = now - timedelta(days=1) + timedelta(milliseconds=n)
            images.append(image_row(image_id, n, created, pending))
            locations.append(location_row(image_id, url, created, pending))
        with engine.begin() as connection:
            connection.execute(insert(Image.__table__), images)
            connection.execute(insert(Location.__table__), locations)
        if progress is not None:
            progress(len(locations))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # Fresh statistics, as autovacuum would have gathered on a backlog that built up over time.
        connection.execute(text("ANALYZE"))


def image_row(image_id: uuid.UUID, n: int, created: object, pending: object) -> dict[str, object]:
    """A pending_delete image of the backlog (also the engines part's)."""
    return {
        "id": image_id,
        "name": f"scrub-{n}",
        "status": ImageStatus.PENDING_DELETE,
        "visibility": Visibility.PRIVATE,
        "owner": OWNER,
        "size": FILE_BYTES,
        "virtual_size": None,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "disk_format": "raw",
        "container_format": "bare",
        "min_disk": 0,
        "min_ram": 0,
        "protected": False,
        "os_hidden": False,
        "created_at": created,
        "updated_at": pending,
    }


def status_counts(engine: Engine) -> dict[str, int]:
    """Locations by status, to check that a run did all of its work."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT status, count(*) AS n FROM locations GROUP BY status ORDER BY status"))
        return {row.status: row.n for row in rows}


def files_left(store_root: Path) -> int:
    """Data files still in the store root."""
    return sum(1 for _ in store_root.iterdir())


def location_row(image_id: uuid.UUID, url: str, created: object, pending: object) -> dict[str, object]:
    """A due pending_delete location of the file store (also the engines part's)."""
    return {
        "image_id": image_id,
        "url": url,
        "data_key_hash": data_key_digest(url),
        "store": "file",
        "metadata": {},
        "status": LocationStatus.PENDING_DELETE,
        "size_bytes": FILE_BYTES,
        "created_at": created,
        "updated_at": pending,
        "deleted_at": None,
        "pending_since": pending,
        "scrub_after": pending,
        "attempts": 0,
        "last_error": None,
        "claimed_by": None,
        "claim_expires_at": None,
    }
