"""The Glance -> locquota mapping of locations/services/glance_import/planner.py, row by row, without a database.

The fixtures exercise what Glance 33 writes; this covers the statuses they lack (importing), and both schemas
(with and without image_locations.status) for every image status, as SPEC section 8 and docs/import.md say.
"""

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from locations.models import ImageStatus, LocationStatus
from locations.services.glance_import import (
    Finding,
    GlanceImage,
    GlanceLocation,
    PlannedImage,
    Planner,
    Tally,
    has_credentials,
)
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from locquota.clock import FrozenClock

T0 = datetime(2026, 1, 1, 12, 0, 0)
DELETED_AT = datetime(2025, 12, 31, 8, 0, 0)
IMAGE_ID = "3f12d68e-32ff-403d-8eac-98d63534ccae"
SCRUB_DELAY = timedelta(hours=1)


@pytest.fixture
def stores(tmp_path: Path) -> StoreRegistry:
    return StoreRegistry({"file": FileStore("file", {"datadir": str(tmp_path / "images")})}, "file")


def glance_image(status: str, *locations: GlanceLocation, deleted: bool = False) -> GlanceImage:
    row = {"id": IMAGE_ID, "status": status, "owner": "p1", "size": 10, "deleted": deleted, "created_at": T0}
    return GlanceImage(row, list(locations))


def glance_location(url: str = "http://127.0.0.1:9495/blob/x/0", *, status: str | None = None, deleted: bool = False):
    return GlanceLocation(
        id=1, url=url, url_chars=len(url), status=status, is_deleted=deleted, meta_text='{"store": "web"}',
        meta_chars=16, created_at=T0, updated_at=DELETED_AT, deleted_at=DELETED_AT if deleted else None,
    )  # fmt: skip


def plan(stores: StoreRegistry, image: GlanceImage, *, has_location_status: bool) -> PlannedImage:
    planner = Planner(stores, FrozenClock(T0), SCRUB_DELAY, has_location_status=has_location_status)
    planned = planner.plan(image, Tally())
    assert planned is not None
    return planned


@pytest.mark.parametrize(
    ("glance_status", "image_status", "location_status"),
    [
        ("queued", ImageStatus.QUEUED, None),
        ("saving", ImageStatus.QUEUED, None),
        ("uploading", ImageStatus.QUEUED, None),
        ("importing", ImageStatus.QUEUED, None),
        ("active", ImageStatus.ACTIVE, LocationStatus.ACTIVE),
        ("deactivated", ImageStatus.DEACTIVATED, LocationStatus.ACTIVE),
        ("pending_delete", ImageStatus.PENDING_DELETE, LocationStatus.PENDING_DELETE),
        ("killed", ImageStatus.KILLED, LocationStatus.DELETED),
        ("deleted", ImageStatus.DELETED, LocationStatus.DELETED),
    ],
)
def test_without_a_location_status_it_follows_the_image_status(stores, glance_status, image_status, location_status):
    planned = plan(stores, glance_image(glance_status, glance_location()), has_location_status=False)
    assert planned.values["status"] is image_status
    assert [location.status for location in planned.locations] == ([location_status] if location_status else [])
    assert planned.no_data_locations == (0 if location_status else 1)


@pytest.mark.parametrize("glance_status", ["active", "pending_delete", "deleted", "killed"])
@pytest.mark.parametrize("location_status", ["active", "pending_delete", "deleted"])
def test_a_glance_location_status_is_kept_whatever_the_image_status(stores, glance_status, location_status):
    image = glance_image(glance_status, glance_location(status=location_status, deleted=location_status != "active"))
    planned = plan(stores, image, has_location_status=True)
    restored = glance_status == "active" and location_status == "pending_delete"
    assert [location.status.value for location in planned.locations] == ["active" if restored else location_status]


def test_a_pending_delete_location_is_due_scrub_time_after_glance_deleted_it(stores):
    planned = plan(
        stores, glance_image("pending_delete", glance_location(status="pending_delete", deleted=True), deleted=True),
        has_location_status=True,
    )  # fmt: skip
    [location] = planned.locations
    assert (location.values["pending_since"], location.values["scrub_after"]) == (DELETED_AT, DELETED_AT + SCRUB_DELAY)
    assert location.values["deleted_at"] is None


def test_a_pre_juno_row_removed_under_a_live_image_is_pending_delete(stores):
    first, removed = glance_location("http://h/a"), glance_location("http://h/b", deleted=True)
    removed.id = 2
    planned = plan(stores, glance_image("active", first, removed), has_location_status=False)
    assert [location.status for location in planned.locations] == [LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE]
    assert planned.tally.findings[Finding.PRE_JUNO_REMOVED] == 1


def test_a_url_inside_a_configured_store_gets_that_store(stores, tmp_path):
    url = f"file://{tmp_path / 'images' / IMAGE_ID}"
    planned = plan(stores, glance_image("active", glance_location(url)), has_location_status=False)
    assert planned.locations[0].values["store"] == "file"
    assert not planned.tally.findings


def test_a_url_outside_every_store_keeps_glance_store_name_and_is_flagged(stores):
    planned = plan(stores, glance_image("active", glance_location("file:///etc/passwd")), has_location_status=False)
    assert planned.locations[0].values["store"] == "glance:web"
    assert planned.tally.findings[Finding.OUTSIDE_STORE] == 1


@pytest.mark.parametrize(
    ("url", "answer"),
    [
        ("swift+https://tenant:user:key@swift.example/v1/x", True),
        ("http://127.0.0.1:9495/blob/x/0", False),
        ("rbd://fsid/pool/image/snap", False),
        ("file:///var/lib/glance/images/x", False),
    ],
)
def test_has_credentials(url, answer):
    assert has_credentials(url) is answer
