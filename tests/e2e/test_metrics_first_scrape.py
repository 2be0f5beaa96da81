"""The first scrape of a fresh process, before anything happened, in the serving modes outside multiprocess mode.

Each process here is new, so no earlier test has created a series in it: one API process counting in memory
(gunicorn without the shipped configuration, as `pserve` serves), and a scrubber daemon's own --metrics-port.
Two gunicorn workers in multiprocess mode are in test_metrics_gunicorn.py.
"""

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import port_for

from tests.e2e.conftest import gunicorn
from tests.e2e.test_metrics_gunicorn import get
from tests.metrics_contract import API_FAMILIES, COUNTED_FAMILIES, missing_families

LOCQUOTA = str(Path(sys.executable).with_name("locquota"))
TIMEOUT = 30


def in_memory_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}


def test_one_process_holds_every_family_of_the_contract_in_its_first_scrape(deployment_ini, tmp_path):
    environment = in_memory_environment()
    with gunicorn(deployment_ini, tmp_path, "--workers", "1", env=environment) as address:
        status, body = get(address, "/metrics")

    assert status == 200
    assert missing_families(body, API_FAMILIES) == []


def test_a_scrubber_daemon_holds_its_families_before_any_deletion(deployment_ini):
    port = port_for.select_random()
    daemon = subprocess.Popen(
        [LOCQUOTA, "--config", str(deployment_ini), "scrub", "--daemon", "--metrics-port", str(port)],
        env=in_memory_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Printed once the app is built (its series created) and the metrics port is listening.
        started = daemon.stdout.readline()
        assert "waking every" in started, daemon.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
            body = response.read().decode()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(TIMEOUT)
        daemon.stdout.close()
        daemon.stderr.close()

    assert missing_families(body, COUNTED_FAMILIES) == []
