"""glanceclient's image-deactivate and image-reactivate against a real server (issue 17, part 3)."""

import io

import glanceclient
import pytest
from glanceclient import exc


@pytest.fixture
def live_settings(settings: dict[str, str]) -> dict[str, str]:
    return {**settings, "locquota.auth_strategy": "tokens"}


@pytest.fixture
def glance(live_url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=token)


@pytest.fixture
def admin_glance(live_url: str, issue_token) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=issue_token("operators", "admin,member"))


def test_deactivate_and_reactivate_through_glanceclient(glance, admin_glance):
    image = glance.images.create(name="switch", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(b"abc"))

    glance.images.deactivate(image.id)
    assert glance.images.get(image.id)["status"] == "deactivated"
    with pytest.raises(exc.HTTPForbidden):
        b"".join(glance.images.data(image.id))
    assert b"".join(admin_glance.images.data(image.id)) == b"abc"

    glance.images.reactivate(image.id)
    assert glance.images.get(image.id)["status"] == "active"
    assert b"".join(glance.images.data(image.id)) == b"abc"
