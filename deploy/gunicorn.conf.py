"""gunicorn settings for production: gthread workers, and prometheus_client's multiprocess mode for /metrics.

    gunicorn --paste production.ini --config deploy/gunicorn.conf.py

gthread, not the default sync worker: a request runs in a worker thread while the worker's main loop keeps
answering the master's heartbeat, so `timeout` no longer kills an upload that takes longer than it (a sync
worker is killed mid-upload). A client that falls silent is bounded by the app instead
(`locquota.client_idle_timeout_seconds`, locquota/serving.py), and a connection that has not sent its request
yet waits in the worker's poller, not in a thread: slow or stalled clients cannot starve health checks.

Every worker counts into files in PROMETHEUS_MULTIPROC_DIR, and whichever worker serves a scrape sums
them, so /metrics is right however the load balancer spread the requests. The directory is emptied
when gunicorn starts (old files would be counted again) and a dead worker's files are merged away.
Gauges read from the database are computed per scrape by the serving worker, not once per worker.
"""

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import multiprocess

bind = os.environ.get("LOCQUOTA_BIND", "0.0.0.0:9292")
workers = int(os.environ.get("LOCQUOTA_WORKERS", "4"))
worker_class = "gthread"
threads = int(os.environ.get("LOCQUOTA_THREADS", "8"))  # requests in flight per worker (uploads included)
timeout = int(os.environ.get("LOCQUOTA_WORKER_TIMEOUT", "30"))  # a hung worker's heartbeat, not a request's length
keepalive = 5
# Set here, in the master, before any worker imports prometheus_client: workers inherit it.
metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="locquota-metrics-")))


def on_starting(_server: object) -> None:
    """Start from an empty directory: a previous run's files would be summed in again."""
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)


def child_exit(_server: object, worker: object) -> None:
    """Fold a dead worker's live gauges away; its counters stay counted."""
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
