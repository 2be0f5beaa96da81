"""The real `glance` console script (python-glanceclient's shell) against a real locquota server.

Each test arranges through the glanceclient library (in-process, fast) and acts once through the CLI,
whose PrettyTable output is parsed cell by cell.
"""

import hashlib
import io
import subprocess
from pathlib import Path

import glanceclient
import pytest
from glanceclient import exc

from tests.e2e.conftest import VENV_BIN, LiveServer

DATA = bytes(range(256)) * 300
CLI_SECONDS = 60


def run_glance(url: str, token: str, *args: str, api_version: str | None = "2") -> subprocess.CompletedProcess[str]:
    """Run `glance` with an explicit image endpoint and token (no Keystone); it inherits NO_PROXY from os.environ.

    Without an API version the shell discovers it first, with GET /versions.
    """
    command = [str(VENV_BIN / "glance"), "--os-image-url", url, "--os-auth-token", token, *args]
    if api_version is not None:
        command[1:1] = ["--os-image-api-version", api_version]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=CLI_SECONDS)


def table_rows(output: str) -> list[list[str]]:
    """The cells of every row of a PrettyTable (header first); border lines are skipped."""
    return [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in output.splitlines() if line[:1] == "|"]


def property_table(output: str) -> dict[str, str]:
    """A `Property | Value` table as a dict; a value wrapped over several lines (a long hash) is joined back."""
    header, *rows = table_rows(output)
    assert header == ["Property", "Value"], output
    shown: dict[str, str] = {}
    name = ""
    for prop, value in rows:
        if prop:
            name = prop
            shown[name] = value
        else:
            shown[name] += value
    return shown


def list_table(output: str) -> list[dict[str, str]]:
    """A listing table as one dict per row, keyed by the header's cells."""
    header, *rows = table_rows(output)
    return [dict(zip(header, row, strict=True)) for row in rows]


@pytest.fixture
def glance(live_url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=token)


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(DATA)
    return path


def test_image_create_with_file_uploads_and_shows_the_active_image(live_url, token, glance, image_file):
    result = run_glance(
        live_url,
        token,
        "image-create",
        "--name",
        "cli-image",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--property",
        "os_distro=cirros",
        "--file",
        str(image_file),
    )

    assert result.returncode == 0, result.stderr
    shown = property_table(result.stdout)
    assert shown["name"] == "cli-image"
    assert shown["status"] == "active"
    assert shown["owner"] == "p1"
    assert shown["os_distro"] == "cirros"
    assert shown["size"] == str(len(DATA))
    assert shown["checksum"] == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert shown["os_hash_value"] == hashlib.sha512(DATA).hexdigest()
    assert b"".join(glance.images.data(shown["id"])) == DATA


def test_image_upload_sends_a_file_to_a_queued_image(live_url, token, glance, image_file):
    image = glance.images.create(name="queued", disk_format="qcow2", container_format="bare")

    result = run_glance(live_url, token, "image-upload", "--file", str(image_file), image.id)

    assert result.returncode == 0, result.stderr
    stored = glance.images.get(image.id)
    assert stored["status"] == "active"
    assert stored["size"] == len(DATA)
    assert b"".join(glance.images.data(image.id)) == DATA


def test_image_list_shows_every_image_sorted_by_name(live_server: LiveServer, token, glance):
    ids = {name: glance.images.create(name=name, disk_format="raw", container_format="bare").id for name in "cab"}

    result = run_glance(live_server.url, token, "image-list", "--page-size", "2")

    assert result.returncode == 0, result.stderr
    rows = list_table(result.stdout)
    assert rows == [{"ID": ids[name], "Name": name} for name in "abc"]
    pages = live_server.log.requests("GET", "/v2/images")
    assert len(pages) == 2
    assert all("sort_key=name" in page.query and "sort_dir=asc" in page.query for page in pages)
    assert all(page.status == [200] for page in pages)


def test_image_list_without_an_api_version_discovers_v2(live_server: LiveServer, token, glance):
    image = glance.images.create(name="discovered", disk_format="raw", container_format="bare")

    result = run_glance(live_server.url, token, "image-list", api_version=None)

    assert result.returncode == 0, result.stderr
    assert list_table(result.stdout) == [{"ID": image.id, "Name": "discovered"}]
    [discovery] = live_server.log.requests("GET", "/versions")
    assert discovery.status == [200]
    [listing] = live_server.log.requests("GET", "/v2/images")
    assert listing.query == "limit=200&sort_key=name&sort_dir=asc"


def test_image_show_prints_attributes_and_properties(live_url, token, glance):
    image = glance.images.create(name="shown", disk_format="qcow2", container_format="bare", min_ram=256, build="7")
    glance.images.upload(image.id, io.BytesIO(DATA))

    result = run_glance(live_url, token, "image-show", image.id)

    assert result.returncode == 0, result.stderr
    shown = property_table(result.stdout)
    assert shown["id"] == image.id
    assert (shown["name"], shown["status"], shown["disk_format"]) == ("shown", "active", "qcow2")
    assert (shown["min_ram"], shown["build"]) == ("256", "7")
    assert shown["os_hash_algo"] == "sha512"
    assert shown["os_hash_value"] == hashlib.sha512(DATA).hexdigest()


def test_image_download_writes_the_bytes_to_a_file(live_url, token, glance, tmp_path):
    image = glance.images.create(name="download", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(DATA))
    target = tmp_path / "downloaded.raw"

    result = run_glance(live_url, token, "image-download", "--file", str(target), image.id)

    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == DATA


def test_image_delete_removes_the_image(live_server: LiveServer, token, glance):
    image = glance.images.create(name="doomed", disk_format="raw", container_format="bare")

    result = run_glance(live_server.url, token, "image-delete", image.id)

    assert result.returncode == 0, result.stderr
    [delete] = live_server.log.requests("DELETE", f"/v2/images/{image.id}")
    assert delete.status == [204]
    with pytest.raises(exc.HTTPNotFound):
        glance.images.get(image.id)


def test_image_show_of_another_projects_image_fails_with_the_servers_message(live_url, other_token, glance):
    image = glance.images.create(name="private", disk_format="raw", container_format="bare")

    result = run_glance(live_url, other_token, "image-show", image.id)

    assert result.returncode == 1
    assert "No image found with this id." in result.stderr
    assert result.stdout.strip() == ""


def test_unknown_token_is_refused_as_invalid_credentials(live_server: LiveServer):
    result = run_glance(live_server.url, "not-a-token-issued-here", "image-list")

    assert result.returncode == 1
    # The shell turns any 401 into this sentence, as it does for Glance.
    assert "Invalid OpenStack Identity credentials." in result.stderr
    assert result.stdout.strip() == ""
    refused = [request for request in live_server.log.seen if request.path.startswith("/v2/")]
    assert refused
    assert all(request.has_token and request.status == [401] for request in refused)
