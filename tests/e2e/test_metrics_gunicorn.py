"""/metrics under a real gunicorn with two workers, configured by deploy/gunicorn.conf.py (multiprocess mode).

Requests are spread over both workers (each on a new connection); one scrape, served by whichever
worker, must show the counters of both summed. Workers are told apart by the files each writes in
PROMETHEUS_MULTIPROC_DIR, named after its pid. The first scrape, before anything happened, already holds
every family the contract names, and the metrics directory a run made itself is gone when it stops.
"""

import http.client
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import gunicorn
from tests.metrics_contract import API_FAMILIES, missing_families

REPOSITORY = Path(__file__).resolve().parents[2]
MIN_REQUESTS, MAX_REQUESTS = 40, 1000
TIMEOUT = 30


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    return (
        tmp_path / "prometheus-multiproc"
    )  # not "metrics": gunicorn runs in tmp_path, where it would shadow the package


@pytest.fixture
def two_workers(deployment_ini: Path, tmp_path: Path, multiproc_dir: Path) -> Iterator[tuple[str, int]]:
    """gunicorn --paste <ini> --config deploy/gunicorn.conf.py with 2 workers."""
    config = str(REPOSITORY / "deploy" / "gunicorn.conf.py")
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with gunicorn(deployment_ini, tmp_path, "--config", config, "--workers", "2", env=environment) as address:
        yield address


@pytest.fixture
def temporary_root(tmp_path: Path) -> Path:
    """gunicorn's TMPDIR: where the configuration makes its metrics directory when none is named."""
    root = tmp_path / "tmp"
    root.mkdir()
    return root


def made_metrics_directories(temporary_root: Path) -> list[Path]:
    return sorted(temporary_root.glob("locquota-metrics-*"))


def get(address: tuple[str, int], path: str) -> tuple[int, str]:
    """One request on its own connection, so the next may land on the other worker."""
    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def served_by_worker(multiproc_dir: Path, scratch: Path) -> dict[str, float]:
    """GET /versions requests each worker counted, read from its own files alone (pid -> count).

    Every worker writes its files at start, so their presence proves nothing; their counts do.
    """
    pids = {match.group(1) for path in multiproc_dir.iterdir() if (match := re.search(r"_(\d+)\.db$", path.name))}
    counts = {}
    for pid in pids:
        alone = scratch / pid
        alone.mkdir(parents=True, exist_ok=True)
        for path in multiproc_dir.glob(f"*_{pid}.db"):
            shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[pid] = (
            registry.get_sample_value(
                "locquota_http_request_duration_seconds_count",
                {"route": "versions.list", "method": "GET", "status": "200"},
            )
            or 0.0
        )
    return counts


def test_one_scrape_sums_the_counters_of_every_worker(two_workers, multiproc_dir, tmp_path):
    sent, served = 0, {}
    # The kernel picks which worker accepts each connection: go on until both have served (bounded).
    while sent < MIN_REQUESTS or (sum(count > 0 for count in served.values()) < 2 and sent < MAX_REQUESTS):
        status, _body = get(two_workers, "/versions")
        assert status == 200
        sent += 1
        if sent >= MIN_REQUESTS:
            served = served_by_worker(multiproc_dir, tmp_path / "by-worker")
    assert sorted(count > 0 for count in served.values()) == [True, True], f"after {sent} requests: {served}"
    assert sum(served.values()) == sent

    status, body = get(two_workers, "/metrics")

    assert status == 200
    counts = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "locquota_http_request_duration_seconds_count"
    }
    assert counts[(("method", "GET"), ("route", "versions.list"), ("status", "200"))] == sent
    for family in text_string_to_metric_families(body):
        if family.name == "locquota_collector_up":
            up = {sample.labels["collector"]: sample.value for sample in family.samples}
            assert {"backlog", "quota", "reconcile", "data_keys", "uploads", "cache"} <= set(up)
            assert set(up.values()) == {1}


@pytest.mark.parametrize("directory", ["named", "made"])
def test_the_first_scrape_holds_every_family_of_the_contract(
    deployment_ini, tmp_path, multiproc_dir, temporary_root, directory
):
    config = str(REPOSITORY / "deploy" / "gunicorn.conf.py")
    environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    environment["TMPDIR"] = str(temporary_root)
    if directory == "named":
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    with gunicorn(deployment_ini, tmp_path, "--config", config, "--workers", "2", env=environment) as address:
        status, body = get(address, "/metrics")

    assert status == 200
    assert missing_families(body, API_FAMILIES) == []


def test_a_run_removes_the_metrics_directory_it_made(deployment_ini, tmp_path, temporary_root):
    config = str(REPOSITORY / "deploy" / "gunicorn.conf.py")
    environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    environment["TMPDIR"] = str(temporary_root)
    with gunicorn(deployment_ini, tmp_path, "--config", config, "--workers", "1", env=environment) as address:
        status, _body = get(address, "/versions")  # answered: the master made the directory, a worker counts there
        assert status == 200
        [made] = made_metrics_directories(temporary_root)
        assert any(made.glob("*.db"))

    assert made_metrics_directories(temporary_root) == []


def test_a_named_metrics_directory_is_kept_and_none_is_made(deployment_ini, tmp_path, multiproc_dir, temporary_root):
    config = str(REPOSITORY / "deploy" / "gunicorn.conf.py")
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "TMPDIR": str(temporary_root)}
    with gunicorn(deployment_ini, tmp_path, "--config", config, "--workers", "1", env=environment) as address:
        status, _body = get(address, "/versions")
        assert status == 200

    assert any(multiproc_dir.glob("*.db"))
    assert made_metrics_directories(temporary_root) == []
