"""The servers of the quota benchmark: its own Redis, the app with a server-time header, and gunicorn.

Redis is a `redis-server` started on a free port of 127.0.0.1 with persistence off, never the machine's
default one. Server time is measured inside the server by ServerTiming, a WSGI middleware around the whole
Pyramid app (tweens, view, renderer, commit): what the request costs once waitress or gunicorn has parsed it,
without the socket round trip. The concurrent part runs gunicorn in its own processes, so the API uses both
CPUs and the client threads of this process do not compete with it for the GIL.
"""

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import port_for
import redis
from pyramid.router import Router

from benchmarks.server import build_app, settings

SERVER_TIME_HEADER = "X-Bench-Server-Seconds"
REDIS_SERVER = "/usr/bin/redis-server"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
REPOSITORY = Path(__file__).resolve().parents[2]
SETTINGS_VARIABLE = "LOCQUOTA_BENCH_SETTINGS"
# Two processes use both CPUs; eight threads each hold 16 requests in flight (within SQLAlchemy's default
# pool of 5 + 10 connections per process), enough to queue on the tenant's row lock as 32 clients would.
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 8
START_DEADLINE_SECONDS = 30


class ServerTiming:
    """WSGI middleware: the app's own time for a request, returned in a response header.

    The response is produced completely (body included) before the header is sent, so the figure covers
    the tweens, the view, rendering and pyramid_tm's commit, and nothing of the server's socket work.
    """

    def __init__(self, app: Router) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured[:] = [status, headers, exc_info]
            return lambda _data: None  # Pyramid never calls write(); a body goes through the iterable

        started = time.perf_counter()
        result = self.app(environ, capture)
        try:
            body = list(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        elapsed = time.perf_counter() - started
        status, headers, exc_info = captured
        start_response(status, [*headers, (SERVER_TIME_HEADER, f"{elapsed:.6f}")], exc_info)
        return body


def quota_settings(database_url: str, store_root: Path, redis_url: str) -> dict[str, str]:
    """The API part's deployment, with Redis on, locations shown (PATCH /locations) and a long cache TTL.

    The TTL only bounds staleness after a lost invalidation; an hour keeps warm entries from expiring
    between the timed requests, so a warm read always finds the document that the last commit left.
    """
    return {
        **settings(database_url, store_root),
        "locquota.redis_url": redis_url,
        "locquota.show_multiple_locations": "true",
        "locquota.usage_cache_ttl_seconds": "3600",
    }


def gunicorn_app() -> ServerTiming:
    """The app gunicorn's workers load (`benchmarks.quota.server:gunicorn_app()`), settings from the environment."""
    return ServerTiming(build_app(json.loads(os.environ[SETTINGS_VARIABLE])))


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port of 127.0.0.1, no persistence; yield its URL."""
    port = port_for.select_random()
    workdir = Path(tempfile.mkdtemp(prefix="locquota-redis-"))
    command = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=workdir
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until(lambda: _redis_answers(url), process, "redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@contextmanager
def gunicorn_server(raw_settings: dict[str, str], log_path: Path) -> Iterator[tuple[int, int]]:
    """The app under gunicorn (gthread workers) on a free port of 127.0.0.1; yield the port and master's pid."""
    port = port_for.select_random()
    command = [
        GUNICORN,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(GUNICORN_WORKERS),
        "--worker-class",
        "gthread",
        "--threads",
        str(GUNICORN_THREADS),
        "--keep-alive",
        "60",
        "--chdir",
        str(REPOSITORY),
        "benchmarks.quota.server:gunicorn_app()",
    ]
    environment = {**os.environ, SETTINGS_VARIABLE: json.dumps(raw_settings)}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until(lambda: _answers(port), process, f"gunicorn (log: {log_path})")
            yield port, process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {START_DEADLINE_SECONDS} s")
        time.sleep(0.05)
