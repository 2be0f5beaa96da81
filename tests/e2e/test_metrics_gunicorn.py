"""/metrics under a real gunicorn with two workers, configured by deploy/gunicorn.conf.py (multiprocess mode).

Requests are spread over both workers (each on a new connection); one scrape, served by whichever
worker, must show the counters of both summed. Workers are told apart by the files each writes in
PROMETHEUS_MULTIPROC_DIR, named after its pid.
"""

import http.client
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import SHUTDOWN_SECONDS, VENV_BIN

REPOSITORY = Path(__file__).resolve().parents[2]
REQUESTS = 40
TIMEOUT = 30


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    return (
        tmp_path / "prometheus-multiproc"
    )  # not "metrics": gunicorn runs in tmp_path, where it would shadow the package


@pytest.fixture
def two_workers(deployment_ini: Path, tmp_path: Path, multiproc_dir: Path) -> Iterator[tuple[str, int]]:
    """gunicorn --paste <ini> --config deploy/gunicorn.conf.py with 2 workers on a socket bound here."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    log_path = tmp_path / "gunicorn.log"
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "--paste",
                str(deployment_ini),
                "--config",
                str(REPOSITORY / "deploy" / "gunicorn.conf.py"),
                "--bind",
                f"fd://{listener.fileno()}",
                "--workers",
                "2",
            ],
            cwd=tmp_path,
            env=environment,
            pass_fds=(listener.fileno(),),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield "127.0.0.1", listener.getsockname()[1]
    finally:
        process.terminate()
        try:
            process.wait(SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SHUTDOWN_SECONDS)
        listener.close()
        sys.stderr.write(log_path.read_text(errors="replace"))


def get(address: tuple[str, int], path: str) -> tuple[int, str]:
    """One request on its own connection, so the next may land on the other worker."""
    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def worker_pids(multiproc_dir: Path) -> set[str]:
    return {match.group(1) for path in multiproc_dir.iterdir() if (match := re.search(r"_(\d+)\.db$", path.name))}


def test_one_scrape_sums_the_counters_of_every_worker(two_workers, multiproc_dir):
    pids: set[str] = set()
    for _ in range(REQUESTS):
        status, _body = get(two_workers, "/versions")
        assert status == 200
        pids = worker_pids(multiproc_dir)
    assert len(pids) == 2, f"the requests did not reach both workers: {pids}"

    status, body = get(two_workers, "/metrics")

    assert status == 200
    counts = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "locquota_http_request_duration_seconds_count"
    }
    assert counts[(("method", "GET"), ("route", "versions.list"), ("status", "200"))] == REQUESTS
    for family in text_string_to_metric_families(body):
        if family.name == "locquota_collector_up":
            assert {sample.labels["collector"]: sample.value for sample in family.samples} == {
                "backlog": 1, "quota": 1, "reconcile": 1, "cache": 1,
            }  # fmt: skip
