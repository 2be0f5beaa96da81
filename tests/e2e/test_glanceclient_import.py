"""Interoperable image import (issue 16) driven end to end by python-glanceclient, the `glance` CLI and openstacksdk.

A live server with three file stores (fast, the default; cheap; slow), a staging directory and locations shown, as
the Glance 33 peer of ../shared/GLANCE_COMPAT.md ("Multi-store, import and the locations API"). web-download reads
from a real HTTP server on 127.0.0.1, let through by import_allowed_hosts and import_allowed_ports. Tasks run on the
server's own worker threads: each test polls the image and its tasks until the import has ended, under a deadline
that fails it.
"""

import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import glanceclient
import openstack
import pytest

from tests.conftest import multi_store
from tests.e2e.conftest import VENV_BIN
from tests.e2e.test_glance_cli import list_table, property_table, table_rows
from tests.web_source_servers import DATA as WEB_DATA
from tests.web_source_servers import WebSourceServer, serve_fixture  # noqa: F401  (the `serve` fixture)

DATA = bytes(range(256)) * 300  # 76 800 bytes: a few of glanceclient's chunks
STORES = ("fast", "cheap", "slow")
METHODS = ["glance-direct", "web-download", "copy-image"]
CLI_SECONDS = 60
IMPORT_SECONDS = 60  # the deadline for a background import to end; far above what one takes here
POLL_SECONDS = 0.05
ENDED = {"success", "failure"}


@pytest.fixture
def web(serve: Callable[[], WebSourceServer]) -> WebSourceServer:
    """The HTTP server web-download reads from: DATA at /image, any status at /status/<code>."""
    return serve()


@pytest.fixture
def live_settings(settings: dict[str, str], tmp_path: Path, web: WebSourceServer) -> dict[str, str]:
    """Tokens; three file stores, staging, locations shown; web-download may reach the test's web server only."""
    stores = {name: ("file", {"filesystem_store_datadir": str(tmp_path / name)}) for name in STORES}
    return {
        **multi_store(settings, "fast", stores),
        "locquota.auth_strategy": "tokens",
        "locquota.show_multiple_locations": "true",
        "locquota.node_staging_uri": f"file://{tmp_path / 'staging'}",
        "locquota.import_allowed_hosts": "127.0.0.1",
        "locquota.import_allowed_ports": str(web.server_port),
    }


@pytest.fixture
def admin_token(issue_token: Callable[..., str]) -> str:
    """An admin of another project, as an operator copying a tenant's image would be."""
    return issue_token("operators", "admin")


def client(url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{url}/v2", token=token)


@pytest.fixture
def glance(live_url: str, token: str) -> object:
    return client(live_url, token)


@pytest.fixture
def admin_glance(live_url: str, admin_token: str) -> object:
    return client(live_url, admin_token)


def connect(url: str, token: str) -> openstack.connection.Connection:
    """An openstacksdk connection from a token and the URL only (no clouds.yaml, no OS_* variables)."""
    return openstack.connection.Connection(
        auth_type="admin_token",
        auth={"endpoint": url, "token": token},
        image_endpoint_override=url,
        region_name="RegionOne",
    )


@pytest.fixture
def conn(live_url: str, token: str) -> openstack.connection.Connection:
    return connect(live_url, token)


@pytest.fixture
def admin_conn(live_url: str, admin_token: str) -> openstack.connection.Connection:
    return connect(live_url, admin_token)


@pytest.fixture
def terminal() -> Iterator[int]:
    """A pseudo-terminal for the CLI's stdin.

    image-create-via-import reads image data from any stdin that is not a terminal, and then refuses --file and
    --uri alongside it; pytest's own stdin may be anything, so the CLI gets a terminal with nothing typed on it.
    """
    controller, follower = os.openpty()
    yield follower
    os.close(follower)
    os.close(controller)


@pytest.fixture
def run_glance(live_url: str, terminal: int) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `glance --os-image-api-version 2` against the live server with a token; it inherits NO_PROXY."""

    def run(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(VENV_BIN / "glance"), "--os-image-api-version", "2", "--os-image-url", live_url]
        return subprocess.run(
            [*command, "--os-auth-token", token, *args],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=CLI_SECONDS,
            check=False,
        )

    return run


def json_table(output: str) -> dict[str, object]:
    """A `Property | Value` table whose values are JSON (import-info, stores-info), each parsed.

    PrettyTable wraps a long value at spaces and hyphens and drops the space it broke at: the pieces joined as they
    are give back the JSON, short only of spaces (inside a description, or between tokens).
    """
    header, *rows = table_rows(output)
    assert header == ["Property", "Value"], output
    pieces: dict[str, list[str]] = {}
    name = ""
    for prop, value in rows:
        name = prop or name
        pieces.setdefault(name, []).append(value)
    return {prop: json.loads("".join(values)) for prop, values in pieces.items()}


def wait_for_import(gc: object, image_id: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Poll until every task of the image has ended and the image's import lock is gone; the image and its tasks.

    gc must see every task (an admin's client): a copy-image task belongs to the admin's project. A task is
    committed before POST .../import answers, so after the 202 there is always one to wait for.
    """
    deadline = time.monotonic() + IMPORT_SECONDS
    while True:
        tasks = gc.images.get_associated_image_tasks(image_id)["tasks"]
        image = dict(gc.images.get(image_id))
        if tasks and all(task["status"] in ENDED for task in tasks) and "os_glance_import_task" not in image:
            return image, tasks
        assert time.monotonic() < deadline, f"the import did not end: {image['status']}, {tasks}"
        time.sleep(POLL_SECONDS)  # a poll interval, not a synchronisation: the deadline above decides


def stored(tmp_path: Path, store: str, image_id: str) -> bytes:
    return (tmp_path / store / image_id).read_bytes()


def staging_files(tmp_path: Path) -> list[str]:
    root = tmp_path / "staging"
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def imported(glance: object, admin_glance: object, stores: list[str]) -> str:
    """An image of p1 active in these stores through glanceclient's Python API: create, stage, glance-direct."""
    image = glance.images.create(name="imported", disk_format="raw", container_format="bare")
    glance.images.stage(image.id, io.BytesIO(DATA))
    glance.images.image_import(image.id, "glance-direct", stores=stores)
    shown, _ = wait_for_import(admin_glance, image.id)
    assert (shown["status"], shown["stores"]) == ("active", ",".join(stores))
    return image.id


def locations_of(image: dict[str, object]) -> list[str]:
    return [location["metadata"]["store"] for location in image["locations"]]


# --- discovery -------------------------------------------------------------------------------------------------


def test_import_info_lists_the_three_methods(run_glance, token, glance):
    result = run_glance(token, "import-info")

    assert result.returncode == 0, result.stderr
    assert json_table(result.stdout)["import-methods"]["value"] == METHODS
    assert glance.images.get_import_info()["import-methods"]["value"] == METHODS


def test_stores_info_lists_the_three_stores_with_fast_the_default(run_glance, token):
    result = run_glance(token, "stores-info")

    assert result.returncode == 0, result.stderr
    stores = json_table(result.stdout)["stores"]
    assert [store["id"] for store in stores] == list(STORES)
    assert [store["id"] for store in stores if store.get("default") == "true"] == ["fast"]


# --- glance-direct -------------------------------------------------------------------------------------------------


def test_image_create_via_import_glance_direct_lands_in_both_stores(run_glance, token, glance, admin_glance, tmp_path):
    image_file = tmp_path / "disk.raw"
    image_file.write_bytes(DATA)

    result = run_glance(
        token,
        "image-create-via-import",
        "--name",
        "via-import",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--import-method",
        "glance-direct",
        "--file",
        str(image_file),
        "--stores",
        "fast,cheap",
    )

    assert result.returncode == 0, result.stderr
    image_id = property_table(result.stdout)["id"]
    shown, tasks = wait_for_import(admin_glance, image_id)
    assert (shown["status"], shown["size"], shown["owner"]) == ("active", len(DATA), "p1")
    assert locations_of(shown) == ["fast", "cheap"]
    assert (shown["os_glance_importing_to_stores"], shown["os_glance_failed_import"]) == ("", "")
    assert [task["status"] for task in tasks] == ["success"]
    assert b"".join(glance.images.data(image_id)) == DATA  # checked against os_hash_value as it is read
    assert stored(tmp_path, "fast", image_id) == stored(tmp_path, "cheap", image_id) == DATA
    assert staging_files(tmp_path) == []


def test_image_tasks_shows_the_successful_import(run_glance, token, glance, admin_glance):
    image_id = imported(glance, admin_glance, ["fast", "cheap"])

    result = run_glance(token, "image-tasks", image_id)

    assert result.returncode == 0, result.stderr
    [row] = list_table(result.stdout)
    assert row["Status"] == "success"


def test_python_api_stage_then_image_import_makes_the_image_active(glance, admin_glance, tmp_path):
    image = glance.images.create(name="staged", disk_format="raw", container_format="bare")

    glance.images.stage(image.id, io.BytesIO(DATA))
    assert glance.images.get(image.id)["status"] == "uploading"
    glance.images.image_import(image.id, "glance-direct", stores=["fast", "cheap"])

    shown, tasks = wait_for_import(admin_glance, image.id)
    assert (shown["status"], shown["stores"]) == ("active", "fast,cheap")
    assert [(task["status"], task["type"]) for task in tasks] == [("success", "api_image_import")]
    assert b"".join(glance.images.data(image.id)) == DATA
    assert stored(tmp_path, "fast", image.id) == stored(tmp_path, "cheap", image.id) == DATA


# --- web-download --------------------------------------------------------------------------------------------------


def create_via_web_download(run_glance: Callable[..., subprocess.CompletedProcess[str]], token: str, uri: str) -> str:
    result = run_glance(
        token,
        "image-create-via-import",
        "--name",
        "from-the-web",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--import-method",
        "web-download",
        "--uri",
        uri,
    )
    assert result.returncode == 0, result.stderr
    return property_table(result.stdout)["id"]


def test_web_download_through_the_cli_reads_the_url_into_the_default_store(
    run_glance, token, glance, admin_glance, web, tmp_path
):
    image_id = create_via_web_download(run_glance, token, f"{web.base}/image")

    shown, tasks = wait_for_import(admin_glance, image_id)
    assert (shown["status"], shown["size"], shown["stores"]) == ("active", len(WEB_DATA), "fast")
    assert [task["status"] for task in tasks] == ["success"]
    assert "GET /image HTTP/1.1" in web.requests_seen
    assert b"".join(glance.images.data(image_id)) == WEB_DATA
    assert stored(tmp_path, "fast", image_id) == WEB_DATA
    assert staging_files(tmp_path) == []


def test_web_download_of_a_url_answering_404_fails_and_leaves_the_image_queued(
    run_glance, token, admin_glance, web, tmp_path
):
    image_id = create_via_web_download(run_glance, token, f"{web.base}/status/404")

    shown, tasks = wait_for_import(admin_glance, image_id)
    assert (shown["status"], shown["size"], shown["locations"]) == ("queued", None, [])
    assert shown["os_glance_failed_import"] == "fast"
    assert shown["os_glance_importing_to_stores"] == ""
    assert [task["status"] for task in tasks] == ["failure"]
    assert "404" in tasks[0]["message"]
    assert "GET /status/404 HTTP/1.1" in web.requests_seen
    assert staging_files(tmp_path) == []
    assert not (tmp_path / "fast" / image_id).exists()


# --- copy-image and stores-delete ----------------------------------------------------------------------------------


def test_copy_image_through_the_cli_as_an_admin_adds_a_third_location(
    run_glance, admin_token, glance, admin_glance, tmp_path
):
    image_id = imported(glance, admin_glance, ["fast", "cheap"])

    result = run_glance(admin_token, "image-import", "--import-method", "copy-image", "--stores", "slow", image_id)

    assert result.returncode == 0, result.stderr
    shown, tasks = wait_for_import(admin_glance, image_id)
    assert locations_of(shown) == ["fast", "cheap", "slow"]
    assert (shown["status"], shown["stores"]) == ("active", "fast,cheap,slow")
    assert [task["status"] for task in tasks] == ["success", "success"]
    assert stored(tmp_path, "slow", image_id) == DATA


def test_copy_image_through_the_cli_as_a_member_is_forbidden(run_glance, token, glance, admin_glance, tmp_path):
    image_id = imported(glance, admin_glance, ["fast"])

    result = run_glance(token, "image-import", "--import-method", "copy-image", "--stores", "slow", image_id)

    assert result.returncode == 1
    assert "Policy does not allow copy_image to be performed." in result.stderr
    shown = admin_glance.images.get(image_id)
    assert locations_of(shown) == ["fast"]
    assert len(admin_glance.images.get_associated_image_tasks(image_id)["tasks"]) == 1  # the glance-direct one
    assert not (tmp_path / "slow").exists() or list((tmp_path / "slow").iterdir()) == []


def test_stores_delete_as_an_admin_removes_the_location_in_that_store(
    run_glance, admin_token, glance, admin_glance, tmp_path
):
    image_id = imported(glance, admin_glance, ["fast", "cheap"])

    result = run_glance(admin_token, "stores-delete", "--store", "cheap", image_id)

    assert result.returncode == 0, result.stderr
    shown = glance.images.get(image_id)
    assert (shown["status"], shown["stores"]) == ("active", "fast")
    assert locations_of(shown) == ["fast"]
    assert not (tmp_path / "cheap" / image_id).exists()  # no delayed_delete: the data goes at once
    assert b"".join(glance.images.data(image_id)) == DATA


def test_stores_delete_as_a_member_is_refused(run_glance, token, glance, admin_glance):
    image_id = imported(glance, admin_glance, ["fast", "cheap"])

    result = run_glance(token, "stores-delete", "--store", "cheap", image_id)

    assert result.returncode == 1
    assert f"Unable to delete image '{image_id}' from store 'cheap'" in result.stderr
    assert "Policy does not allow delete_image_location to be performed." in result.stderr
    assert locations_of(glance.images.get(image_id)) == ["fast", "cheap"]


# --- openstacksdk --------------------------------------------------------------------------------------------------


def test_sdk_stage_image_then_import_image_glance_direct(conn, admin_glance, tmp_path):
    image = conn.image.create_image(name="sdk-staged", disk_format="raw", container_format="bare")

    conn.image.stage_image(image, data=DATA)
    started = conn.image.import_image(image, method="glance-direct", stores=["fast", "slow"])

    assert started.status_code == 202  # import_image returns the raw response and raises on no status

    shown, tasks = wait_for_import(admin_glance, image.id)
    assert (shown["status"], shown["stores"]) == ("active", "fast,slow")
    assert [task["status"] for task in tasks] == ["success"]
    assert conn.image.download_image(image).content == DATA
    assert stored(tmp_path, "slow", image.id) == DATA


def test_sdk_create_image_with_use_import_stages_and_imports(conn, admin_glance):
    image = conn.image.create_image(
        name="sdk-use-import", data=DATA, disk_format="raw", container_format="bare", use_import=True
    )

    shown, _ = wait_for_import(admin_glance, image.id)
    assert (shown["status"], shown["size"]) == ("active", len(DATA))


def test_sdk_copy_image_as_an_admin(admin_conn, glance, admin_glance, tmp_path):
    image_id = imported(glance, admin_glance, ["fast"])

    image = admin_conn.image.get_image(image_id)  # import_image needs the formats: a bare id will not do

    started = admin_conn.image.import_image(image, method="copy-image", stores=["cheap", "slow"])

    assert started.status_code == 202
    shown, tasks = wait_for_import(admin_glance, image_id)
    assert locations_of(shown) == ["fast", "cheap", "slow"]
    assert [task["status"] for task in tasks] == ["success", "success"]
    assert stored(tmp_path, "cheap", image_id) == stored(tmp_path, "slow", image_id) == DATA
    assert glance.images.get(image_id)["stores"] == "fast,cheap,slow"


def test_sdk_copy_image_as_a_member_is_forbidden(conn, glance, admin_glance):
    image_id = imported(glance, admin_glance, ["fast"])

    image = conn.image.get_image(image_id)

    refused = conn.image.import_image(image, method="copy-image", stores=["slow"])

    assert refused.status_code == 403  # the raw response: import_image raises on no status
    assert "Policy does not allow copy_image" in refused.text
    assert glance.images.get(image_id)["stores"] == "fast"
