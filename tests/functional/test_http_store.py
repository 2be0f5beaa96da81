"""The read-only http store (issue 15) against a real HTTP server on 127.0.0.1, and through the app.

The server is the standard library's, in a thread, serving fixed bodies, redirects and a body without a
Content-Length; nothing of requests is replaced.
"""

import uuid

import pytest

from locations.scrubber import Scrubber
from locations.stores.base import StoreError, StoreRegistry
from locations.stores.file import FileStore
from locations.stores.http import HttpStore
from locquota.errors import LocationOutsideStore
from tests.conftest import closed_port_url, identity, multi_store
from tests.fakes import POLICY, SCRUB_TIME, scrub_settings, unit_of_work_on
from tests.web_server import DATA, WebServer, base, web_fixture  # noqa: F401  (web_fixture: the `web` fixture)
from tests.web_source_servers import DATA as ENDLESS_TARGET
from tests.web_source_servers import ENDLESS_CAP, serve_fixture  # noqa: F401  (the `serve` fixture)

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
TENANT = identity("tenant-a")
IMAGE = {"name": "web", "disk_format": "raw", "container_format": "bare"}


def web_store(web: WebServer) -> HttpStore:
    return HttpStore("web", {"http_store_allowed_hosts": f"127.0.0.1:{web.server_port}", "http_store_timeout": "5"})


@pytest.fixture
def store(web: WebServer) -> HttpStore:
    return web_store(web)


def test_data_is_read_in_bounded_chunks_and_sized(store, web):
    chunks = list(store.get(f"{base(web)}/image", 4096))

    assert b"".join(chunks) == DATA
    assert max(map(len, chunks)) <= 4096
    assert store.get_size(f"{base(web)}/image") == len(DATA)


def test_redirects_on_allowed_hosts_are_followed_up_to_the_limit(store, web):
    assert store.get_size(f"{base(web)}/hop/4") == len(DATA)
    with pytest.raises(StoreError, match="redirects"):
        store.get_size(f"{base(web)}/hop/5")


def test_a_redirect_to_a_host_not_allowed_is_not_followed(store, web):
    with pytest.raises(StoreError, match="may not read from"):
        store.get_size(f"{base(web)}/away")

    assert web.requests_seen == ["HEAD /away"]


@pytest.mark.parametrize("path", ["/missing", "/unsized"])
def test_missing_or_unsized_data_is_an_error_never_a_size_of_zero(store, web, path):
    with pytest.raises(StoreError):
        store.get_size(f"{base(web)}{path}")


def test_a_server_that_is_down_is_a_store_error(web):
    down = closed_port_url("http://", "/image")
    port = down.split(":")[2].split("/")[0]
    store = HttpStore("web", {"http_store_allowed_hosts": f"127.0.0.1:{port}", "http_store_timeout": "2"})

    with pytest.raises(StoreError):
        store.get_size(down)
    with pytest.raises(StoreError):
        list(store.get(down, 1024))


def test_nothing_is_written_or_deleted(store, web):
    with pytest.raises(StoreError):
        store.plan_upload(uuid.uuid4())

    store.delete(f"{base(web)}/image")

    assert web.requests_seen == []
    assert list(store.inventory()) == []
    assert store.is_read_only


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/image",  # the same server by another name is not on the list
        "http://127.0.0.1:1/image",  # another port
        "http://169.254.169.254/latest/meta-data",  # a cloud's metadata service
        "ftp://127.0.0.1:{port}/image",
        "file:///etc/passwd",
        "http:///image",
        "http://127.0.0.1:{port}/image#fragment",
        "http://127.0.0.1:{port}/im age",
        "http://127.0.0.1:{port}/\x00",
        "http://127.0.0.1:notaport/image",
        "http://127.0.0.1:{port}/" + "a" * 5000,
    ],
)
def test_hostile_urls_are_refused(store, web, url):
    with pytest.raises(LocationOutsideStore):
        store.validate_url(url.format(port=web.server_port))
    assert web.requests_seen == []


def test_spellings_of_one_url_have_one_key_without_credentials(store, web):
    port = web.server_port
    keys = {
        store.identify(url).key
        for url in (
            f"http://127.0.0.1:{port}/image",
            f"HTTP://127.0.0.1:{port}/image",
            f"http://user:s3cret@127.0.0.1:{port}/image",
        )
    }

    assert keys == {f"http://127.0.0.1:{port}/image"}


def test_credentials_are_never_in_a_refusal():
    store = HttpStore("web", {"http_store_allowed_hosts": "images.example.org"})

    with pytest.raises(LocationOutsideStore) as refused:
        store.validate_url("http://admin:hunter2@internal.example.org/x")

    assert "hunter2" not in str(refused.value)
    assert "internal" not in str(refused.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [({}, "http_store_allowed_hosts: required"), ({"http_store_allowed_hosts": "*", "typo": "1"}, "typo")],
)
def test_options_are_checked_at_start(options, message):
    with pytest.raises(ValueError, match=message):
        HttpStore("web", options)


# Through the app ---------------------------------------------------------------------------------------------


@pytest.fixture
def web_app(make_app, settings, tmp_path, web):
    stores = {
        "local": ("file", {"filesystem_store_datadir": str(tmp_path / "local")}),
        "web": ("http", {"http_store_allowed_hosts": f"127.0.0.1:{web.server_port}"}),
    }
    raw = {**multi_store(settings, "local", stores), "locquota.show_multiple_locations": "true"}
    return make_app(scrub_settings(raw, delayed_delete=True))


def test_an_http_location_is_charged_read_and_its_data_left_alone_when_scrubbed(
    web_app, web, engine, clock, usage_of, tmp_path
):
    image = web_app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    add = [{"op": "add", "path": "/locations/-", "value": {"url": f"{base(web)}/image", "metadata": {}}}]

    shown = web_app.patch_json(
        f"/v2/images/{image}", add, headers={**TENANT, "Content-Type": PATCH_TYPE}, content_type=PATCH_TYPE
    ).json

    assert (shown["status"], shown["size"], shown["stores"]) == ("active", len(DATA), "web")
    assert shown["locations"][0]["metadata"] == {"store": "web"}
    assert usage_of("tenant-a")["space"] == {("web", "active"): (len(DATA), 1)}
    assert web_app.get(f"/v2/images/{image}/file", headers=TENANT).body == DATA

    web_app.delete(f"/v2/images/{image}", headers=TENANT, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    local = FileStore("local", {"filesystem_store_datadir": str(tmp_path / "local")})
    stores = StoreRegistry({"local": local, "web": web_store(web)}, "local")
    result = Scrubber(unit_of_work_on(engine), stores, clock, POLICY, batch_size=10, pool_size=1).run_once()

    assert result.deleted == 1
    assert usage_of("tenant-a")["space"] == {}
    assert web.requests_seen.count("GET /image") == 1  # the download; nothing asked to delete it


def test_uploads_into_the_http_store_are_refused(web_app):
    image = web_app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    refused = web_app.put(
        f"/v2/images/{image}/file",
        b"x",
        headers={**TENANT, "Content-Type": "application/octet-stream", "X-Image-Meta-Store": "web"},
        status=410,
    )

    assert refused.json["error"]["code"] == "store_read_only"


def test_adding_a_location_tells_missing_data_from_a_server_that_does_not_answer(web_app, web, usage_of):
    image = web_app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    patch_headers = {**TENANT, "Content-Type": PATCH_TYPE}

    def add(url: str, status: int) -> dict:
        value = {"url": url, "metadata": {}}
        body = [{"op": "add", "path": "/locations/-", "value": value}]
        return web_app.patch_json(
            f"/v2/images/{image}", body, headers=patch_headers, content_type=PATCH_TYPE, status=status
        ).json

    missing = add(f"{base(web)}/missing", 400)
    web.shutdown()
    web.server_close()
    unreachable = add(f"{base(web)}/image", 503)

    assert missing["error"]["code"] == "location_data_missing"
    assert unreachable["error"]["code"] == "store_unavailable"
    assert web_app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "queued"
    assert usage_of("tenant-a")["space"] == {}


def test_a_redirect_body_is_never_read(serve):
    """requests reads a redirect's whole body even with allow_redirects=False; the store must not (no buffering)."""
    endless = serve()
    store = HttpStore("web", {"http_store_allowed_hosts": f"127.0.0.1:{endless.server_port}"})

    assert b"".join(store.get(f"{endless.base}/redirect-endless", 4096)) == ENDLESS_TARGET
    assert endless.endless_done.wait(timeout=30)
    assert endless.endless_sent < ENDLESS_CAP
