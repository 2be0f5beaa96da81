"""A gunicorn worker killed with SIGKILL in the middle of an upload (issue 13), for real.

gunicorn runs the shipped configuration (deploy/gunicorn.conf.py) on PostgreSQL. A client streams an
upload; once the upload's lease and its first bytes are in the store, the worker that holds the lease
(its pid is in the lease holder's name) is killed with SIGKILL, so no handler and no `finally` runs.
The master starts a new worker. Once the lease has run out, `locquota scrub` (which reaps first)
leaves no image in saving, exact counters, no drift, no file without a location, and a clean
`locquota audit`. Every wait is
for an observed condition, bounded by a deadline that fails the test.
"""

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import Upload
from locquota.cli import cli
from locquota.db import make_engine
from tests.e2e.conftest import gunicorn
from tests.e2e.test_serving import ANSWER_WITHIN, REPOSITORY, create_image, request

LEASE_SECONDS = 3  # locquota.upload_lease_seconds: more than twice the idle timeout
IDLE_SECONDS = 1
CHUNK = b"k" * 4096
DEADLINE = 20  # seconds: a bound on every wait here; reaching it fails the test

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]


@pytest.fixture
def live_settings(settings: dict[str, str]) -> dict[str, str]:
    return {
        **settings,
        "locquota.auth_strategy": "tokens",
        "locquota.client_idle_timeout_seconds": str(IDLE_SECONDS),
        "locquota.upload_lease_seconds": str(LEASE_SECONDS),
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


class SteadyUpload(threading.Thread):
    """A client that keeps sending the body in small steps until told to stop or the server goes away."""

    def __init__(self, address: tuple[str, int], token: str, image_id: str) -> None:
        super().__init__(name="steady-upload", daemon=True)
        self.stop = threading.Event()
        self._socket = socket.create_connection(address, timeout=ANSWER_WITHIN)
        self._socket.sendall(
            f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: localhost\r\nX-Auth-Token: {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {1000 * len(CHUNK)}\r\n\r\n".encode()
        )

    def run(self) -> None:
        try:
            while not self.stop.wait(0.05):  # the client's pace: the workload, well inside the idle timeout
                self._socket.sendall(CHUNK)
        except OSError:
            pass  # the worker died under it
        finally:
            self._socket.close()


def wait_for(condition, what: str):
    deadline = time.monotonic() + DEADLINE
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {DEADLINE} s for {what}")
        time.sleep(0.05)  # polling an observed condition, not a synchronisation
    return result


def test_a_worker_killed_mid_upload_leaves_nothing_once_its_lease_runs_out(
    server, token, database_url, store_root, deployment_ini, tmp_path
):
    image_id = create_image(server, token)
    client = SteadyUpload(server, token, image_id)
    client.start()
    engine = make_engine(database_url)
    try:

        def lease_with_bytes_written() -> Upload | None:
            with Session(engine) as session:
                lease = session.get(Upload, uuid.UUID(image_id))
            if lease is None:
                return None
            scratch = Path(lease.scratch_url.removeprefix("file://"))
            return lease if scratch.exists() and scratch.stat().st_size > 0 else None

        lease = wait_for(lease_with_bytes_written, "the upload's lease and its first bytes")
        worker_pid = int(lease.holder.split(":")[2])
        os.kill(worker_pid, signal.SIGKILL)
        client.stop.set()
        client.join(DEADLINE)

        assert [path.name.endswith(".partial") for path in store_root.iterdir()] == [True]  # left behind
        status, document = request(server, "GET", f"/v2/images/{image_id}", token)  # a new worker answers
        assert (status, json.loads(document)["status"]) == (200, "saving")

        wait_for(lambda: datetime.now(UTC).replace(tzinfo=None) > lease.expires_at, "the lease to run out")
        runner = CliRunner()
        scrubbed = runner.invoke(cli, ["--config", str(deployment_ini), "scrub"])
        assert scrubbed.exit_code == 0, scrubbed.output
        assert "reaped 1 uploads" in scrubbed.output
        reconciled = runner.invoke(cli, ["--config", str(deployment_ini), "reconcile"])
        assert reconciled.exit_code == 0, reconciled.output
        assert "0 drifted figures in 0 tenants" in reconciled.output
        audited = runner.invoke(cli, ["--config", str(deployment_ini), "audit", "--grace-seconds", "0"])
        assert audited.exit_code == 0, audited.output  # the store and the database agree

        assert list(store_root.iterdir()) == []
        with Session(engine) as session:
            assert session.scalars(select(Upload)).all() == []
        status, document = request(server, "GET", f"/v2/images/{image_id}", token)
        assert (status, json.loads(document)["status"]) == (200, "queued")
        status, usage = request(server, "GET", "/v2/info/usage", token)
        counts = {name: figure["usage"] for name, figure in json.loads(usage)["usage"].items()}
        assert counts == {
            "image_size_total": 0, "image_count_total": 1, "image_count_uploading": 0, "image_stage_total": 0,
        }  # fmt: skip
    finally:
        client.stop.set()
        engine.dispose()
