"""openstacksdk's image proxy against a real locquota server, with keystoneauth's version discovery."""

import hashlib

import openstack
import pytest
from openstack import exceptions

from tests.e2e.conftest import LiveServer

DATA = bytes(range(256)) * 600


def connect(url: str, token: str) -> openstack.connection.Connection:
    """A connection with no clouds.yaml and no OS_* variables (cloud=None reads neither): token and URL only."""
    return openstack.connection.Connection(
        auth_type="admin_token",
        auth={"endpoint": url, "token": token},
        image_endpoint_override=url,
        region_name="RegionOne",
    )


@pytest.fixture
def conn(live_url: str, token: str) -> openstack.connection.Connection:
    return connect(live_url, token)


def create(conn: openstack.connection.Connection, name: str, data: bytes = DATA, **attributes: object) -> object:
    return conn.image.create_image(
        name=name, data=data, disk_format="raw", container_format="bare", allow_duplicates=True, **attributes
    )


def test_version_discovery_asks_the_root_without_a_token_and_finds_v2(live_server: LiveServer, conn):
    version = conn.image.get_api_major_version()

    assert version[0] == 2
    discovery = live_server.log.requests("GET", "/")
    assert discovery
    assert all(request.status == [300] and not request.has_token for request in discovery)


def test_create_image_with_data_uploads_it_with_content_length(live_server: LiveServer, conn):
    image = create(conn, "sdk-upload")

    shown = conn.image.get_image(image.id)
    assert shown.status == "active"
    assert shown.owner == "p1"
    assert shown.size == len(DATA)
    assert shown.checksum == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert (shown.hash_algo, shown.hash_value) == ("sha512", hashlib.sha512(DATA).hexdigest())
    assert shown.properties["owner_specified.openstack.object"] == "images/sdk-upload"
    assert {"owner_specified.openstack.md5", "owner_specified.openstack.sha256"} <= set(shown.properties)
    [put] = live_server.log.requests("PUT", f"/v2/images/{image.id}/file")
    assert put.content_length == str(len(DATA))
    assert put.status == [204]


def test_download_image_returns_the_bytes(conn, tmp_path):
    image = create(conn, "sdk-download")
    target = tmp_path / "downloaded.img"

    response = conn.image.download_image(image)
    conn.image.download_image(image, output=str(target))

    assert response.content == DATA
    assert response.headers["Content-MD5"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert target.read_bytes() == DATA


def test_images_pages_through_every_image_once(live_server: LiveServer, conn):
    created = {create(conn, f"sdk-page-{index}", data=bytes([index])).id for index in range(5)}

    listed = [image.id for image in conn.image.images(limit=2)]

    assert sorted(listed) == sorted(created)
    pages = [page for page in live_server.log.requests("GET", "/v2/images") if "limit=2" in page.query]
    # Three pages of 2, 2 and 1 through the next links; the SDK may then try one more page, which is empty.
    assert len([page for page in pages if "marker=" in page.query]) >= 2
    assert all(page.status == [200] for page in pages)


def test_images_filters_by_name(conn):
    wanted = create(conn, "sdk-wanted")
    create(conn, "sdk-other")

    listed = [image.id for image in conn.image.images(name="sdk-wanted")]

    assert listed == [wanted.id]


def test_update_image_changes_attributes_and_properties(conn):
    image = create(conn, "sdk-before", data=b"x", os_distro="cirros")

    conn.image.update_image(image, name="sdk-after", min_ram=128, os_distro="ubuntu", build="42")

    shown = conn.image.get_image(image.id)
    assert (shown.name, shown.min_ram) == ("sdk-after", 128)
    assert shown.os_distro == "ubuntu"  # a known Glance property: an attribute of the SDK's Image
    assert shown.properties["build"] == "42"


def test_delete_image_then_get_is_not_found(conn):
    image = create(conn, "sdk-doomed", data=b"bye")

    conn.image.delete_image(image)

    with pytest.raises(exceptions.NotFoundException):
        conn.image.get_image(image.id)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.delete_image(image, ignore_missing=False)
    assert image.id not in [listed.id for listed in conn.image.images()]


def test_another_projects_image_is_not_found_with_the_servers_message(live_url, conn, other_token):
    image = create(conn, "sdk-private", data=b"mine")

    with pytest.raises(exceptions.NotFoundException) as raised:
        connect(live_url, other_token).image.get_image(image.id)

    assert "No image found with this id." in str(raised.value)
    assert raised.value.status_code == 404


def test_unknown_token_is_unauthorized(live_url):
    with pytest.raises(exceptions.HttpException) as raised:
        list(connect(live_url, "not-a-token-issued-here").image.images())

    assert raised.value.status_code == 401
    assert "Authentication required." in str(raised.value)
