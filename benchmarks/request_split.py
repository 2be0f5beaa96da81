"""Where one request's server time goes (`--only split`): waiting for the database, and everything else.

Issue 18's read and write targets are missed by the app's own per-request work, not by the database; this
part says so with figures, for each request kind the targets name. Each request runs in this process
through the WSGI app (WebTest: no socket, no HTTP parsing), on the benchmark's durable PostgreSQL, with
Redis on and locations shown (the quota part's deployment):

- `server ms`: the median time of the whole request (tweens, view, rendering, pyramid_tm's commit);
- `database ms`: the median time spent inside the driver on this request's statements and COMMITs, from
  sending each to having its result (SQLAlchemy's cursor events, and the dialect's commit);
- `rest ms`: the median of the difference, per request: Python (Pyramid, SQLAlchemy building statements
  and loading rows, the services, JSON), the store's file work and the Redis round trips;
- `stmts`, `commits`: what one request of the kind sent (its first warm-up request), counted with
  tests/statement_counter.py, the hook the quota and API parts and the write-path tests count with.

The constant view is the floor of the rest: what a request costs with no identity, no database and no work.
"""

import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from webtest import TestApp

from benchmarks.deployment import fresh_database
from benchmarks.quota.server import quota_settings, redis_server
from benchmarks.server import CONSTANT_PATH, build_app
from locquota.db import make_engine, upgrade_to_head
from tests.statement_counter import counting

DATABASE = "locquota_split_bench"
TENANT = "split-tenant"
HEADERS = {"X-Identity-Status": "Confirmed", "X-Project-Id": TENANT, "X-Roles": "member", "X-User-Id": "bench"}
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
CREATE_BODY = {"name": "split", "disk_format": "raw", "container_format": "bare", "tags": ["a", "b"], "p1": "v"}
# Limits that never refuse, set as overrides so every admission runs its conditional UPDATE (as in --only quota).
LIMITS = {"image_size_total": 2**30, "image_count_total": 10**9}
LISTED_IMAGES = 40  # two pages of 20, each with a location, two tags and a property
FULL_REQUESTS, SMOKE_REQUESTS = 300, 20
WARMUP = 20


@dataclass
class DatabaseTime:
    """The driver time summed over one request (reset before each)."""

    seconds: float = 0.0
    _started: dict[int, float] = field(default_factory=dict)


@contextmanager
def timing_database(engine: Engine) -> Iterator[DatabaseTime]:
    """Sum the time spent in the driver on statements and commits sent through engine while the block runs.

    Statements are timed by SQLAlchemy's cursor events. A COMMIT has no "after" event, so the dialect's
    do_commit is wrapped on this engine's dialect (this process serves only the benchmark's app).
    """
    timed = DatabaseTime()

    def before(conn: Any, *_: object) -> None:
        timed._started[id(conn)] = time.perf_counter()

    def after(conn: Any, *_: object) -> None:
        timed.seconds += time.perf_counter() - timed._started.pop(id(conn))

    dialect = engine.dialect
    original_commit = dialect.do_commit

    def do_commit(dbapi_connection: object) -> None:
        started = time.perf_counter()
        try:
            original_commit(dbapi_connection)
        finally:
            timed.seconds += time.perf_counter() - started

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    dialect.do_commit = do_commit  # type: ignore[method-assign]
    try:
        yield timed
    finally:
        dialect.do_commit = original_commit  # type: ignore[method-assign]
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


@dataclass
class Split:
    """One request kind's medians and counts."""

    name: str
    server_ms: float
    database_ms: float
    rest_ms: float
    statements: int
    commits: int


class Requests:
    """The request kinds, each a callable that sends one request (its set-up done untimed beforehand)."""

    def __init__(self, app: TestApp, store_root: Path) -> None:
        self._app, self._root = app, store_root
        admin = {**HEADERS, "X-Project-Id": "split-admin", "X-Roles": "admin"}
        app.put_json(f"/v1/tenants/{TENANT}/limits", {"limits": LIMITS}, headers=admin, status=200)
        self._shown = [self._image_with_location() for _ in range(LISTED_IMAGES)]
        self._queued: list[str] = []
        self._files: list[str] = []

    def kinds(self) -> dict[str, Callable[[int], object]]:
        return {
            "constant": lambda _n: self._app.get(CONSTANT_PATH, status=200),
            "get": lambda n: self._app.get(f"/v2/images/{self._shown[n % LISTED_IMAGES]}", headers=HEADERS, status=200),
            "list": lambda _n: self._app.get("/v2/images?limit=20", headers=HEADERS, status=200),
            "create": lambda _n: self._app.post_json("/v2/images", CREATE_BODY, headers=HEADERS, status=201),
            "add location": lambda _n: self._add_location(self._queued.pop(), self._files.pop()),
            "upload": lambda _n: self._app.put(
                f"/v2/images/{self._queued.pop()}/file",
                b"x",
                headers={**HEADERS, "Content-Type": "application/octet-stream"},
                status=204,
            ),
        }

    def prepare(self, name: str, count: int) -> None:
        """Untimed: the queued images and files the next `count` requests of this kind consume."""
        if name in ("add location", "upload"):
            self._queued = [self._create() for _ in range(count)]
        if name == "add location":
            self._files = [self._new_file() for _ in range(count)]

    def _create(self) -> str:
        return str(self._app.post_json("/v2/images", CREATE_BODY, headers=HEADERS, status=201).json["id"])

    def _new_file(self) -> str:
        path = self._root / uuid.uuid4().hex
        path.write_bytes(b"x")
        return f"file://{path}"

    def _add_location(self, image_id: str, url: str) -> object:
        body = json.dumps([{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}])
        headers = {**HEADERS, "Content-Type": PATCH_TYPE}
        return self._app.patch(f"/v2/images/{image_id}", body, headers=headers, status=200)

    def _image_with_location(self) -> str:
        image_id = self._create()
        self._add_location(image_id, self._new_file())
        return image_id


def measure_kind(requests: Requests, engine: Engine, timed: DatabaseTime, name: str, count: int) -> Split:
    """Time `count` requests of one kind after a warm-up; medians of the server time, the database and the rest."""
    send = requests.kinds()[name]
    requests.prepare(name, WARMUP + 1)
    with counting(engine) as counts:  # one warm-up request, counted
        send(0)
    for number in range(1, WARMUP + 1):
        send(number)
    requests.prepare(name, count)
    server, database, rest = [], [], []
    for number in range(count):
        timed.seconds = 0.0
        started = time.perf_counter()
        send(number)
        elapsed = time.perf_counter() - started
        server.append(elapsed)
        database.append(timed.seconds)
        rest.append(elapsed - timed.seconds)
    return Split(
        name,
        statistics.median(server) * 1000,
        statistics.median(database) * 1000,
        statistics.median(rest) * 1000,
        len(counts.statements),
        counts.commits,
    )


def benchmark(admin_url: str, *, smoke: bool) -> None:
    """Measure and print the split of every request kind."""
    count = SMOKE_REQUESTS if smoke else FULL_REQUESTS
    url = fresh_database(admin_url, DATABASE)
    upgrade_to_head(make_engine(url))
    with tempfile.TemporaryDirectory(prefix="locquota-split-bench-") as workdir, redis_server() as redis_url:
        store_root = Path(workdir).resolve()
        app = TestApp(build_app(quota_settings(url, store_root, redis_url)))
        requests = Requests(app, store_root)
        engine = app.app.registry["locquota.engine"]
        with timing_database(engine) as timed:
            splits = [measure_kind(requests, engine, timed, name, count) for name in requests.kinds()]
    print(f"where a request's server time goes: {count} requests per kind, in process (WebTest), durable PostgreSQL")
    print(f"{'request':<13} {'server ms':>9} {'database ms':>11} {'rest ms':>8} {'stmts':>5} {'commits':>7}")
    for split in splits:
        print(
            f"{split.name:<13} {split.server_ms:9.2f} {split.database_ms:11.2f} {split.rest_ms:8.2f}"
            f" {split.statements:5} {split.commits:7}"
        )
    constant = splits[0].rest_ms
    worst = max(splits[1:], key=lambda split: split.rest_ms / split.server_ms)
    print(
        f"the rest is what the app adds beyond the database; the constant view's {constant:.2f} ms is its floor;"
        f" the largest share: {worst.name}, {worst.rest_ms / worst.server_ms:.0%} of its server time"
    )
