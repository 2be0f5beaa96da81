"""What each quota_exceeded refusal carries in its details, exactly as docs/errors.md and docs/quota.md say.

Two shapes: an admission (the conditional UPDATE of the usage row) names the limit and the usage; an upload
or a stage refused before its bytes are admitted names what was left. The keys are pinned, not only the code.
"""

import io

import pytest
from webob import Request

MIB = 1024 * 1024


@pytest.fixture
def settings(settings):
    return {**settings, "locquota.show_multiple_locations": "true"}


def set_limits(app, admin, **limits):
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": limits}, headers=admin)


def create(app, headers, status=201):
    body = {"name": "img", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=headers, status=status).json


def test_an_admission_names_the_limit_the_usage_and_the_request(app, tenant, admin):
    set_limits(app, admin, image_count_total=1)
    create(app, tenant)

    details = create(app, tenant, status=413)["error"]["details"]

    assert details == {"resource": "image_count_total", "limit": 1, "usage": 1, "requested": 1, "unit": "images"}


def test_a_size_admission_gives_the_limit_in_mib_and_the_rest_in_bytes(app, tenant, admin, store_root):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    (store_root / "copy").parent.mkdir(parents=True, exist_ok=True)
    (store_root / "copy").write_bytes(b"d" * 10)
    app.put(
        f"/v2/images/{image['id']}/file",
        b"d" * MIB,
        headers={**tenant, "Content-Type": "application/octet-stream"},
        status=204,
    )
    operations = [
        {"op": "add", "path": "/locations/-", "value": {"url": f"file://{store_root / 'copy'}", "metadata": {}}}
    ]
    patch_type = "application/openstack-images-v2.1-json-patch"

    res = app.patch_json(
        f"/v2/images/{image['id']}", operations, headers={**tenant, "Content-Type": patch_type}, status=413
    )

    details = res.json["error"]["details"]
    assert details == {"resource": "image_size_total", "limit": 1, "usage": MIB, "requested": MIB, "unit": "bytes"}


def test_an_upload_announced_past_what_is_left_names_what_is_left(app, tenant, admin):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)

    res = app.put(
        f"/v2/images/{image['id']}/file",
        b"d" * (MIB + 1),
        headers={**tenant, "Content-Type": "application/octet-stream"},
        status=413,
    )

    details = res.json["error"]["details"]
    assert details == {"resource": "image_size_total", "remaining": MIB, "requested": MIB + 1, "unit": "bytes"}


def test_an_upload_of_unknown_length_counts_what_arrived_when_it_passed_what_is_left(wsgi_app, app, tenant, admin):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    environ = {
        "wsgi.input": io.BytesIO(b"d" * (2 * MIB)),
        "wsgi.input_terminated": True,
        "REQUEST_METHOD": "PUT",
        "CONTENT_TYPE": "application/octet-stream",
    }

    res = Request.blank(f"/v2/images/{image['id']}/file", environ=environ, headers=tenant).get_response(wsgi_app)

    assert res.status_code == 413
    details = res.json["error"]["details"]
    assert set(details) == {"resource", "remaining", "requested", "unit"}
    assert details["remaining"] == MIB
    assert MIB < details["requested"] <= 2 * MIB
