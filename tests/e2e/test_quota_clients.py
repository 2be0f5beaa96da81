"""Quota through the real clients: glanceclient's usage call, the `glance usage` CLI, and 413 on upload.

Limits are set by an operator through the limits API with an admin token from `locquota tokens create`.
The chunked cut-off runs under gunicorn, which streams a chunked body to the app as it arrives.
"""

import io
import uuid

import glanceclient
import pytest
import requests
from glanceclient import exc

from tests.e2e.test_glance_cli import run_glance, table_rows

MIB = 1024 * 1024


def client(url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{url}/v2", token=token)


@pytest.fixture
def admin_token(issue_token) -> str:
    return issue_token("ops", "admin")


def set_limits(url: str, admin_token: str, tenant: str, **limits: int) -> None:
    response = requests.put(
        f"{url}/v1/tenants/{tenant}/limits", json={"limits": limits}, headers={"X-Auth-Token": admin_token}, timeout=30
    )
    assert response.status_code == 200, response.text


def test_glanceclient_reads_usage_in_glances_shape(live_url, token, admin_token):
    set_limits(live_url, admin_token, "p1", image_size_total=5, image_count_total=10)
    glance = client(live_url, token)
    image = glance.images.create(name="u", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(b"u" * (MIB + 1)), image_size=MIB + 1)

    usage = glance.info.get_usage()

    assert usage["image_size_total"] == {"limit": 5, "usage": 1}
    assert usage["image_count_total"] == {"limit": 10, "usage": 1}
    assert usage["image_count_uploading"] == {"limit": -1, "usage": 0}
    assert usage["image_stage_total"] == {"limit": -1, "usage": 0}


def test_glance_usage_cli_prints_the_quota_table(live_url, token, admin_token):
    set_limits(live_url, admin_token, "p1", image_count_total=4)
    client(live_url, token).images.create(name="u", disk_format="raw", container_format="bare")

    result = run_glance(live_url, token, "usage")

    assert result.returncode == 0, result.stderr
    header, *rows = table_rows(result.stdout)
    assert header == ["Quota", "Limit", "Usage"]
    assert ["image_count_total", "4", "1"] in rows
    assert {row[0] for row in rows} == {
        "image_size_total",
        "image_stage_total",
        "image_count_total",
        "image_count_uploading",
    }


def test_glanceclient_upload_over_quota_is_413_with_the_servers_message(live_url, token, admin_token):
    set_limits(live_url, admin_token, "p1", image_size_total=1)
    glance = client(live_url, token)
    image = glance.images.create(name="big", disk_format="raw", container_format="bare")

    with pytest.raises(exc.HTTPOverLimit) as raised:
        glance.images.upload(image.id, io.BytesIO(b"b" * (MIB + 1)), image_size=MIB + 1)

    assert "Quota exceeded for image_size_total" in str(raised.value)
    shown = glance.images.get(image.id)
    assert (shown["status"], shown["size"]) == ("queued", None)


def test_glanceclient_create_over_image_count_is_413(live_url, token, admin_token):
    set_limits(live_url, admin_token, "p1", image_count_total=0)
    glance = client(live_url, token)

    with pytest.raises(exc.HTTPOverLimit):
        glance.images.create(name="none", disk_format="raw", container_format="bare")

    assert list(glance.images.list()) == []


def test_chunked_upload_through_gunicorn_is_cut_off_at_the_quota(gunicorn_url, token, admin_token, store_root):
    """The body is 8 MiB in 64 KiB chunks against 1 MiB of quota: the server stops reading near 1 MiB."""
    set_limits(gunicorn_url, admin_token, "p1", image_size_total=1)
    glance = client(gunicorn_url, token)
    image = glance.images.create(name="chunked", disk_format="raw", container_format="bare")
    sent = []

    def body():
        for _ in range(128):
            sent.append(64 * 1024)
            yield b"c" * (64 * 1024)

    try:
        response = requests.put(
            f"{gunicorn_url}/v2/images/{image.id}/file",
            data=body(),
            headers={"X-Auth-Token": token, "Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "quota_exceeded"
    except requests.ConnectionError:
        pass  # the server answered and closed while the client was still sending: also a cut-off
    assert sum(sent) < 8 * MIB
    shown = glance.images.get(image.id)
    assert (shown["status"], shown["size"]) == ("queued", None)
    assert not [path for path in store_root.rglob("*") if path.is_file() and uuid.UUID(image.id).hex not in path.name]
