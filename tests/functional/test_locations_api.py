"""PATCH /locations with show_multiple_locations on: Glance's rules, and the holes Glance's history had."""

import pytest
from sqlalchemy import select

from locations.models import Location, LocationStatus
from tests.conftest import identity

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


@pytest.fixture
def shown_settings(settings):
    return {**settings, "locquota.show_multiple_locations": "true", "locquota.quota.locations_per_image": "3"}


@pytest.fixture
def api(make_app, shown_settings):
    return make_app(shown_settings)


@pytest.fixture
def api_delayed(make_app, shown_settings):
    return make_app({**shown_settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "60"})


def patch(app, image_id, operations, headers, status=200):
    return app.patch_json(
        f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": PATCH_TYPE}, status=status
    )


def create(app, headers):
    body = {"name": "img", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=headers, status=201).json


def uploaded(app, headers, data=b"data"):
    image = create(app, headers)
    app.put(f"/v2/images/{image['id']}/file", data, headers={**headers, "Content-Type": "application/octet-stream"})
    return app.get(f"/v2/images/{image['id']}", headers=headers).json


def file_in_store(store_root, name, data=b"data"):
    store_root.mkdir(parents=True, exist_ok=True)
    path = store_root / name
    path.write_bytes(data)
    return f"file://{path}"


def add(url):
    return [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}]


def test_adding_a_location_to_a_queued_image_activates_it(api, tenant, store_root):
    image = create(api, tenant)
    url = file_in_store(store_root, "seed", b"12345")
    body = patch(api, image["id"], add(url), tenant).json
    assert body["status"] == "active"
    assert body["size"] == 5
    assert body["locations"] == [{"url": url, "metadata": {}}]
    assert api.get(f"/v2/images/{image['id']}/file", headers=tenant).body == b"12345"


def test_a_second_location_is_listed_and_charged_as_a_live_location(api, tenant, store_root, db):
    image = uploaded(api, tenant)
    url = file_in_store(store_root, "copy")
    body = patch(api, image["id"], add(url), tenant).json
    assert [location["url"] for location in body["locations"]][1] == url
    assert db.scalars(select(Location.status)).all() == [LocationStatus.ACTIVE, LocationStatus.ACTIVE]


def test_duplicate_location_on_one_image_is_400(api, tenant):
    image = uploaded(api, tenant)
    res = patch(api, image["id"], add(image["locations"][0]["url"]), tenant, status=400)
    assert res.json["error"]["code"] == "duplicate_location"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "location_outside_store"),
        ("swift://user:key@host/container/object", "unsupported_scheme"),
        ("http://127.0.0.1/image", "unsupported_scheme"),
    ],
)
def test_location_outside_every_store_is_400_and_changes_nothing(api, tenant, db, url, code):
    image = create(api, tenant)
    res = patch(api, image["id"], add(url), tenant, status=400)
    assert res.json["error"]["code"] == code
    assert db.scalars(select(Location)).all() == []
    assert api.get(f"/v2/images/{image['id']}", headers=tenant).json["status"] == "queued"


def test_location_without_data_is_400(api, tenant, store_root):
    image = create(api, tenant)
    store_root.mkdir(parents=True, exist_ok=True)
    res = patch(api, image["id"], add(f"file://{store_root}/missing"), tenant, status=400)
    assert res.json["error"]["code"] == "location_data_missing"


def test_another_tenants_data_cannot_be_added(api, tenant, other_tenant, db):
    theirs = uploaded(api, other_tenant)
    mine = create(api, tenant)
    res = patch(api, mine["id"], add(theirs["locations"][0]["url"]), tenant, status=403)
    assert res.json["error"]["code"] == "location_in_use"
    assert len(db.scalars(select(Location)).all()) == 1


def test_the_location_limit_is_413(api, tenant, store_root):
    image = uploaded(api, tenant)
    for name in ("b", "c"):
        patch(api, image["id"], add(file_in_store(store_root, name)), tenant)
    res = patch(api, image["id"], add(file_in_store(store_root, "d")), tenant, status=413)
    assert res.json["error"]["code"] == "location_limit_exceeded"


def test_members_may_not_remove_locations(api, tenant, store_root):
    image = uploaded(api, tenant)
    patch(api, image["id"], add(file_in_store(store_root, "copy")), tenant)
    res = patch(api, image["id"], [{"op": "remove", "path": "/locations/1"}], tenant, status=403)
    assert res.json["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "operations",
    [[{"op": "remove", "path": "/locations/0"}], [{"op": "replace", "path": "/locations", "value": []}]],
)
def test_the_last_location_of_an_active_image_cannot_be_removed(api, tenant, operations, store_root):
    image = uploaded(api, tenant)
    owner_admin = identity("tenant-a", "admin")
    res = patch(api, image["id"], operations, owner_admin, status=403)
    assert "last location" in res.json["error"]["message"]
    assert (store_root / image["id"]).exists()


def test_removed_location_data_is_deleted_at_once_without_delayed_delete(api, tenant, store_root, db):
    image = uploaded(api, tenant)
    copy = file_in_store(store_root, "copy")
    patch(api, image["id"], add(copy), tenant)
    body = patch(api, image["id"], [{"op": "remove", "path": "/locations/1"}], identity("tenant-a", "admin")).json
    assert [location["url"] for location in body["locations"]] == [image["locations"][0]["url"]]
    assert not (store_root / "copy").exists()
    statuses = dict(db.execute(select(Location.url, Location.status)).all())
    assert statuses[copy] is LocationStatus.DELETED


def test_removed_location_goes_pending_and_is_scrubbed_with_delayed_delete(api_delayed, tenant, store_root, db):
    image = uploaded(api_delayed, tenant)
    copy = file_in_store(store_root, "copy")
    patch(api_delayed, image["id"], add(copy), tenant)
    patch(api_delayed, image["id"], [{"op": "remove", "path": "/locations/1"}], identity("tenant-a", "admin"))
    statuses = dict(db.execute(select(Location.url, Location.status)).all())
    assert statuses[copy] is LocationStatus.PENDING_DELETE
    assert (store_root / "copy").exists()  # still there until the scrubber's turn


def test_replace_swaps_the_location_set(api, tenant, store_root):
    image = uploaded(api, tenant)
    new = file_in_store(store_root, "new")
    value = [{"url": new, "metadata": {"k": "v"}}]
    body = patch(
        api, image["id"], [{"op": "replace", "path": "/locations", "value": value}], identity("tenant-a", "admin")
    )
    assert body.json["locations"] == value
    assert not (store_root / image["id"]).exists()


def test_shared_data_survives_the_deletion_of_one_reference(api, tenant, store_root):
    first = uploaded(api, tenant)
    url = first["locations"][0]["url"]
    second = create(api, tenant)
    patch(api, second["id"], add(url), tenant)
    api.delete(f"/v2/images/{first['id']}", headers=tenant, status=204)
    assert (store_root / first["id"]).exists()
    assert api.get(f"/v2/images/{second['id']}/file", headers=tenant).body == b"data"
    api.delete(f"/v2/images/{second['id']}", headers=tenant, status=204)
    assert not (store_root / first["id"]).exists()


def test_location_paths_are_checked(api, tenant):
    image = uploaded(api, tenant)
    for operations in (
        [{"op": "remove", "path": "/locations/7"}],
        [{"op": "remove", "path": "/locations/x"}],
        [{"op": "add", "path": "/locations", "value": {"url": "file:///x", "metadata": {}}}],
        [{"op": "replace", "path": "/locations/0", "value": {"url": "file:///x", "metadata": {}}}],
        [{"op": "add", "path": "/locations/9", "value": {"url": "file:///x", "metadata": {}}}],
    ):
        res = patch(api, image["id"], operations, identity("tenant-a", "admin"), status=400)
        assert res.json["error"]["code"] == "invalid_patch_path"


def test_location_values_are_checked_against_the_schema(api, tenant):
    image = create(api, tenant)
    for value in ({"url": "file:///x"}, {"metadata": {}}, {"url": 5, "metadata": {}}, "file:///x"):
        res = patch(api, image["id"], [{"op": "add", "path": "/locations/-", "value": value}], tenant, status=400)
        assert res.json["error"]["code"] == "invalid_body"
