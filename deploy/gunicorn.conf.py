"""gunicorn settings for production: gthread workers, and prometheus_client's multiprocess mode for /metrics.

    gunicorn --paste production.ini --config deploy/gunicorn.conf.py

gthread, not the default sync worker: a request runs in a worker thread while the worker's main loop keeps
answering the master's heartbeat, so `timeout` only replaces a hung worker and never bounds a request: an
upload takes as long as its bytes keep flowing (a sync worker is killed mid-upload at `timeout`). A client
that falls silent is bounded by the app instead (`locquota.client_idle_timeout_seconds`, locquota/serving.py),
and a connection that has not sent its request yet waits in the worker's poller, not in a thread: stalled
uploads cannot starve health checks (a client that stops halfway through its headers still holds a thread:
put a proxy in front). What does end an upload in flight is a stop or a restart of the workers (SIGTERM,
SIGHUP, a new deployment): each worker gets `graceful_timeout` (30 s) to finish its requests and is then
killed; the leases of the uploads it cut run out and the reaper ends them (docs/operations.md). See
docs/serving.md.

Every worker counts into files in PROMETHEUS_MULTIPROC_DIR, and whichever worker serves a scrape sums
them, so /metrics is right however the load balancer spread the requests. The directory is emptied when
gunicorn starts (old files would be counted again). When the operator names no directory, this master
makes a temporary one and removes it when it exits. A dead worker's counters stay counted; only its live
gauges go. Gauges read from the database are computed per scrape by the serving worker, not once per worker.
preload_app stays off: a preloaded app would open its metric files before on_starting empties the directory.
"""

import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("LOCQUOTA_BIND", "0.0.0.0:9292")
workers = int(os.environ.get("LOCQUOTA_WORKERS", "4"))
worker_class = "gthread"
threads = int(os.environ.get("LOCQUOTA_THREADS", "8"))  # requests in flight per worker (uploads included)
timeout = int(os.environ.get("LOCQUOTA_WORKER_TIMEOUT", "30"))  # a hung worker's heartbeat, not a request's length
keepalive = 5

# The pid of the master that made PROMETHEUS_MULTIPROC_DIR. gunicorn reads this file again on SIGHUP (the same
# master: the directory is still its own), and a SIGUSR2 re-exec starts a new master with the old one's variables
# (another pid: it makes a directory of its own, and the old master removes its own when it exits).
OWNER_VARIABLE = "PROMETHEUS_MULTIPROC_DIR_OWNER_PID"


def _metrics_directory() -> tuple[Path, bool]:
    """The directory every worker counts into, and whether this master made it (and so removes it)."""
    named, owner = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), os.environ.get(OWNER_VARIABLE)
    if named and owner is None:
        return Path(named), False  # the operator's
    if named and owner == str(os.getpid()):
        return Path(named), True
    # Set here, in the master, before any worker imports prometheus_client: workers inherit it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="locquota-metrics-")
    os.environ[OWNER_VARIABLE] = str(os.getpid())
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), True


metrics_dir, is_own_directory = _metrics_directory()


def on_starting(_server: object) -> None:
    """Start from an empty directory: a previous run's files would be summed in again."""
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)


def child_exit(_server: object, worker: object) -> None:
    """Drop a dead worker's live gauges (multiprocess_mode "live*"); its counters stay counted."""
    # Imported here, never above: prometheus_client picks its mode when first imported, and the workers inherit
    # the master's modules. Imported before PROMETHEUS_MULTIPROC_DIR is set, every worker would count in memory.
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(_server: object) -> None:
    """Remove the directory this master made; an operator's own directory stays, with its files."""
    if is_own_directory:
        shutil.rmtree(metrics_dir, ignore_errors=True)
