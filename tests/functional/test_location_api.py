"""Glance's v2.17 locations API (issue 16): POST and GET /v2/images/{id}/locations.

A file store and an http store (a real HTTP server on 127.0.0.1); Glance 33's observed answers in
../shared/GLANCE_COMPAT.md: GET member 403, service and admin 200; POST by a service: 202 then active with
hashes; bad input 400; another project 404; an active image 409; a member adding a file:// URL 403.
"""

import hashlib
import uuid

import pytest

from tests.conftest import identity, multi_store
from tests.web_server import DATA, base, web_fixture  # noqa: F401  (web_fixture: the `web` fixture)

MEMBER = identity("tenant-a")
SERVICE = identity("tenant-a", "member", "service")
ADMIN = identity("operators", "admin")
IMAGE = {"name": "by-location", "disk_format": "raw", "container_format": "bare"}
FILE_DATA = b"file data " * 1000


@pytest.fixture
def api(make_app, settings, tmp_path, web):
    stores = {
        "local": ("file", {"filesystem_store_datadir": str(tmp_path / "local")}),
        "web": ("http", {"http_store_allowed_hosts": f"127.0.0.1:{web.server_port}"}),
    }
    return make_app(multi_store(settings, "local", stores))


@pytest.fixture
def stored_file(tmp_path) -> str:
    path = tmp_path / "local" / f"data-{uuid.uuid4()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FILE_DATA)
    return f"file://{path}"


def new_image(api) -> str:
    return api.post_json("/v2/images", IMAGE, headers=MEMBER, status=201).json["id"]


def post(api, image: str, body: object, caller: dict[str, str], status: int):
    return api.post_json(f"/v2/images/{image}/locations", body, headers=caller, status=status)


def test_a_service_adds_a_location_and_the_image_is_active_with_its_hashes(api, stored_file, usage_of):
    image = new_image(api)

    post(api, image, {"url": stored_file}, SERVICE, 202)

    shown = api.get(f"/v2/images/{image}", headers=MEMBER).json
    assert (shown["status"], shown["size"], shown["stores"]) == ("active", len(FILE_DATA), "local")
    assert shown["checksum"] == hashlib.md5(FILE_DATA, usedforsecurity=False).hexdigest()
    assert (shown["os_hash_algo"], shown["os_hash_value"]) == ("sha512", hashlib.sha512(FILE_DATA).hexdigest())
    assert usage_of("tenant-a")["space"] == {("local", "active"): (len(FILE_DATA), 1)}
    listed = api.get(f"/v2/images/{image}/locations", headers=SERVICE).json
    assert listed == [{"url": stored_file, "metadata": {"store": "local"}}]


def test_validation_data_that_matches_is_accepted(api, stored_file):
    image = new_image(api)
    validation = {"os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(FILE_DATA).hexdigest().upper()}

    post(api, image, {"url": stored_file, "validation_data": validation}, SERVICE, 202)

    assert api.get(f"/v2/images/{image}", headers=MEMBER).json["status"] == "active"


def test_validation_data_that_does_not_match_changes_nothing(api, stored_file, usage_of):
    image = new_image(api)
    validation = {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(b"other data").hexdigest()}

    refused = post(api, image, {"url": stored_file, "validation_data": validation}, SERVICE, 400)

    assert "does not match" in refused.json["error"]["message"]
    shown = api.get(f"/v2/images/{image}", headers=MEMBER).json
    assert (shown["status"], shown["checksum"], shown["os_hash_value"]) == ("queued", None, None)
    assert usage_of("tenant-a")["space"] == {}


def test_a_member_may_add_an_http_location_only(api, stored_file, web, usage_of):
    first, second = new_image(api), new_image(api)

    refused = post(api, first, {"url": stored_file}, MEMBER, 403)
    post(api, second, {"url": f"{base(web)}/image"}, MEMBER, 202)

    assert "http store" in refused.json["error"]["message"]
    assert api.get(f"/v2/images/{first}", headers=MEMBER).json["status"] == "queued"
    shown = api.get(f"/v2/images/{second}", headers=MEMBER).json
    assert (shown["status"], shown["size"], shown["stores"]) == ("active", len(DATA), "web")
    assert shown["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    assert usage_of("tenant-a")["space"] == {("web", "active"): (len(DATA), 1)}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": ""},
        {"url": 42},
        [{"url": "file:///x"}],
        "file:///x",
        {"url": "file:///x", "validation_data": {"os_hash_algo": "sha512"}},
        {"url": "file:///x", "validation_data": {"os_hash_value": "ab"}},
        {"url": "file:///x", "validation_data": {"os_hash_algo": "crc32", "os_hash_value": "ab"}},
        {"url": "file:///x", "validation_data": {"os_hash_algo": "sha256", "os_hash_value": "zz" * 32}},
        {"url": "file:///x", "validation_data": {"os_hash_algo": "sha256", "os_hash_value": "ab"}},
        {"url": "file:///x", "validation_data": {"os_hash_algo": "md5", "os_hash_value": "ab" * 16, "x": 1}},
        {"url": "file:///x", "validation_data": "sha512"},
    ],
)
def test_malformed_bodies_are_400_and_change_nothing(api, body, usage_of):
    image = new_image(api)

    refused = post(api, image, body, SERVICE, 400)

    assert refused.json["error"]["code"] in {"invalid_body", "malformed_json"}
    assert api.get(f"/v2/images/{image}", headers=MEMBER).json["status"] == "queued"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "location_outside_store"),
        ("ftp://127.0.0.1/image", "unsupported_scheme"),
        ("http://169.254.169.254/latest/meta-data", "location_outside_store"),
    ],
)
def test_urls_outside_every_store_are_400(api, url, code):
    image = new_image(api)

    assert post(api, image, {"url": url}, SERVICE, 400).json["error"]["code"] == code


def test_missing_data_is_400(api, tmp_path):
    image = new_image(api)
    missing = f"file://{tmp_path / 'local' / 'missing'}"
    (tmp_path / "local").mkdir(exist_ok=True)

    assert post(api, image, {"url": missing}, SERVICE, 400).json["error"]["code"] == "location_data_missing"


def test_an_active_image_is_a_conflict_and_another_projects_image_is_missing(api, stored_file, tmp_path):
    image = new_image(api)
    post(api, image, {"url": stored_file}, SERVICE, 202)
    other = tmp_path / "local" / "other"
    other.write_bytes(b"more")

    post(api, image, {"url": f"file://{other}"}, SERVICE, 409)
    post(api, image, {"url": f"file://{other}"}, identity("tenant-b", "member", "service"), 404)
    post(api, str(uuid.uuid4()), {"url": f"file://{other}"}, SERVICE, 404)


def test_listing_is_for_services_and_admins(api, stored_file):
    image = new_image(api)
    post(api, image, {"url": stored_file}, SERVICE, 202)

    api.get(f"/v2/images/{image}/locations", headers=MEMBER, status=403)
    api.get(f"/v2/images/{image}/locations", headers=identity("tenant-b"), status=404)
    assert len(api.get(f"/v2/images/{image}/locations", headers=ADMIN).json) == 1
