"""The Glance v2 images API through WebTest, as GLANCE_COMPAT.md's normal-flow table describes it."""

import hashlib
import os

import pytest
from sqlalchemy import func, select

from locations.models import Image, Location, LocationStatus, data_key_digest
from tests.conftest import identity, random_id
from tests.conftest import multi_store as multi_store_settings

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def patch(app, image_id, operations, headers, status=200):
    return app.patch_json(
        f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": PATCH_TYPE}, status=status
    )


def test_create_returns_a_queued_image_owned_by_the_caller(app, tenant):
    res = app.post_json(
        "/v2/images", {"name": "cirros", "disk_format": "qcow2", "container_format": "bare", "os_distro": "cirros"},
        headers=tenant, status=201,
    )  # fmt: skip
    body = res.json
    assert body["status"] == "queued"
    assert body["visibility"] == "shared"
    assert body["owner"] == "tenant-a"
    assert body["os_distro"] == "cirros"
    assert (body["size"], body["checksum"], body["os_hash_algo"], body["os_hash_value"]) == (None, None, None, None)
    assert res.headers["Location"].endswith(f"/v2/images/{body['id']}")
    assert body["self"] == f"/v2/images/{body['id']}"
    assert body["file"] == f"/v2/images/{body['id']}/file"
    assert body["schema"] == "/v2/schemas/image"


def test_create_accepts_a_client_chosen_id(app, tenant, new_image):
    image_id = random_id()
    assert new_image(id=image_id)["id"] == image_id
    assert app.get(f"/v2/images/{image_id}", headers=tenant).json["id"] == image_id


def test_admin_may_create_an_image_for_another_project(new_image, admin):
    assert new_image(headers=admin, owner="tenant-a")["owner"] == "tenant-a"


def test_upload_activates_the_image_with_glance_checksums(app, tenant, new_image, upload):
    data = os.urandom(10_000)  # several upload chunks of 4096 bytes
    image = new_image()
    upload(image["id"], data)
    shown = app.get(f"/v2/images/{image['id']}", headers=tenant).json
    assert shown["status"] == "active"
    assert shown["size"] == len(data)
    assert shown["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert shown["os_hash_algo"] == "sha512"
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()


def test_upload_writes_one_active_location_in_the_default_store(app, new_image, upload, db, store_root):
    image = new_image()
    upload(image["id"], b"abc")
    location = db.scalars(select(Location)).one()
    assert location.status is LocationStatus.ACTIVE
    assert location.store == "file"
    assert location.size_bytes == 3
    assert (store_root / image["id"]).read_bytes() == b"abc"


def test_upload_to_an_active_image_is_a_conflict(new_image, upload):
    image = new_image()
    upload(image["id"], b"abc")
    res = upload(image["id"], b"other", status=409)
    assert res.json["error"]["code"] == "invalid_image_status"


def test_download_streams_the_data_with_content_md5(app, tenant, new_image, upload):
    image = new_image()
    upload(image["id"], b"x" * 9000)
    res = app.get(f"/v2/images/{image['id']}/file", headers=tenant)
    assert res.body == b"x" * 9000
    assert res.content_type == "application/octet-stream"
    assert res.headers["Content-Length"] == "9000"
    assert res.headers["Content-MD5"] == hashlib.md5(b"x" * 9000, usedforsecurity=False).hexdigest()


def test_download_of_a_queued_image_is_204_without_body(app, tenant, new_image):
    res = app.get(f"/v2/images/{new_image()['id']}/file", headers=tenant, status=204)
    assert res.body == b""


def test_get_shows_no_location_status_and_no_locations_by_default(app, tenant, new_image, upload):
    image = new_image()
    upload(image["id"], b"abc")
    shown = app.get(f"/v2/images/{image['id']}", headers=tenant).json
    assert "locations" not in shown
    assert "direct_url" not in shown


@pytest.fixture
def showing_app(settings, make_app):
    return make_app({**settings, "locquota.show_multiple_locations": "true", "locquota.show_image_direct_url": "true"})


def test_locations_shown_when_enabled_list_only_active_ones_without_status(showing_app, tenant, db, store_root):
    image = showing_app.post_json(
        "/v2/images", {"disk_format": "raw", "container_format": "bare"}, headers=tenant, status=201
    ).json
    showing_app.put(
        f"/v2/images/{image['id']}/file", b"abc", headers={**tenant, "Content-Type": "application/octet-stream"}
    )
    active = db.scalars(select(Location)).one()
    db.add(
        Location(
            image_id=active.image_id, url=active.url + ".old", data_key_hash=data_key_digest(active.url + ".old"),
            store="file", location_metadata={},
            status=LocationStatus.PENDING_DELETE, size_bytes=3, created_at=active.created_at,
            updated_at=active.updated_at,
        )
    )  # fmt: skip
    db.commit()
    shown = showing_app.get(f"/v2/images/{image['id']}", headers=tenant).json
    assert shown["locations"] == [{"url": f"file://{store_root}/{image['id']}", "metadata": {}}]
    assert shown["direct_url"] == f"file://{store_root}/{image['id']}"


def test_another_projects_image_is_not_found_for_every_method(app, new_image, other_tenant, upload):
    image = new_image()
    upload(image["id"], b"abc")
    url = f"/v2/images/{image['id']}"
    assert app.get(url, headers=other_tenant, status=404).json["error"]["code"] == "image_not_found"
    patch(app, image["id"], [{"op": "replace", "path": "/name", "value": "x"}], other_tenant, status=404)
    app.get(url + "/file", headers=other_tenant, status=404)
    app.delete(url, headers=other_tenant, status=404)
    upload(image["id"], b"abc", headers=other_tenant, status=404)


def test_admin_sees_another_projects_image(app, new_image, admin):
    image = new_image()
    assert app.get(f"/v2/images/{image['id']}", headers=admin).json["owner"] == "tenant-a"


def test_patch_adds_replaces_and_removes_properties(app, tenant, new_image):
    image = new_image(os_distro="cirros")
    body = patch(
        app,
        image["id"],
        [
            {"op": "add", "path": "/hw_disk_bus", "value": "scsi"},
            {"op": "replace", "path": "/os_distro", "value": "ubuntu"},
            {"op": "replace", "path": "/name", "value": "renamed"},
            {"op": "add", "path": "/tags", "value": ["a", "b", "a"]},
            {"op": "replace", "path": "/min_ram", "value": 512},
        ],
        tenant,
    ).json
    assert (body["hw_disk_bus"], body["os_distro"], body["name"], body["min_ram"]) == ("scsi", "ubuntu", "renamed", 512)
    assert body["tags"] == ["a", "b"]
    body = patch(app, image["id"], [{"op": "remove", "path": "/hw_disk_bus"}], tenant).json
    assert "hw_disk_bus" not in body
    assert app.get(f"/v2/images/{image['id']}", headers=tenant).json["name"] == "renamed"


def test_patch_with_a_failing_operation_changes_nothing(app, tenant, new_image):
    image = new_image(os_distro="cirros")
    patch(
        app,
        image["id"],
        [{"op": "replace", "path": "/os_distro", "value": "x"}, {"op": "remove", "path": "/missing"}],
        tenant,
        status=409,
    )
    assert app.get(f"/v2/images/{image['id']}", headers=tenant).json["os_distro"] == "cirros"


def test_patch_updates_updated_at(app, tenant, new_image, clock):
    image = new_image()
    clock.advance(seconds=90)
    body = patch(app, image["id"], [{"op": "replace", "path": "/name", "value": "n"}], tenant).json
    assert body["updated_at"] > body["created_at"]


def test_delete_removes_data_and_hides_the_image_from_everyone(app, tenant, admin, new_image, upload, db, store_root):
    image = new_image()
    upload(image["id"], b"abc")
    app.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    for headers in (tenant, admin):
        app.get(f"/v2/images/{image['id']}", headers=headers, status=404)
    assert not (store_root / image["id"]).exists()
    assert db.scalars(select(Location.status)).one() is LocationStatus.DELETED
    assert db.scalar(select(func.count()).select_from(Image)) == 1  # soft delete: the row stays


def test_deleted_image_is_not_listed_even_when_asked_by_status(app, tenant, new_image):
    image = new_image()
    app.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    for query in ("", "?status=deleted", "?status=pending_delete"):
        assert app.get(f"/v2/images{query}", headers=tenant).json["images"] == []


def test_protected_image_cannot_be_deleted_until_unprotected(app, tenant, new_image):
    image = new_image(protected=True)
    assert (
        app.delete(f"/v2/images/{image['id']}", headers=tenant, status=403).json["error"]["code"] == "image_protected"
    )
    patch(app, image["id"], [{"op": "replace", "path": "/protected", "value": False}], tenant)
    app.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)


class TestListing:
    def test_list_shape_and_default_order_newest_first(self, app, tenant, new_image, clock):
        first = new_image(name="one")
        clock.advance(seconds=1)
        second = new_image(name="two")
        body = app.get("/v2/images", headers=tenant).json
        assert [image["id"] for image in body["images"]] == [second["id"], first["id"]]
        assert body["first"] == "/v2/images"
        assert body["schema"] == "/v2/schemas/images"
        assert "next" not in body

    def test_list_shows_only_the_callers_images(self, app, tenant, other_tenant, new_image):
        mine = new_image()
        new_image(headers=other_tenant)
        assert [image["id"] for image in app.get("/v2/images", headers=tenant).json["images"]] == [mine["id"]]

    def test_admin_lists_every_project_and_filters_by_owner(self, app, admin, other_tenant, new_image):
        new_image()
        theirs = new_image(headers=other_tenant)
        assert len(app.get("/v2/images", headers=admin).json["images"]) == 2
        listed = app.get("/v2/images?owner=tenant-b", headers=admin).json["images"]
        assert [image["id"] for image in listed] == [theirs["id"]]

    @pytest.mark.parametrize("sort", ["", "&sort_key=name&sort_dir=asc", "&sort=size:asc,name:desc", "&sort_key=id"])
    def test_paging_with_next_links_returns_every_image_once(self, app, tenant, new_image, clock, sort):
        created = set()
        for index in range(7):
            clock.advance(seconds=index % 2)  # ties on created_at too
            created.add(new_image(name=f"img-{index % 3}")["id"])
        seen, url = [], f"/v2/images?limit=3{sort}"
        while url:
            body = app.get(url, headers=tenant).json
            assert len(body["images"]) <= 3
            seen += [image["id"] for image in body["images"]]
            url = body.get("next")
        assert sorted(seen) == sorted(created)
        assert len(seen) == len(created)

    def test_next_link_keeps_the_query_and_carries_the_marker(self, app, tenant, new_image):
        for _ in range(3):
            new_image(name="n")
        body = app.get("/v2/images?limit=2&name=n", headers=tenant).json
        assert body["first"] == "/v2/images?limit=2&name=n"
        assert body["next"] == f"/v2/images?limit=2&name=n&marker={body['images'][-1]['id']}"

    def test_sort_by_name_both_ways(self, app, tenant, new_image):
        for name in ("b", "c", "a"):
            new_image(name=name)
        names = [i["name"] for i in app.get("/v2/images?sort_key=name&sort_dir=asc", headers=tenant).json["images"]]
        assert names == ["a", "b", "c"]
        names = [i["name"] for i in app.get("/v2/images?sort=name:desc", headers=tenant).json["images"]]
        assert names == ["c", "b", "a"]

    def test_filters_name_in_tag_property_and_size(self, app, tenant, new_image, upload):
        a = new_image(name="a", tags=["gold"], os_distro="ubuntu")
        b = new_image(name="b", os_distro="debian")
        new_image(name="c")
        upload(b["id"], b"12345")

        def ids(query):
            return sorted(i["id"] for i in app.get(f"/v2/images?{query}", headers=tenant).json["images"])

        assert ids("name=in:a,b") == sorted([a["id"], b["id"]])
        assert ids("tag=gold") == [a["id"]]
        assert ids("os_distro=debian") == [b["id"]]
        assert ids("size_min=5&size_max=5") == [b["id"]]
        assert ids("status=active") == [b["id"]]
        assert ids("status=bogus") == []

    def test_hidden_images_are_listed_only_when_asked(self, app, tenant, new_image):
        hidden = new_image(os_hidden=True)
        shown = new_image()
        assert [i["id"] for i in app.get("/v2/images", headers=tenant).json["images"]] == [shown["id"]]
        assert [i["id"] for i in app.get("/v2/images?os_hidden=true", headers=tenant).json["images"]] == [hidden["id"]]

    def test_limit_is_capped_by_api_limit_max(self, app, tenant, new_image):
        for _ in range(3):
            new_image()
        assert len(app.get("/v2/images?limit=2", headers=tenant).json["images"]) == 2
        assert len(app.get("/v2/images?limit=100000", headers=tenant).json["images"]) == 3


def test_schemas_describe_every_attribute_the_api_returns(app, tenant, new_image, upload):
    image = new_image(os_distro="x")
    upload(image["id"], b"abc")
    schema = app.get("/v2/schemas/image", headers=tenant).json
    shown = app.get(f"/v2/images/{image['id']}", headers=tenant).json
    base = set(schema["properties"])
    assert {"id", "status", "checksum", "os_hash_value", "locations", "tags"} <= base
    assert schema["additionalProperties"] == {"type": "string"}
    assert all(key in base or isinstance(value, str) for key, value in shown.items())
    collection = app.get("/v2/schemas/images", headers=tenant).json
    assert collection["properties"]["images"]["items"]["name"] == "image"


def test_version_discovery_needs_no_identity(app):
    body = app.get("/", status=300).json
    current = [version["id"] for version in body["versions"] if version["status"] == "CURRENT"]
    assert current == ["v2.17"]  # Glance 33 without an image cache: 2.18 (cache) is not served
    assert app.get("/versions").json == body


@pytest.mark.parametrize(
    ("multi_store", "expected"),
    [
        (False, ["2.15", "2.9", "2.17", "2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.1", "2.0"]),
        (True, ["2.15", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.17", "2.7", "2.6", "2.5", "2.4", "2.3",
                "2.2", "2.1", "2.0"]),
    ],
)  # fmt: skip
def test_the_versions_advertised_are_glances_for_the_same_configuration(
    make_app, settings, tmp_path, multi_store, expected
):
    if multi_store:
        stores = {"fast": ("file", {"filesystem_store_datadir": str(tmp_path / "fast")})}
        settings = multi_store_settings(settings, "fast", stores)
    body = make_app(settings).get("/versions").json
    assert [version["id"] for version in body["versions"]] == [f"v{version}" for version in expected]


def test_identity_header_percent_encoded_roles_are_decoded(app, new_image, other_tenant):
    image = new_image(headers=other_tenant)
    admin = {**identity("ops"), "X-Roles": "member%2Cadmin"}
    assert app.get(f"/v2/images/{image['id']}", headers=admin).json["id"] == image["id"]


class TestTags:
    def test_put_tag_is_idempotent_and_delete_removes_it(self, app, tenant, new_image):
        image = new_image(tags=["a"])
        app.put(f"/v2/images/{image['id']}/tags/b", headers=tenant, status=204)
        app.put(f"/v2/images/{image['id']}/tags/b", headers=tenant, status=204)
        assert app.get(f"/v2/images/{image['id']}", headers=tenant).json["tags"] == ["a", "b"]
        app.delete(f"/v2/images/{image['id']}/tags/a", headers=tenant, status=204)
        assert app.get(f"/v2/images/{image['id']}", headers=tenant).json["tags"] == ["b"]

    def test_deleting_a_missing_tag_is_404(self, app, tenant, new_image):
        image = new_image()
        res = app.delete(f"/v2/images/{image['id']}/tags/nope", headers=tenant, status=404)
        assert res.json["error"]["code"] == "tag_not_found"

    def test_tags_of_another_projects_image_are_not_found(self, app, new_image, other_tenant):
        image = new_image()
        res = app.put(f"/v2/images/{image['id']}/tags/x", headers=other_tenant, status=404)
        assert res.json["error"]["code"] == "image_not_found"

    def test_a_tag_over_255_characters_is_refused(self, app, tenant, new_image):
        image = new_image()
        res = app.put(f"/v2/images/{image['id']}/tags/{'t' * 256}", headers=tenant, status=400)
        assert res.json["error"]["code"] == "invalid_body"
        assert app.get(f"/v2/images/{image['id']}", headers=tenant).json["tags"] == []

    def test_the_129th_tag_is_refused(self, app, tenant, new_image):
        image = new_image(tags=[f"t{n}" for n in range(128)])
        res = app.put(f"/v2/images/{image['id']}/tags/one-more", headers=tenant, status=413)
        assert res.json["error"]["code"] == "tag_limit_exceeded"
        assert len(app.get(f"/v2/images/{image['id']}", headers=tenant).json["tags"]) == 128


def test_the_129th_custom_property_is_refused(app, tenant, new_image):
    image = new_image(**{f"p{n}": "v" for n in range(128)})
    res = patch(app, image["id"], [{"op": "add", "path": "/p128", "value": "v"}], tenant, status=413)
    assert res.json["error"]["code"] == "property_limit_exceeded"
    assert "p128" not in app.get(f"/v2/images/{image['id']}", headers=tenant).json
