"""A gunicorn worker killed with SIGKILL in the middle of an import (issue 16), for real.

gunicorn runs the shipped configuration (deploy/gunicorn.conf.py) on PostgreSQL with one worker; import
tasks run on that worker's own threads. The image's bytes come from a local web server that sends them
at a slow, steady pace until the test lets them flow. Once the task's copy row and the first bytes of its
scratch file are on disk, the worker that holds the task's lease (its pid is in the holder's name) is
killed with SIGKILL, so no handler and no `finally` runs. Once the lease has run out, `locquota scrub`
(which runs the import reaper first) must end the task as failed and leave nothing behind: no file in
staging or any store, exact counters, no drift, a clean `locquota audit`. Every wait is for an observed
condition, bounded by a deadline that fails the test.
"""

import http.server
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from locations.models import Task, TaskCopy
from locquota.cli import cli
from locquota.db import make_engine
from quota.models import MIB
from tests.conftest import multi_store
from tests.e2e.conftest import gunicorn
from tests.e2e.test_serving import REPOSITORY, create_image, request

LEASE_SECONDS = 3  # locquota.import_lease_seconds: more than twice the download timeout
DOWNLOAD_TIMEOUT_SECONDS = 1
DATA = bytes(range(256)) * 32768  # 8 MiB (usage is shown in MiB)
TRICKLE = 8192  # bytes the web server sends per PACE while it is held back: about 50 s for all of DATA
PACE = 0.05
DEADLINE = 20  # seconds: a bound on every wait here; reaching it fails the test
FILE_STORES = ("fast", "cheap")

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]


@dataclass
class Transfer:
    """One GET of /image as the web server sent it."""

    ended: threading.Event = field(default_factory=threading.Event)
    sent_bytes: int = 0
    completed: bool = False


class PacedServer(http.server.ThreadingHTTPServer):
    """Serves DATA at /image: slowly and steadily until `flowing` is set, then all the rest at once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PacedHandler)
        self.flowing = threading.Event()
        self.transfers: list[Transfer] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/image"

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that went away mid-body is what these tests make happen."""


class PacedHandler(http.server.BaseHTTPRequestHandler):
    server: PacedServer

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        transfer = Transfer()
        self.server.transfers.append(transfer)
        try:
            self._headers()
            while transfer.sent_bytes < len(DATA):
                step = len(DATA) if self.server.flowing.is_set() else TRICKLE
                self.wfile.write(DATA[transfer.sent_bytes : transfer.sent_bytes + step])
                transfer.sent_bytes = min(len(DATA), transfer.sent_bytes + step)
                self.server.flowing.wait(PACE)  # the server's pace while held back: the workload, not a wait
            transfer.completed = True
        except OSError:
            pass  # the reader died under it
        finally:
            transfer.ended.set()

    def _headers(self) -> None:
        if self.path != "/image":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read `transfers` instead."""


@pytest.fixture
def web() -> Iterator[PacedServer]:
    server = PacedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.flowing.set()
    server.shutdown()
    server.server_close()
    thread.join(DEADLINE)


@pytest.fixture
def live_settings(settings: dict[str, str], tmp_path: Path, web: PacedServer) -> dict[str, str]:
    stores: dict[str, tuple[str, dict[str, str]]] = {
        name: ("file", {"filesystem_store_datadir": str(tmp_path / name)}) for name in FILE_STORES
    }
    stores["web"] = ("http", {"http_store_allowed_hosts": f"127.0.0.1:{web.server_port}"})
    return {
        **multi_store(settings, "fast", stores),
        "locquota.auth_strategy": "tokens",
        "locquota.show_multiple_locations": "true",
        "locquota.node_staging_uri": f"file://{tmp_path / 'staging'}",
        "locquota.import_allowed_hosts": "127.0.0.1",
        "locquota.import_allowed_ports": str(web.server_port),
        "locquota.import_lease_seconds": str(LEASE_SECONDS),
        "locquota.web_download_timeout_seconds": str(DOWNLOAD_TIMEOUT_SECONDS),
    }


@pytest.fixture
def server(deployment_ini: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    environment = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus-multiproc"),
        "LOCQUOTA_WORKERS": "1",
        "LOCQUOTA_THREADS": "4",
    }
    config = str(REPOSITORY / "deploy" / "gunicorn.conf.py")
    with gunicorn(deployment_ini, tmp_path, "--config", config, env=environment) as address:
        yield address


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    """The test database, read directly: the copy rows and the task's lease."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def wait_for(condition, what: str):
    deadline = time.monotonic() + DEADLINE
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {DEADLINE} s for {what}")
        time.sleep(0.05)  # polling an observed condition, not a synchronisation
    return result


def call(address, method: str, path: str, token: str, body: object = None) -> tuple[int, dict]:
    status, answer = request(address, method, path, token, None if body is None else json.dumps(body).encode())
    return status, (json.loads(answer) if answer else {})


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def copy_with_bytes(engine: Engine, image_id: str, directory: Path) -> Callable[[], Task | None]:
    """A condition: the image's task, once one of its copy rows writes into directory and has bytes on disk."""

    def observed() -> Task | None:
        with Session(engine) as session:
            copies = session.scalars(select(TaskCopy).where(TaskCopy.image_id == uuid.UUID(image_id))).all()
            for copy in copies:
                scratch = Path((copy.scratch_url or "").removeprefix("file://"))
                if scratch.parent == directory and scratch.exists() and scratch.stat().st_size > 0:
                    return session.get(Task, copy.task_id)
        return None

    return observed


def kill_the_worker_running(task: Task) -> None:
    """SIGKILL the process named in the task's lease holder (`import:<host>:<pid>:<random>`); wait until it is gone."""
    assert task.holder is not None
    assert task.holder.startswith("import:"), task.holder
    pid = int(task.holder.split(":")[2])
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, f"worker {pid} to be reaped by the gunicorn master")


def wait_for_lease_to_run_out(engine: Engine, task_id: uuid.UUID) -> None:
    """The holder is dead, so the lease in the database is its last renewal: wait until it has passed."""

    def ran_out() -> bool:
        with Session(engine) as session:
            expires_at = session.get(Task, task_id).lease_expires_at  # type: ignore[union-attr]
        return expires_at is not None and datetime.now(UTC).replace(tzinfo=None) > expires_at

    wait_for(ran_out, "the task's lease to run out")


def scrub_reconcile_audit(deployment_ini: Path) -> str:
    """`locquota scrub` (the reapers first), then `reconcile` with no drift and a clean `audit`; scrub's output."""
    runner = CliRunner()
    scrubbed = runner.invoke(cli, ["--config", str(deployment_ini), "scrub"])
    assert scrubbed.exit_code == 0, (scrubbed.output, scrubbed.exception)
    reconciled = runner.invoke(cli, ["--config", str(deployment_ini), "reconcile"])
    assert reconciled.exit_code == 0, reconciled.output
    assert "0 drifted figures in 0 tenants" in reconciled.output
    audited = runner.invoke(cli, ["--config", str(deployment_ini), "audit", "--grace-seconds", "0"])
    assert audited.exit_code == 0, audited.output  # the stores and the database agree
    return scrubbed.output


def usage(address, token: str) -> dict[str, int]:
    status, document = call(address, "GET", "/v2/info/usage", token)
    assert status == 200, document
    return {name: figure["usage"] for name, figure in document["usage"].items()}


def test_a_worker_killed_mid_web_download_leaves_nothing_once_its_lease_runs_out(
    server, web, token, db_engine, deployment_ini, tmp_path
):
    staging = tmp_path / "staging"
    image_id = create_image(server, token)
    body = {"method": {"name": "web-download", "uri": web.url}, "stores": list(FILE_STORES)}
    status, answer = call(server, "POST", f"/v2/images/{image_id}/import", token, body)
    assert status == 202, answer

    task = wait_for(copy_with_bytes(db_engine, image_id, staging), "the download's copy row and its first bytes")
    kill_the_worker_running(task)
    web.flowing.set()
    [transfer] = web.transfers
    assert transfer.ended.wait(DEADLINE), "the web server is still sending to a dead worker"
    assert not transfer.completed  # the download was cut short by the kill

    assert [name.endswith(".partial") for name in files(staging)] == [True]  # left behind
    status, shown = call(server, "GET", f"/v2/images/{image_id}", token)  # a new worker answers
    assert (status, shown["status"], shown["os_glance_import_task"]) == (200, "importing", str(task.id))

    wait_for_lease_to_run_out(db_engine, task.id)
    scrubbed = scrub_reconcile_audit(deployment_ini)

    assert "ended 1 import tasks whose lease ran out" in scrubbed
    status, shown = call(server, "GET", f"/v2/images/{image_id}", token)
    assert (status, shown["status"], shown["size"], shown["locations"]) == (200, "queued", None, [])
    assert (shown["os_glance_failed_import"], shown["os_glance_importing_to_stores"]) == ("fast,cheap", "")
    assert "os_glance_import_task" not in shown
    status, listed = call(server, "GET", f"/v2/images/{image_id}/tasks", token)
    [ended] = listed["tasks"]
    assert (ended["id"], ended["status"]) == (str(task.id), "failure")
    assert "lease ran out" in ended["message"]
    assert files(staging) == []
    assert {name: files(tmp_path / name) for name in FILE_STORES} == {name: [] for name in FILE_STORES}
    with Session(db_engine) as session:
        assert session.scalars(select(TaskCopy)).all() == []
    assert usage(server, token) == {
        "image_size_total": 0, "image_count_total": 1, "image_count_uploading": 0, "image_stage_total": 0,
    }  # fmt: skip


def test_a_worker_killed_mid_copy_image_leaves_the_image_as_it_was(
    server, web, token, issue_token, db_engine, deployment_ini, tmp_path
):
    image_id = create_image(server, token)
    web.flowing.set()  # adding the location reads the data whole: let it flow
    status, answer = call(server, "POST", f"/v2/images/{image_id}/locations", token, {"url": web.url})
    assert status == 202, answer
    status, before = call(server, "GET", f"/v2/images/{image_id}", token)
    assert (before["status"], before["size"], before["stores"]) == ("active", len(DATA), "web")
    web.flowing.clear()  # from here on the copy's bytes come slowly
    admin = issue_token("operators", "admin")

    body = {"method": {"name": "copy-image"}, "stores": ["fast"]}
    status, answer = call(server, "POST", f"/v2/images/{image_id}/import", admin, body)
    assert status == 202, answer
    task = wait_for(copy_with_bytes(db_engine, image_id, tmp_path / "fast"), "the copy's row and its first bytes")
    kill_the_worker_running(task)
    web.flowing.set()
    transfer = web.transfers[-1]
    assert transfer.ended.wait(DEADLINE), "the web server is still sending to a dead worker"
    assert not transfer.completed  # the copy was cut short by the kill

    assert [name.endswith(".partial") for name in files(tmp_path / "fast")] == [True]  # left behind
    assert usage(server, token)["image_size_total"] == 2 * len(DATA) // MIB  # the copy's admission, still held

    wait_for_lease_to_run_out(db_engine, task.id)
    scrubbed = scrub_reconcile_audit(deployment_ini)

    assert "ended 1 import tasks whose lease ran out" in scrubbed
    status, shown = call(server, "GET", f"/v2/images/{image_id}", token)
    assert (status, shown["status"], shown["stores"], shown["checksum"]) == (200, "active", "web", before["checksum"])
    assert [(location["url"], location["metadata"]) for location in shown["locations"]] == [(web.url, {"store": "web"})]
    assert (shown["os_glance_failed_import"], shown["os_glance_importing_to_stores"]) == ("fast", "")
    assert "os_glance_import_task" not in shown
    status, listed = call(server, "GET", f"/v2/images/{image_id}/tasks", admin)
    [ended] = listed["tasks"]
    assert (ended["id"], ended["status"]) == (str(task.id), "failure")
    assert "lease ran out" in ended["message"]
    assert {name: files(tmp_path / name) for name in FILE_STORES} == {name: [] for name in FILE_STORES}
    assert files(tmp_path / "staging") == []
    with Session(db_engine) as session:
        assert session.scalars(select(TaskCopy)).all() == []
    one_location = len(DATA) // MIB
    assert usage(server, token) == {
        "image_size_total": one_location, "image_count_total": 1, "image_count_uploading": 0, "image_stage_total": 0,
    }  # fmt: skip
