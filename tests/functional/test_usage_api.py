"""The usage and limits API: Glance's /v2/info/usage, locquota's /v1/usage, and per-tenant limits."""

import pytest
import redis

from tests.conftest import identity

MIB = 1024 * 1024
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


@pytest.fixture
def settings(settings):
    return {**settings, "locquota.show_multiple_locations": "true", "locquota.upload_chunk_bytes": "65536"}


def uploaded(app, headers, data):
    body = {"name": "img", "disk_format": "raw", "container_format": "bare"}
    image = app.post_json("/v2/images", body, headers=headers, status=201).json
    app.put(f"/v2/images/{image['id']}/file", data, headers={**headers, "Content-Type": "application/octet-stream"})
    return image


def add_location(app, image_id, url, headers):
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}]
    app.patch_json(f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": PATCH_TYPE})


# --- Glance's document ---------------------------------------------------------------------------------


def test_glance_usage_has_glances_shape_with_sizes_in_mib_rounded_down(app, tenant, admin):
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": {"image_size_total": 10}}, headers=admin)
    uploaded(app, tenant, b"a" * (MIB + MIB // 2))
    uploaded(app, tenant, b"b" * 100)
    body = app.get("/v2/info/usage", headers=tenant).json
    assert body == {
        "usage": {
            "image_size_total": {"limit": 10, "usage": 1},
            "image_stage_total": {"limit": -1, "usage": 0},
            "image_count_total": {"limit": -1, "usage": 2},
            "image_count_uploading": {"limit": -1, "usage": 0},
        }
    }


def test_a_tenant_that_never_used_anything_reads_zeros_and_the_defaults(make_app, settings, tenant):
    app = make_app({**settings, "locquota.quota.image_count_total": "5"})
    usage = app.get("/v2/info/usage", headers=tenant).json["usage"]
    assert usage["image_count_total"] == {"limit": 5, "usage": 0}
    assert usage["image_size_total"] == {"limit": -1, "usage": 0}


# --- locquota's document -----------------------------------------------------------------------------------


def test_own_usage_gives_exact_bytes_by_status_and_store(make_app, settings, tenant, admin, store_root):
    app = make_app({**settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "60"})
    kept = uploaded(app, tenant, b"k" * 1000)
    gone = uploaded(app, tenant, b"g" * 300)
    (store_root / "copy").write_bytes(b"k" * 1000)
    add_location(app, kept["id"], f"file://{store_root / 'copy'}", tenant)
    app.delete(f"/v2/images/{gone['id']}", headers=tenant, status=204)
    body = app.get("/v1/usage", headers=tenant).json
    assert body["tenant_id"] == "tenant-a"
    assert body["resources"]["image_size_total"]["usage"] == 2300
    assert body["resources"]["image_size_total"]["usage_unit"] == "bytes"
    assert body["resources"]["image_count_total"]["usage"] == 2  # pending_delete images still count
    assert body["by_status"] == {
        "active": {"size_bytes": 2000, "locations": 2},
        "pending_delete": {"size_bytes": 300, "locations": 1},
    }
    assert body["by_store"] == {
        "file": {"active": {"size_bytes": 2000, "locations": 2}, "pending_delete": {"size_bytes": 300, "locations": 1}}
    }


def test_own_usage_shows_limits_in_mib_and_exact_bytes_and_what_remains(app, tenant, admin):
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": {"image_size_total": 2}}, headers=admin)
    uploaded(app, tenant, b"r" * 1000)
    size = app.get("/v1/usage", headers=tenant).json["resources"]["image_size_total"]
    assert size["limit"] == 2
    assert size["limit_unit"] == "MiB"
    assert size["limit_bytes"] == 2 * MIB
    assert size["remaining"] == 2 * MIB - 1000
    assert size["overridden"] is True


def test_usage_is_per_tenant(app, tenant, other_tenant):
    uploaded(app, tenant, b"x" * 10)
    theirs = app.get("/v1/usage", headers=other_tenant).json
    assert theirs["tenant_id"] == "tenant-b"
    assert theirs["resources"]["image_size_total"]["usage"] == 0


def test_an_admin_reads_any_tenants_usage(app, tenant, admin):
    uploaded(app, tenant, b"x" * 10)
    body = app.get("/v1/tenants/tenant-a/usage", headers=admin).json
    assert body["tenant_id"] == "tenant-a"
    assert body["resources"]["image_size_total"]["usage"] == 10


def test_a_member_cannot_read_another_tenants_usage(app, tenant):
    res = app.get("/v1/tenants/tenant-b/usage", headers=tenant, status=403)
    assert res.json["error"]["code"] == "forbidden"


# --- the cache -----------------------------------------------------------------------------------------------


def test_a_read_is_cached_and_the_next_is_served_from_redis(app, tenant, redis_url):
    uploaded(app, tenant, b"c" * 10)
    first = app.get("/v1/usage", headers=tenant).json
    second = app.get("/v1/usage", headers=tenant).json
    assert first["freshness"]["source"] == "database"
    assert second["freshness"]["source"] == "cache"
    assert second["resources"] == first["resources"]
    assert redis.Redis.from_url(redis_url).ttl("locquota:usage:v1:tenant-a") <= 10


def test_a_committed_change_drops_the_cached_copy(app, tenant):
    uploaded(app, tenant, b"c" * 10)
    app.get("/v1/usage", headers=tenant)
    uploaded(app, tenant, b"d" * 20)
    body = app.get("/v1/usage", headers=tenant).json
    assert body["freshness"]["source"] == "database"
    assert body["resources"]["image_size_total"]["usage"] == 30


def test_a_limit_change_drops_the_cached_copy(app, tenant, admin):
    app.get("/v2/info/usage", headers=tenant)
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": {"image_count_total": 7}}, headers=admin)
    assert app.get("/v2/info/usage", headers=tenant).json["usage"]["image_count_total"]["limit"] == 7


def test_a_refused_request_leaves_the_cached_copy_in_place(app, tenant, admin, redis_url):
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": {"image_count_total": 0}}, headers=admin)
    app.get("/v1/usage", headers=tenant)
    app.post_json("/v2/images", {"name": "x"}, headers=tenant, status=413)
    assert redis.Redis.from_url(redis_url).exists("locquota:usage:v1:tenant-a")


def test_a_foreign_cached_document_is_ignored(app, tenant, redis_url):
    redis.Redis.from_url(redis_url).set("locquota:usage:v1:tenant-a", '{"usage": "not ours"}')
    body = app.get("/v1/usage", headers=tenant).json
    assert body["freshness"]["source"] == "database"
    assert body["resources"]["image_count_total"]["usage"] == 0


def test_without_redis_every_read_comes_from_the_database(make_app, settings, tenant):
    app = make_app({**settings, "locquota.redis_url": ""})
    uploaded(app, tenant, b"n" * 5)
    for _ in range(2):
        body = app.get("/v1/usage", headers=tenant).json
        assert body["freshness"]["source"] == "database"
        assert body["resources"]["image_size_total"]["usage"] == 5


# --- limits ------------------------------------------------------------------------------------------------


def test_limits_of_a_tenant_without_overrides_are_the_defaults(make_app, settings, admin):
    app = make_app({**settings, "locquota.quota.image_size_total": "100"})
    body = app.get("/v1/tenants/tenant-a/limits", headers=admin).json
    assert body["limits"]["image_size_total"] == 100
    assert body["limits"]["locations_per_image"] == 10
    assert body["overrides"] == {}
    assert body["defaults"] == body["limits"]
    assert body["units"]["image_size_total"] == "MiB"


def test_put_replaces_the_overrides_and_a_resource_left_out_returns_to_its_default(app, admin):
    app.put_json("/v1/tenants/t1/limits", {"limits": {"image_size_total": 5, "image_count_total": 3}}, headers=admin)
    body = app.put_json("/v1/tenants/t1/limits", {"limits": {"image_count_total": 4}}, headers=admin).json
    assert body["overrides"] == {"image_count_total": 4}
    assert body["limits"]["image_size_total"] == -1
    assert app.get("/v1/tenants/t1/limits", headers=admin).json == body


def test_null_means_the_default(app, admin):
    body = app.put_json("/v1/tenants/t1/limits", {"limits": {"image_count_total": None}}, headers=admin).json
    assert body["overrides"] == {}


def test_limits_are_per_tenant(app, admin):
    app.put_json("/v1/tenants/t1/limits", {"limits": {"image_count_total": 1}}, headers=admin)
    assert app.get("/v1/tenants/t2/limits", headers=admin).json["overrides"] == {}


def test_limits_need_the_admin_role(app, tenant):
    res = app.get("/v1/tenants/tenant-a/limits", headers=tenant, status=403)
    assert res.json["error"]["code"] == "forbidden"
    res = app.put_json("/v1/tenants/tenant-a/limits", {"limits": {}}, headers=tenant, status=403)
    assert res.json["error"]["code"] == "forbidden"


def test_a_tenant_id_with_url_escapes_is_one_tenant(app, admin):
    app.put_json("/v1/tenants/a%20b%2Bc/limits", {"limits": {"image_count_total": 2}}, headers=admin)
    assert app.get("/v1/tenants/a%20b%2Bc/limits", headers=admin).json["tenant_id"] == "a b+c"
    headers = identity("a b+c")
    assert app.get("/v2/info/usage", headers=headers).json["usage"]["image_count_total"]["limit"] == 2
