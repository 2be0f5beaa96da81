"""`scripts/serve` on the port asked for (`http_port=N`, or PORT), for real: pserve answering on that port.

The script runs from a copy of the checkout's layout in a temporary directory: scripts/serve itself, the
project's venv, and the real development.ini with its database, Redis and staging moved to the test's own
(Redis off: the machine's 6379 is never used) and its root logger at INFO, so waitress's "Serving on" line
shows where it listens. scripts/bootstrap is replaced by a no-op: the venv is there already.
"""

import http.client
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import port_for
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
START_DEADLINE_SECONDS = 60  # a bound that fails the test, never a wait
SERVING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory laid out as the checkout, whose development.ini listens on a port no test asks for."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "serve").write_bytes((REPOSITORY / "scripts" / "serve").read_bytes())
    (root / "scripts" / "bootstrap").write_text("#!/bin/sh\n")
    for script in ("serve", "bootstrap"):
        (root / "scripts" / script).chmod(0o755)
    (root / ".venv").symlink_to(REPOSITORY / ".venv")
    ini = (REPOSITORY / "development.ini").read_text()
    ini = re.sub(r"(?m)^locquota\.redis_url = .*$", "locquota.redis_url =", ini)
    ini = re.sub(r"(?m)^listen = .*$", f"listen = 127.0.0.1:{port_for.select_random()}", ini)
    ini = re.sub(r"(?ms)^(\[logger_root\]\s*level = )\w+", r"\1INFO", ini)
    (root / "development.ini").write_text(ini)
    return root


@pytest.fixture
def serve(checkout: Path) -> Iterator[object]:
    """Start scripts/serve with these arguments and environment; yields the port it says it serves on."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> int:
        process = subprocess.Popen(
            [str(checkout / "scripts" / "serve"), *args],
            cwd=checkout,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        deadline = threading.Timer(START_DEADLINE_SECONDS, process.kill)
        deadline.start()
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                if match := SERVING.search(line):
                    return int(match[1])
        finally:
            deadline.cancel()
        pytest.fail(f"scripts/serve ended without serving (exit {process.wait()})")

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        process.stdout.close()  # type: ignore[union-attr]


def answers(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/versions")
        return connection.getresponse().status
    finally:
        connection.close()


def test_http_port_argument_sets_the_port(serve):
    port = port_for.select_random()

    assert serve(f"http_port={port}") == port
    assert answers(port) == 200


def test_port_variable_sets_the_port(serve):
    port = port_for.select_random()

    assert serve(env={"PORT": str(port)}) == port
    assert answers(port) == 200


def test_without_a_port_development_ini_decides(serve, checkout):
    [listen] = re.findall(r"(?m)^listen = 127\.0\.0\.1:(\d+)$", (checkout / "development.ini").read_text())

    assert serve() == int(listen)


@pytest.mark.parametrize(
    "port", ["0", "65536", "92x", "", "-1"], ids=["zero", "too-big", "not-a-number", "empty", "negative"]
)
def test_a_bad_port_is_refused_in_one_line(checkout, port):
    finished = subprocess.run(
        [str(checkout / "scripts" / "serve"), f"http_port={port}"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 2
    assert finished.stdout == ""
    assert finished.stderr == f"scripts/serve: port '{port}' is not a number from 1 to 65535\n"
