"""DELETE /v2/stores/{store}/{image} (issue 16): an image's data leaves one store, as Glance 33 answers it.

Two real file stores; Glance's observed answers in ../shared/GLANCE_COMPAT.md ("Multi-store, import and the
locations API"): member 403, admin 204 with the other locations kept, a store the image is not in 404, an
unknown store 409, a queued image 409, the last store 403.
"""

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import Location, LocationStatus
from locations.scrubber import Scrubber
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from tests.conftest import identity, multi_store
from tests.fakes import POLICY, SCRUB_TIME, scrub_settings, unit_of_work_on

TENANT = identity("tenant-a")
ADMIN = identity("operators", "admin")
IMAGE = {"name": "two-stores", "disk_format": "raw", "container_format": "bare"}
OCTET = {"Content-Type": "application/octet-stream"}
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
DATA = b"d" * 300


def two_store_settings(settings, tmp_path, *, delayed_delete: bool) -> dict[str, str]:
    stores = {name: ("file", {"filesystem_store_datadir": str(tmp_path / name)}) for name in ("fast", "cheap")}
    raw = {**multi_store(settings, "fast", stores), "locquota.show_multiple_locations": "true"}
    return scrub_settings(raw, delayed_delete=delayed_delete)


@pytest.fixture
def api(make_app, settings, tmp_path):
    return make_app(two_store_settings(settings, tmp_path, delayed_delete=True))


@pytest.fixture
def api_now(make_app, settings, tmp_path):
    return make_app(two_store_settings(settings, tmp_path, delayed_delete=False))


def in_stores(app, tmp_path, *stores: str) -> str:
    """An active image of tenant-a with one location per store named (the first by upload, then by PATCH)."""
    image = app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    app.put(f"/v2/images/{image}/file", DATA, headers={**TENANT, **OCTET, "X-Image-Meta-Store": stores[0]})
    for store in stores[1:]:
        copy = tmp_path / store / f"copy-{uuid.uuid4()}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(DATA)
        add = [{"op": "add", "path": "/locations/-", "value": {"url": f"file://{copy}", "metadata": {}}}]
        app.patch_json(f"/v2/images/{image}", add, headers={**TENANT, "Content-Type": PATCH_TYPE})
    return image


def files(tmp_path, store: str) -> list[str]:
    root = tmp_path / store
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def test_an_admin_removes_the_data_in_one_store_and_it_is_scrubbed_later(api, tmp_path, engine, clock, usage_of):
    image = in_stores(api, tmp_path, "fast", "cheap")

    api.delete(f"/v2/stores/cheap/{image}", headers=ADMIN, status=204)

    shown = api.get(f"/v2/images/{image}", headers=TENANT).json
    assert (shown["status"], shown["stores"]) == ("active", "fast")
    assert [location["metadata"]["store"] for location in shown["locations"]] == ["fast"]
    assert usage_of("tenant-a")["space"] == {("fast", "active"): (300, 1), ("cheap", "pending_delete"): (300, 1)}
    assert len(files(tmp_path, "cheap")) == 1  # still there until scrubbed (and restorable)

    clock.advance(seconds=SCRUB_TIME + 1)
    stores = StoreRegistry(
        {
            "fast": FileStore("fast", {"filesystem_store_datadir": str(tmp_path / "fast")}),
            "cheap": FileStore("cheap", {"filesystem_store_datadir": str(tmp_path / "cheap")}),
        },
        "fast",
    )
    assert Scrubber(unit_of_work_on(engine), stores, clock, POLICY, batch_size=10, pool_size=1).run_once().deleted == 1
    assert files(tmp_path, "cheap") == []
    assert files(tmp_path, "fast") == [image]
    assert usage_of("tenant-a")["space"] == {("fast", "active"): (300, 1)}


def test_without_delayed_delete_the_data_goes_at_once(api_now, tmp_path, usage_of):
    image = in_stores(api_now, tmp_path, "fast", "cheap")

    api_now.delete(f"/v2/stores/fast/{image}", headers=ADMIN, status=204)

    assert api_now.get(f"/v2/images/{image}", headers=TENANT).json["stores"] == "cheap"
    assert files(tmp_path, "fast") == []
    assert usage_of("tenant-a")["space"] == {("cheap", "active"): (300, 1)}


@pytest.mark.parametrize(
    ("stores", "path_store", "caller", "status", "code"),
    [
        (("fast", "cheap"), "cheap", TENANT, 403, "forbidden"),  # a member may not (delete_image_location)
        (("fast", "cheap"), "nowhere", ADMIN, 409, "store_not_enabled"),
        (("fast", "fast"), "cheap", ADMIN, 404, "not_found"),  # the image is not in that store
        (("fast",), "fast", ADMIN, 403, "forbidden"),  # its only location
        (("fast",), "cheap", ADMIN, 403, "forbidden"),  # Glance checks "only location" before the store
        (("fast", "fast"), "fast", ADMIN, 403, "forbidden"),  # every location of the image is in that store
    ],
)
def test_glances_refusals_change_nothing(api, tmp_path, usage_of, stores, path_store, caller, status, code):
    image = in_stores(api, tmp_path, *stores)
    before = usage_of("tenant-a")

    refused = api.delete(f"/v2/stores/{path_store}/{image}", headers=caller, status=status)

    assert refused.json["error"]["code"] == code
    assert usage_of("tenant-a") == before
    assert len(api.get(f"/v2/images/{image}", headers=TENANT).json["locations"]) == len(stores)


def test_a_queued_image_is_a_conflict(api):
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    assert api.delete(f"/v2/stores/fast/{image}", headers=ADMIN, status=409).json["error"]["code"] == (
        "invalid_image_status"
    )


def test_another_projects_image_is_not_found_and_a_bad_id_is_400(api, tmp_path, engine):
    image = in_stores(api, tmp_path, "fast", "cheap")

    api.delete(f"/v2/stores/cheap/{image}", headers=identity("tenant-b"), status=404)
    api.delete(f"/v2/stores/cheap/{uuid.uuid4()}", headers=ADMIN, status=404)
    api.delete("/v2/stores/cheap/not-an-id", headers=ADMIN, status=404)

    with Session(engine) as session:
        statuses = session.scalars(select(Location.status).where(Location.image_id == uuid.UUID(image))).all()
    assert statuses == [LocationStatus.ACTIVE, LocationStatus.ACTIVE]


def test_without_several_stores_there_is_no_such_route(app, tenant):
    app.delete(f"/v2/stores/file/{uuid.uuid4()}", headers=ADMIN, status=404)
