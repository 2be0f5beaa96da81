"""python-glanceclient's v2 client against a real locquota server, as a Glance user would drive it."""

import hashlib
import io
from collections.abc import Callable

import glanceclient
import pytest
from glanceclient import exc

from tests.e2e.conftest import LiveServer

# Several of glanceclient's 64 KiB upload chunks and several of the server's 4 KiB store chunks.
DATA = bytes(range(256)) * 800


def client(url: str, token: str | None) -> object:
    """A v2 client; the version in the URL is the form glanceclient recommends (no deprecation warning)."""
    return glanceclient.Client(endpoint=f"{url}/v2", token=token)


@pytest.fixture
def glance(live_url: str, token: str) -> object:
    return client(live_url, token)


@pytest.fixture
def create(glance: object) -> Callable[..., object]:
    def make(name: str = "cirros", **attributes: object) -> object:
        return glance.images.create(name=name, disk_format="qcow2", container_format="bare", **attributes)

    return make


def test_create_returns_queued_image_with_custom_properties(glance, create):
    image = create("cirros", min_ram=64, tags=["e2e"], os_distro="cirros", build="0.6.2")

    shown = glance.images.get(image.id)
    assert image.status == "queued"
    assert shown["status"] == "queued"
    assert shown["owner"] == "p1"
    assert shown["visibility"] == "shared"
    assert shown["min_ram"] == 64
    assert shown["tags"] == ["e2e"]
    assert (shown["os_distro"], shown["build"]) == ("cirros", "0.6.2")
    assert shown["size"] is None
    assert shown["checksum"] is None


def test_chunked_upload_activates_image_and_download_returns_the_bytes(live_server: LiveServer, glance, create):
    image = create()

    glance.images.upload(image.id, io.BytesIO(DATA))

    shown = glance.images.get(image.id)
    assert shown["status"] == "active"
    assert shown["size"] == len(DATA)
    assert shown["checksum"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert (shown["os_hash_algo"], shown["os_hash_value"]) == ("sha512", hashlib.sha512(DATA).hexdigest())
    # glanceclient checks the bytes against os_hash_value as it reads them, and raises on a mismatch.
    assert b"".join(glance.images.data(image.id)) == DATA
    [put] = live_server.log.requests("PUT", f"/v2/images/{image.id}/file")
    assert put.status == [204]


def test_chunked_upload_without_content_length_through_gunicorn(gunicorn_url: str, token: str):
    """gunicorn hands the app a chunked body with no Content-Length (waitress would buffer it first)."""
    glance = client(gunicorn_url, token)
    image = glance.images.create(name="chunked", disk_format="raw", container_format="bare")

    glance.images.upload(image.id, io.BytesIO(DATA))

    shown = glance.images.get(image.id)
    assert shown["status"] == "active"
    assert shown["size"] == len(DATA)
    assert shown["checksum"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert b"".join(glance.images.data(image.id)) == DATA


def test_download_of_a_queued_image_has_no_data(live_server: LiveServer, glance, create):
    image = create()

    data = glance.images.data(image.id)

    assert data.__wrapped__ is None  # glanceclient's answer to a 204: a request-id proxy around None
    [download] = live_server.log.requests("GET", f"/v2/images/{image.id}/file")
    assert download.status == [204]


def test_second_upload_to_an_active_image_conflicts(glance, create):
    image = create()
    glance.images.upload(image.id, io.BytesIO(b"first"))

    with pytest.raises(exc.HTTPConflict):
        glance.images.upload(image.id, io.BytesIO(b"second"))

    assert b"".join(glance.images.data(image.id)) == b"first"


def test_list_follows_next_links_and_returns_every_image_once(live_server: LiveServer, glance, create):
    created = {create(f"page-{index}").id for index in range(5)}

    listed = [image.id for image in glance.images.list(page_size=2)]

    assert sorted(listed) == sorted(created)
    pages = live_server.log.requests("GET", "/v2/images")
    assert len(pages) == 3
    assert all("limit=2" in page.query for page in pages)
    assert ["marker=" in page.query for page in pages] == [False, True, True]
    assert all(page.status == [200] for page in pages)


def test_list_filters_by_name(glance, create):
    wanted = {create("wanted").id, create("wanted").id}
    create("other")

    listed = [image.id for image in glance.images.list(filters={"name": "wanted"}, page_size=1)]

    assert sorted(listed) == sorted(wanted)


def test_list_sorts_by_name_both_syntaxes(glance, create):
    for name in ("bravo", "charlie", "alpha"):
        create(name)

    ascending = [image.name for image in glance.images.list(sort_key="name", sort_dir="asc", page_size=2)]
    descending = [image.name for image in glance.images.list(sort="name:desc", page_size=2)]

    assert ascending == ["alpha", "bravo", "charlie"]
    assert descending == ["charlie", "bravo", "alpha"]


def test_update_adds_replaces_and_removes_properties(glance, create):
    image = create("before", keep="k", replace_me="old", drop_me="x")

    updated = glance.images.update(image.id, remove_props=["drop_me"], name="after", replace_me="new", added="a")

    shown = glance.images.get(image.id)
    for view in (updated, shown):
        assert view["name"] == "after"
        assert (view["keep"], view["replace_me"], view["added"]) == ("k", "new", "a")
        assert "drop_me" not in view


def test_delete_then_get_is_not_found(glance, create):
    image = create()
    glance.images.upload(image.id, io.BytesIO(b"doomed"))

    glance.images.delete(image.id)

    with pytest.raises(exc.HTTPNotFound):
        glance.images.get(image.id)
    with pytest.raises(exc.HTTPNotFound):
        glance.images.delete(image.id)
    assert image.id not in [listed.id for listed in glance.images.list()]


def test_another_projects_image_is_not_found_with_the_servers_message(live_url, create, other_token):
    image = create()

    with pytest.raises(exc.HTTPNotFound) as raised:
        client(live_url, other_token).images.get(image.id)

    assert "No image found with this id." in str(raised.value)


def test_read_only_attribute_update_is_forbidden_with_the_servers_message(glance, create):
    image = create()

    with pytest.raises(exc.HTTPForbidden) as raised:
        glance.images.update(image.id, checksum="0" * 32)

    assert "Attribute 'checksum' is read-only." in str(raised.value)
    assert glance.images.get(image.id)["checksum"] is None


@pytest.mark.parametrize("bad_token", [None, "not-a-token-issued-here"])
def test_missing_or_unknown_token_is_unauthorized(live_server: LiveServer, bad_token):
    with pytest.raises(exc.HTTPUnauthorized) as raised:
        list(client(live_server.url, bad_token).images.list())

    assert "Authentication required." in str(raised.value)
    [request] = live_server.log.requests("GET", "/v2/images")
    assert request.has_token is (bad_token is not None)
    assert request.status == [401]
