"""Bulk-load a PostgreSQL database with one tenant's images, grown in steps, plus other tenants' images.

Rows go in through SQLAlchemy Core executemany (batches of BATCH_IMAGES images) so 100k images load in
seconds, not the minutes the ORM or the API would take. Every image carries what GET and list load:
properties, tags and one active location, so the selectin loads of a page do real work.

Each step adds the tenant's new images first, then other tenants' images, newer than all of the tenant's:
the tenant then idles while others upload, which is when the owner filter matters most. A list query
that walks the all-tenants index (created_at, id) and filters on owner has to skip every one of those
newer rows; one that uses ix_images_owner_created_at_id does not.
"""

import hashlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, Table, func, insert, select, text

from locations.models import (
    Image,
    ImageProperty,
    ImageStatus,
    ImageTag,
    Location,
    LocationStatus,
    Visibility,
    data_key_digest,
)

TENANT = "bench-tenant"
OTHER_TENANTS = tuple(f"other-{n:02d}" for n in range(20))
# Other tenants add this many images per new image of the measured tenant, after it (see above).
OTHERS_PER_TENANT_IMAGE = 0.5
# A few of the tenant's images are deleted or hidden, so the list query filters rows as in production.
DELETED_FRACTION = 0.03
HIDDEN_FRACTION = 0.01
BATCH_IMAGES = 5000
EPOCH = datetime(2025, 1, 1)

ProgressCallback = Callable[[int], None]


@dataclass
class Dataset:
    """What has been loaded so far, and what the client needs to address it."""

    seed: int = 0
    tenant_images: int = 0
    other_images: int = 0
    # Ids of the tenant's images that GET and list can see, oldest first.
    visible_ids: list[uuid.UUID] = field(default_factory=list)
    _created: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def grow_to(self, engine: Engine, tenant_images: int, progress: ProgressCallback | None = None) -> int:
        """Add images until the tenant holds `tenant_images`; return the number of rows inserted."""
        new_tenant = tenant_images - self.tenant_images
        if new_tenant <= 0:
            return 0
        new_others = self.images_to_add(tenant_images) - new_tenant
        owners = [TENANT] * new_tenant + [self._rng.choice(OTHER_TENANTS) for _ in range(new_others)]
        rows = 0
        for start in range(0, len(owners), BATCH_IMAGES):
            batch = owners[start : start + BATCH_IMAGES]
            with engine.begin() as connection:
                rows += self._insert_batch(connection, batch)
            if progress is not None:
                progress(len(batch))
        self.tenant_images, self.other_images = tenant_images, self.other_images + new_others
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            # Fresh statistics, as a production database's autovacuum would have gathered by now.
            connection.execute(text("ANALYZE"))
        return rows

    def images_to_add(self, tenant_images: int) -> int:
        """How many images (the tenant's and the others') growing to `tenant_images` inserts."""
        new_tenant = max(0, tenant_images - self.tenant_images)
        return new_tenant + int(new_tenant * OTHERS_PER_TENANT_IMAGE)

    def _insert_batch(self, connection: Connection, owners: list[str]) -> int:
        images: list[dict[str, object]] = []
        properties: list[dict[str, object]] = []
        tags: list[dict[str, object]] = []
        locations: list[dict[str, object]] = []
        for owner in owners:
            image_id = uuid.UUID(int=self._rng.getrandbits(128), version=4)
            created = EPOCH + timedelta(seconds=self._created)
            self._created += 1
            status = ImageStatus.ACTIVE
            hidden = False
            roll = self._rng.random()
            if roll < DELETED_FRACTION:
                status = ImageStatus.DELETED
            elif roll < DELETED_FRACTION + HIDDEN_FRACTION:
                hidden = True
            elif owner == TENANT:
                self.visible_ids.append(image_id)
            size = self._rng.randrange(1 << 20, 1 << 32)
            images.append(_image_row(image_id, owner, status, hidden, size, created))
            properties += [
                {"image_id": image_id, "name": "os_distro", "value": self._rng.choice(("ubuntu", "debian", "fedora"))},
                {"image_id": image_id, "name": "hw_disk_bus", "value": "virtio"},
            ]
            tags += [
                {"image_id": image_id, "value": "bench"},
                {"image_id": image_id, "value": f"generation-{self._created % 7}"},
            ]
            locations.append(_location_row(image_id, status, size, created))
        for table, rows in (
            (Image.__table__, images),
            (ImageProperty.__table__, properties),
            (ImageTag.__table__, tags),
            (Location.__table__, locations),
        ):
            assert isinstance(table, Table)
            connection.execute(insert(table), rows)
        return len(images) + len(properties) + len(tags) + len(locations)

    def random_visible_id(self) -> uuid.UUID:
        """A visible image of any age, so GET does not only hit the freshly loaded (cached) rows."""
        return self._rng.choice(self.visible_ids)


def _image_row(
    image_id: uuid.UUID, owner: str, status: ImageStatus, hidden: bool, size: int, created: datetime
) -> dict[str, object]:
    digest = hashlib.sha512(image_id.bytes).hexdigest()
    return {
        "id": image_id,
        "name": f"image-{image_id.hex[:8]}",
        "status": status,
        "visibility": Visibility.SHARED,
        "owner": owner,
        "size": size,
        "virtual_size": None,
        "checksum": digest[:32],
        "os_hash_algo": "sha512",
        "os_hash_value": digest,
        "disk_format": "qcow2",
        "container_format": "bare",
        "min_disk": 0,
        "min_ram": 0,
        "protected": False,
        "os_hidden": hidden,
        "created_at": created,
        "updated_at": created,
    }


def _location_row(image_id: uuid.UUID, status: ImageStatus, size: int, created: datetime) -> dict[str, object]:
    deleted = status is ImageStatus.DELETED
    url = f"file:///var/lib/glance/images/{image_id}"
    return {
        "image_id": image_id,
        "url": url,
        "data_key_hash": data_key_digest(url),
        "attempts": 0,
        "store": "file",
        "metadata": {},
        "status": LocationStatus.DELETED if deleted else LocationStatus.ACTIVE,
        "size_bytes": size,
        "created_at": created,
        "updated_at": created,
        "deleted_at": created if deleted else None,
    }


def count_rows(engine: Engine) -> dict[str, int]:
    """Rows per table, printed with the results so a reader sees what the database held."""
    with engine.connect() as connection:
        return {
            table.name: connection.scalar(select(func.count()).select_from(table)) or 0
            for table in (Image.__table__, ImageProperty.__table__, ImageTag.__table__, Location.__table__)
            if isinstance(table, Table)
        }
