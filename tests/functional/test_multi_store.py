"""Glance's multi-store configuration (issue 15): enabled_backends, /v2/info/stores, X-Image-Meta-Store.

Two real file stores in separate directories; Glance 33's observed answers (../shared/GLANCE_COMPAT.md,
"Multi-store"). The real rbd, s3 and swift backends come with their own servers.
"""

import pytest
from sqlalchemy import select

from locations.models import Location
from locquota.settings import Settings, SettingsError
from tests.conftest import identity, multi_store

IMAGE = {"name": "ms", "disk_format": "raw", "container_format": "bare"}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def multi_settings(settings, tmp_path) -> dict[str, str]:
    stores = {
        "fast": ("file", {"filesystem_store_datadir": str(tmp_path / "fast"), "store_description": "Fast SSDs"}),
        "cheap": ("file", {"filesystem_store_datadir": str(tmp_path / "cheap")}),
    }
    return {**multi_store(settings, "fast", stores), "locquota.show_multiple_locations": "true"}


@pytest.fixture
def multi(make_app, multi_settings):
    return make_app(multi_settings)


def test_stores_are_listed_with_the_default_marked(multi):
    stores = multi.get("/v2/info/stores", headers=identity("tenant-a"), status=200).json

    assert stores == {
        "stores": [
            {"id": "fast", "description": "Fast SSDs", "default": "true"},
            {"id": "cheap", "description": ""},
        ]
    }


def test_store_details_are_for_admins(multi):
    multi.get("/v2/info/stores/detail", headers=identity("tenant-a"), status=403)
    detail = multi.get("/v2/info/stores/detail", headers=identity("operators", "admin"), status=200).json

    assert [(store["id"], store["type"]) for store in detail["stores"]] == [("fast", "file"), ("cheap", "file")]


def test_an_upload_goes_to_the_store_it_names(multi, engine, tmp_path, usage_of):
    tenant = identity("tenant-a")
    image = multi.post_json("/v2/images", IMAGE, headers=tenant, status=201).json

    multi.put(f"/v2/images/{image['id']}/file", b"c" * 300, headers={**tenant, **OCTET, "X-Image-Meta-Store": "cheap"})

    shown = multi.get(f"/v2/images/{image['id']}", headers=tenant).json
    assert shown["stores"] == "cheap"
    assert [location["metadata"] for location in shown["locations"]] == [{"store": "cheap"}]
    assert sorted(path.name for path in (tmp_path / "cheap").iterdir()) == [image["id"]]
    assert not (tmp_path / "fast").exists() or list((tmp_path / "fast").iterdir()) == []
    assert usage_of("tenant-a")["space"] == {("cheap", "active"): (300, 1)}
    listed = multi.get("/v2/images", headers=tenant).json["images"]
    assert [entry["stores"] for entry in listed] == ["cheap"]


def test_without_a_store_an_upload_goes_to_the_default(multi, engine):
    tenant = identity("tenant-a")
    image = multi.post_json("/v2/images", IMAGE, headers=tenant, status=201).json

    multi.put(f"/v2/images/{image['id']}/file", b"f", headers={**tenant, **OCTET})

    assert multi.get(f"/v2/images/{image['id']}", headers=tenant).json["stores"] == "fast"
    with engine.connect() as connection:
        assert connection.scalar(select(Location.store)) == "fast"


@pytest.mark.parametrize("store", ["nowhere", "", "../fast", "x" * 300])
def test_an_upload_to_an_unknown_store_is_400_and_the_image_stays_queued(multi, store, usage_of):
    tenant = identity("tenant-a")
    image = multi.post_json("/v2/images", IMAGE, headers=tenant, status=201).json

    refused = multi.put(
        f"/v2/images/{image['id']}/file", b"x", headers={**tenant, **OCTET, "X-Image-Meta-Store": store}, status=400
    )

    assert refused.json["error"]["code"] == "unknown_store"
    assert multi.get(f"/v2/images/{image['id']}", headers=tenant).json["status"] == "queued"
    assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 0


def test_a_single_store_deployment_has_no_stores_api(app, tenant):
    app.get("/v2/info/stores", headers=tenant, status=404)
    image = app.post_json("/v2/images", IMAGE, headers=tenant, status=201).json
    app.put(f"/v2/images/{image['id']}/file", b"x", headers={**tenant, **OCTET, "X-Image-Meta-Store": "nowhere"})

    assert "stores" not in app.get(f"/v2/images/{image['id']}", headers=tenant).json


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"locquota.enabled_backends": "fast", "locquota.default_backend": "fast"}, "name:type"),
        ({"locquota.enabled_backends": "a:file, a:file", "locquota.default_backend": "a"}, "twice"),
        ({"locquota.enabled_backends": "a:file", "locquota.default_backend": "b"}, "default_backend"),
        ({"locquota.enabled_backends": "a:file"}, "default_backend"),
    ],
)
def test_a_bad_multi_store_configuration_is_refused_naming_the_setting(raw, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_ini(raw)


PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def add_location(app, image_id: str, url: str, metadata: dict, status: int | str = 200):
    body = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": metadata}}]
    return app.patch_json(f"/v2/images/{image_id}", body, headers={**identity("tenant-a"), **PATCH}, status=status)


def test_an_added_location_names_the_store_its_url_is_in(multi, tmp_path):
    data = tmp_path / "cheap" / "copy"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"copy")
    image = multi.post_json("/v2/images", IMAGE, headers=identity("tenant-a"), status=201).json

    added = add_location(multi, image["id"], f"file://{data}", {"kind": "copy"}).json

    assert added["locations"] == [{"url": f"file://{data}", "metadata": {"kind": "copy", "store": "cheap"}}]
    assert added["stores"] == "cheap"


def test_a_location_whose_metadata_names_another_store_is_400_and_changes_nothing(multi, tmp_path, usage_of):
    data = tmp_path / "cheap" / "copy"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"copy")
    image = multi.post_json("/v2/images", IMAGE, headers=identity("tenant-a"), status=201).json
    before = usage_of("tenant-a")

    refused = add_location(multi, image["id"], f"file://{data}", {"store": "fast"}, status=400).json

    assert refused["error"]["code"] == "invalid_body"
    assert multi.get(f"/v2/images/{image['id']}", headers=identity("tenant-a")).json["status"] == "queued"
    assert usage_of("tenant-a") == before
