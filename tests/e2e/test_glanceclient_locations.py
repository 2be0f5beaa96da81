"""glanceclient's location calls (add_location, delete_locations) against a deployment that shows locations."""

import hashlib
import io

import glanceclient
import pytest
from glanceclient import exc


@pytest.fixture
def live_settings(settings: dict[str, str]) -> dict[str, str]:
    """Tokens, and locations shown, as a Glance deployment with show_multiple_locations = True."""
    return {**settings, "locquota.auth_strategy": "tokens", "locquota.show_multiple_locations": "true"}


@pytest.fixture
def glance(live_url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=token)


@pytest.fixture
def admin_glance(live_url: str, issue_token) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=issue_token("p1", "admin,member"))


def stored_file(store_root, name: str, data: bytes) -> str:
    store_root.mkdir(parents=True, exist_ok=True)
    (store_root / name).write_bytes(data)
    return f"file://{store_root / name}"


def test_add_location_activates_and_delete_locations_removes(glance, admin_glance, store_root):
    image = glance.images.create(name="loc", disk_format="raw", container_format="bare")
    first = stored_file(store_root, "first", b"abc")
    second = stored_file(store_root, "second", b"abc")

    glance.images.add_location(image.id, first, {})
    glance.images.add_location(image.id, second, {"note": "copy"})
    shown = glance.images.get(image.id)
    assert shown["status"] == "active"
    assert [location["url"] for location in shown["locations"]] == [first, second]

    admin_glance.images.delete_locations(image.id, {second})
    assert [location["url"] for location in glance.images.get(image.id)["locations"]] == [first]
    assert not (store_root / "second").exists()
    assert b"".join(glance.images.data(image.id)) == b"abc"


def test_removing_the_last_location_is_refused_with_glances_message(glance, admin_glance, store_root):
    image = glance.images.create(name="loc", disk_format="raw", container_format="bare")
    url = stored_file(store_root, "only", b"abc")
    glance.images.add_location(image.id, url, {})

    with pytest.raises(exc.HTTPForbidden, match="Cannot remove last location"):
        admin_glance.images.delete_locations(image.id, {url})
    assert (store_root / "only").exists()


def test_a_location_outside_the_store_is_refused(glance):
    image = glance.images.create(name="loc", disk_format="raw", container_format="bare")
    with pytest.raises(exc.HTTPBadRequest, match="outside"):
        glance.images.add_location(image.id, "file:///etc/passwd", {})


@pytest.fixture
def other_glance(live_url: str, other_token: str) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=other_token)


def test_another_project_cannot_reach_an_uploaded_file_under_another_spelling(glance, other_glance, store_root):
    """The attack of issue 12 over real HTTP: an alias of p1's file is refused to p2, and p1's data stays."""
    image = glance.images.create(name="victim", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(b"p1's bytes"))
    intruder = other_glance.images.create(name="alias", disk_format="raw", container_format="bare")

    for alias in (f"file://localhost{store_root}/./{image.id}", f"FILE:{store_root}//{image.id}"):
        with pytest.raises(exc.HTTPForbidden, match="Another project"):
            other_glance.images.add_location(intruder.id, alias, {})

    assert other_glance.images.get(intruder.id)["status"] == "queued"
    assert b"".join(glance.images.data(image.id)) == b"p1's bytes"


def test_the_v2_17_locations_api_through_glanceclient(glance, live_url, issue_token, store_root):
    """`glance add-location` on a queued image as a service does it (Nova, Cinder), then the locations listed."""
    service = glanceclient.Client(endpoint=f"{live_url}/v2", token=issue_token("p1", "member,service"))
    image = glance.images.create(name="v2.17", disk_format="raw", container_format="bare")
    url = stored_file(store_root, "by-service", b"added by a service")
    validation = {"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(b"added by a service").hexdigest()}

    shown = service.images.add_image_location(image.id, url, validation)

    assert (shown["status"], shown["os_hash_value"]) == ("active", validation["os_hash_value"])
    assert service.images.get_image_locations(image.id) == [{"url": url, "metadata": {}}]
    with pytest.raises(exc.HTTPForbidden):
        glance.images.get_image_locations(image.id)  # a member may not list them
    assert b"".join(glance.images.data(image.id)) == b"added by a service"
