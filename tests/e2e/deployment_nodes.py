"""The API nodes and scrubber daemons of a deployment, as real processes on 127.0.0.1.

An API node is a gunicorn master started as production starts it (`--paste <ini> --config
deploy/gunicorn.conf.py`), with its own .ini, its own environment (workers and threads through the
LOCQUOTA_* variables deploy/gunicorn.conf.py reads) and its own prometheus multiprocess directory. Beside
it runs `locquota scrub --daemon`, serving its own metrics port, as docs/deployment.md describes.
"""

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import port_for
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import write_ini
from tests.e2e.conftest import gunicorn

REPOSITORY = Path(__file__).resolve().parents[2]
GUNICORN_CONFIG = REPOSITORY / "deploy" / "gunicorn.conf.py"
LOCQUOTA = str(Path(sys.executable).with_name("locquota"))
# Bounds for waits on real processes; reaching one is a failure, never a synchronisation.
BOOT_DEADLINE = 60  # several Python processes start at once on two busy cores
STOP_DEADLINE = 30
POLL_SECONDS = 0.05
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True, slots=True)
class ApiNode:
    """A running gunicorn master and its workers."""

    name: str
    address: tuple[str, int]
    multiproc_dir: Path
    workers: int


@contextmanager
def api_node(name: str, settings: dict[str, str], workdir: Path, workers: int, threads: int) -> Iterator[ApiNode]:
    """One node: its .ini and environment, gunicorn with deploy/gunicorn.conf.py; stopped (SIGTERM) at the end."""
    workdir.mkdir(parents=True)
    ini = write_ini(workdir / f"{name}.ini", settings)
    multiproc_dir = workdir / "prometheus-multiproc"  # not "metrics": it would shadow the package in the cwd
    environment = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        "LOCQUOTA_WORKERS": str(workers),
        "LOCQUOTA_THREADS": str(threads),
    }
    with gunicorn(ini, workdir, "--config", str(GUNICORN_CONFIG), env=environment) as address:
        yield ApiNode(name, address, multiproc_dir, workers)


def wait_until_serving(node: ApiNode) -> None:
    """Return once every worker of the node has built the app and the node answers /readyz.

    Each worker writes its metric files (named after its pid) while the app is built, before it accepts.
    """
    deadline = time.monotonic() + BOOT_DEADLINE
    while len(worker_pids(node.multiproc_dir)) < node.workers:
        if time.monotonic() > deadline:
            pytest.fail(f"{node.name}: {len(worker_pids(node.multiproc_dir))} of {node.workers} workers booted")
        time.sleep(POLL_SECONDS)  # polling an observed condition (a poll interval, not a synchronisation)
    status, body = get(node.address, "/readyz", BOOT_DEADLINE)
    assert status == 200, (node.name, body)


def worker_pids(multiproc_dir: Path) -> set[str]:
    if not multiproc_dir.is_dir():
        return set()
    return {match.group(1) for path in multiproc_dir.iterdir() if (match := re.search(r"_(\d+)\.db$", path.name))}


def get(address: tuple[str, int], path: str, timeout_seconds: float) -> tuple[int, str]:
    """One GET on its own connection."""
    connection = http.client.HTTPConnection(*address, timeout=timeout_seconds)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def samples_of(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value_of(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value, 0 when it is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class ScrubberDaemon:
    """`locquota scrub --daemon` beside a node, with its own metrics port."""

    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def scrape(self) -> Samples | None:
        """Its metrics now, or None while it does not answer yet."""
        try:
            status, body = get(("127.0.0.1", self.metrics_port), "/metrics", 5)
        except OSError:
            return None
        return samples_of(body) if status == 200 else None

    def wait_for_first_pass(self) -> None:
        """Return once the daemon finished a pass (its last-success gauge is set)."""
        deadline = time.monotonic() + BOOT_DEADLINE
        while not value_of(self.scrape() or {}, "locquota_scrubber_last_success_timestamp_seconds"):
            assert self.process.poll() is None, f"{self.name} exited: {self.log.read_text(errors='replace')}"
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} never finished a pass: {self.log.read_text(errors='replace')}")
            time.sleep(POLL_SECONDS)  # polling an observed condition (a poll interval, not a synchronisation)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it: the pass in flight finishes and the daemon exits; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_DEADLINE)
        return self.process.returncode


@contextmanager
def scrubber_daemon(name: str, settings: dict[str, str], workdir: Path) -> Iterator[ScrubberDaemon]:
    """`locquota --config <its .ini> scrub --daemon --metrics-port <free port>`; stopped at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    ini = write_ini(workdir / f"{name}.ini", settings)
    port = port_for.select_random()
    # --metrics-port refuses to start in multiprocess mode: the daemon counts in its own memory.
    environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    log = workdir / f"{name}.log"
    command = [LOCQUOTA, "--config", str(ini), "scrub", "--daemon", "--metrics-port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
    daemon = ScrubberDaemon(name, process, port, log)
    try:
        yield daemon
    finally:
        daemon.stop()
        sys.stderr.write(f"--- {name}:\n{log.read_text(errors='replace')[-5000:]}")
