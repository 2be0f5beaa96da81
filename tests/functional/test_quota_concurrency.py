"""Race-free admission (SPEC §5) across OS processes on real PostgreSQL and MariaDB: one tenant, one limit.

Each request runs in its own OS process, which builds its own app with `locquota.app.configure(settings)`
and sends one request through WebTest. Why not a real HTTP server: what admission must survive is
several independent database connections racing on one usage row, which separate processes give
exactly (own interpreter, own engine and pool, no shared Python state); an HTTP server would add
sockets and worker scheduling without touching the quota path, and would hide each request's outcome
in a log instead of handing it back to the test. The processes come from multiprocessing's
`forkserver`: like `spawn`, never a fork of this pytest process (no inherited connections, threads
or fixtures), but forked from a server that has imported the app once, so ten children start in
about a second instead of ten.

The children are held at a barrier that is not a timer: the parent holds the tenant's usage row
`FOR UPDATE` and releases it only once every child's admission UPDATE waits on that row
(seen in pg_stat_activity, or MariaDB's processlist). Then they all compete at once, and
the database re-checks each one's `total + delta <= limit` against the committed total. Waits are bounded
only as failure deadlines.
"""

import json
import multiprocessing
import queue
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.services.recount import recount
from locquota.app import configure
from locquota.db import make_engine
from quota.models import MIB, TENANT_RESOURCES, Resource, SpaceState, StoreUsage, TenantUsage
from quota.services.usage import Space
from tests.conftest import identity

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
OWNER = "racing-tenant"
PROCESSES = 10
FITTING = 3  # how many of the PROCESSES admissions the limit leaves room for
# Bounds for waits on real processes; reaching one is a failure, never a synchronisation.
QUEUE_DEADLINE = 60
RESULT_DEADLINE = 60


def send_in_own_process(index: int, settings: dict[str, str], request: dict[str, object], results) -> None:
    """Child body: build the app, send one request, report (index, status, JSON body) on the queue."""
    try:
        wsgi = configure(settings).make_wsgi_app()
        try:
            response = TestApp(wsgi).request(
                str(request["path"]),
                method=str(request["method"]),
                body=str(request["body"]).encode(),
                headers=request["headers"],
                content_type=str(request["content_type"]),
                expect_errors=True,
            )
            results.put((index, response.status_int, response.json))
        finally:
            wsgi.registry["locquota.engine"].dispose()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        results.put((index, -1, traceback.format_exc()))


# The statements an admission waits in: the conditional UPDATE, the ledger's lock that adding a location takes
# first (usage before data keys, the one lock order), and a first charge's INSERT of the zero row.
WAITING_IN = ("UPDATE tenant_usage%", "SELECT tenant_usage.tenant_id%FOR UPDATE%", "INSERT INTO tenant_usage%")


def waiting_admissions(observer: Connection) -> int:
    """How many sessions wait for a lock in one of the admission's statements on tenant_usage.

    MariaDB lists a session blocked in a locking read of one row in its processlist only (the row is read,
    and waited for, while the statement is planned, state `Statistics`): a session inside one of these
    statements while the gate holds the row is waiting for it.
    """
    if observer.dialect.name == "postgresql":
        sessions = "pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        matching = " OR ".join("query ILIKE %s" for _ in WAITING_IN)
    else:
        sessions = "information_schema.processlist WHERE db = DATABASE() AND command = 'Query'"
        matching = " OR ".join("info LIKE %s" for _ in WAITING_IN)
    counted = f"SELECT count(*) FROM {sessions} AND ({matching})"  # noqa: S608  (constant parts)
    return observer.exec_driver_sql(counted, WAITING_IN).scalar_one()


@contextmanager
def usage_gate(engine: Engine, *, new_tenants: bool) -> Iterator[Connection]:
    """Hold every admission of the racing tenant (or, for new tenants, every first row) until the block ends.

    PostgreSQL's EXCLUSIVE table lock lets reads through and holds every UPDATE and INSERT. On MariaDB a
    locking read of the whole table at REPEATABLE READ does the same: its next-key locks cover every row and
    every gap, so no row is updated or inserted (plain reads go on, from their snapshots).
    """
    gap_locks = new_tenants and engine.dialect.name != "postgresql"
    isolation = {"isolation_level": "REPEATABLE READ"} if gap_locks else {}
    with engine.connect().execution_options(**isolation) as gate:
        if not new_tenants:
            locked = gate.exec_driver_sql(
                "SELECT 1 FROM tenant_usage WHERE tenant_id = %(owner)s FOR UPDATE", {"owner": OWNER}
            ).all()
            assert locked == [(1,)], "the tenant's usage row must exist before the race"
        elif gap_locks:
            gate.exec_driver_sql("SELECT tenant_id FROM tenant_usage FOR UPDATE").all()
        else:
            gate.exec_driver_sql("LOCK TABLE tenant_usage IN EXCLUSIVE MODE")
        try:
            yield gate
        finally:
            gate.rollback()  # the barrier opens: every admission competes for the row at once


def race(
    database_url: str, settings: dict[str, str], requests: list[dict[str, object]], *, new_tenants: bool = False
) -> list[tuple[int, object]]:
    """Send each request from its own process, all released together at the usage row; (status, body) each.

    new_tenants: the tenants have no usage row yet, so the gate is the whole table (EXCLUSIVE mode lets reads
    through and holds every UPDATE and INSERT): the children then race to create the first row.
    """
    context = multiprocessing.get_context("forkserver")
    # The fork server imports the app once; each child is a fresh fork of it, never of this pytest process.
    context.set_forkserver_preload([__name__])
    results = context.Queue()
    processes = [
        context.Process(target=send_in_own_process, args=(index, settings, request, results), daemon=True)
        for index, request in enumerate(requests)
    ]
    outcomes: dict[int, tuple[int, object]] = {}
    try:
        engine = make_engine(database_url)
        autocommit = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        with usage_gate(engine, new_tenants=new_tenants), autocommit as observer:
            for process in processes:
                process.start()
            deadline, waiting = time.monotonic() + QUEUE_DEADLINE, 0
            while (waiting := waiting_admissions(observer)) < len(requests):
                if time.monotonic() > deadline or not all(process.is_alive() for process in processes):
                    early = [results.get(timeout=1) for _ in range(results.qsize())] if not results.empty() else []
                    pytest.fail(f"only {waiting} of {len(requests)} requests reached admission; reported: {early}")
                time.sleep(0.02)  # polling an observed condition (a poll interval, not a synchronisation)
        engine.dispose()
        for _ in requests:
            index, status, body = results.get(timeout=RESULT_DEADLINE)
            assert status != -1, body
            outcomes[index] = (status, body)
    except queue.Empty:
        pytest.fail(f"only {len(outcomes)} of {len(requests)} requests answered within {RESULT_DEADLINE} s")
    finally:
        for process in processes:
            if process.is_alive():
                process.join(timeout=RESULT_DEADLINE)
            if process.is_alive():
                process.kill()
                process.join()
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]
    return [outcomes[index] for index in range(len(requests))]


@pytest.fixture
def racing(settings, make_app):
    """The deployment the children build too: locations shown and addable, no per-image location cap in the way."""
    shown = {**settings, "locquota.show_multiple_locations": "true", "locquota.quota.locations_per_image": "-1"}
    return shown, make_app(shown)


def set_limit(app: TestApp, resource: Resource, value: int) -> None:
    app.put_json(
        f"/v1/tenants/{OWNER}/limits",
        {"limits": {resource.value: value}},
        headers=identity("operators", "admin"),
        status=200,
    )


def upload_image(app: TestApp, data: bytes) -> str:
    headers = identity(OWNER)
    body = {"name": "racer", "disk_format": "raw", "container_format": "bare"}
    image_id = app.post_json("/v2/images", body, headers=headers, status=201).json["id"]
    app.put(
        f"/v2/images/{image_id}/file", data, headers={**headers, "Content-Type": "application/octet-stream"}, status=204
    )
    return image_id


def stored_totals(db: Session, tenant: str = OWNER) -> dict[Resource, int]:
    row = db.get(TenantUsage, tenant)
    return {resource: getattr(row, resource.value) for resource in TENANT_RESOURCES}


def stored_space(db: Session) -> dict[tuple[str, SpaceState], Space]:
    return {
        (row.store, SpaceState(row.state)): Space(row.size_bytes, row.locations)
        for row in db.scalars(select(StoreUsage).where(StoreUsage.tenant_id == OWNER))
        if row.size_bytes or row.locations
    }


def assert_stored_usage_is_the_recount(db: Session) -> None:
    db.expire_all()
    (actual,) = recount(db, [OWNER])
    assert stored_totals(db) == actual.totals
    assert stored_space(db) == actual.space


def test_concurrent_location_additions_admit_exactly_what_fits_under_image_size_total(
    database_url, racing, store_root, db
):
    settings, app = racing
    # 80,000-byte images: ten uploaded, then room under 1 MiB (1,048,576 bytes) for exactly three copies.
    size_bytes, limit_mib = 80_000, 1
    data = bytes(range(256)) * (size_bytes // 256) + bytes(size_bytes % 256)
    image_ids = [upload_image(app, data) for _ in range(PROCESSES)]
    base_bytes = PROCESSES * size_bytes
    assert (limit_mib * MIB - base_bytes) // size_bytes == FITTING
    set_limit(app, Resource.IMAGE_SIZE_TOTAL, limit_mib)
    copies = []
    for n in range(PROCESSES):
        path = store_root / f"copy-{n}"
        path.write_bytes(data)
        copies.append(f"file://{path}")
    requests = [
        {
            "method": "PATCH",
            "path": f"/v2/images/{image_id}",
            "body": json.dumps([{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}]),
            "headers": identity(OWNER),
            "content_type": PATCH_TYPE,
        }
        for image_id, url in zip(image_ids, copies, strict=True)
    ]

    outcomes = race(database_url, settings, requests)

    statuses = Counter(status for status, _ in outcomes)
    assert statuses == Counter({200: FITTING, 413: PROCESSES - FITTING}), outcomes
    refused = [body for status, body in outcomes if status == 413]
    assert {body["error"]["code"] for body in refused} == {"quota_exceeded"}
    assert {body["error"]["details"]["resource"] for body in refused} == {"image_size_total"}
    admitted = {copies[n] for n, (status, _) in enumerate(outcomes) if status == 200}
    for n, (status, body) in enumerate(outcomes):
        if status == 200:
            assert [location["url"] for location in body["locations"]][-1] == copies[n]
    # What the database holds: the admitted copies and nothing of the refused ones.
    live = set(db.scalars(select(Location.url).where(Location.status == LocationStatus.ACTIVE)))
    assert live & set(copies) == admitted
    totals = stored_totals(db)
    assert totals[Resource.IMAGE_SIZE_TOTAL] == base_bytes + FITTING * size_bytes
    assert totals[Resource.IMAGE_SIZE_TOTAL] <= limit_mib * MIB
    assert stored_space(db) == {
        ("file", SpaceState.ACTIVE): Space(totals[Resource.IMAGE_SIZE_TOTAL], PROCESSES + FITTING)
    }
    assert_stored_usage_is_the_recount(db)
    usage = app.get("/v1/usage", headers=identity(OWNER), status=200).json
    assert usage["resources"]["image_size_total"]["usage"] == base_bytes + FITTING * size_bytes


def test_concurrent_image_creations_admit_exactly_what_fits_under_image_count_total(database_url, racing, db):
    settings, app = racing
    existing = 2
    for _ in range(existing):
        upload_image(app, b"seed")
    set_limit(app, Resource.IMAGE_COUNT_TOTAL, existing + FITTING)
    requests = [
        {
            "method": "POST",
            "path": "/v2/images",
            "body": json.dumps({"name": f"racer-{n}", "disk_format": "raw", "container_format": "bare"}),
            "headers": identity(OWNER),
            "content_type": "application/json",
        }
        for n in range(PROCESSES)
    ]

    outcomes = race(database_url, settings, requests)

    statuses = Counter(status for status, _ in outcomes)
    assert statuses == Counter({201: FITTING, 413: PROCESSES - FITTING}), outcomes
    refused = [body for status, body in outcomes if status == 413]
    assert {body["error"]["code"] for body in refused} == {"quota_exceeded"}
    assert {body["error"]["details"]["resource"] for body in refused} == {"image_count_total"}
    created = {body["id"] for status, body in outcomes if status == 201}
    queued = set(db.scalars(select(Image.id).where(Image.status == ImageStatus.QUEUED)))
    assert {str(image_id) for image_id in queued} == created
    counted = db.scalar(
        select(func.count()).select_from(Image).where(Image.owner == OWNER, Image.status != ImageStatus.DELETED)
    )
    assert counted == existing + FITTING
    assert stored_totals(db)[Resource.IMAGE_COUNT_TOTAL] == existing + FITTING
    assert_stored_usage_is_the_recount(db)
    usage = app.get("/v2/info/usage", headers=identity(OWNER), status=200).json["usage"]
    assert usage["image_count_total"] == {"limit": existing + FITTING, "usage": existing + FITTING}


def test_the_first_requests_of_brand_new_tenants_are_never_refused_under_unlimited_limits(database_url, racing, db):
    """Every child's first charge finds no usage row; they race to create it, and each charge still lands."""
    settings, _app = racing
    tenants = ("brand-new-a", "brand-new-b")
    requests = [
        {
            "method": "POST",
            "path": "/v2/images",
            "body": json.dumps({"name": f"first-{n}", "disk_format": "raw", "container_format": "bare"}),
            "headers": identity(tenants[n % len(tenants)]),
            "content_type": "application/json",
        }
        for n in range(PROCESSES)
    ]

    outcomes = race(database_url, settings, requests, new_tenants=True)

    assert Counter(status for status, _ in outcomes) == Counter({201: PROCESSES}), outcomes
    db.expire_all()
    for tenant in tenants:
        assert stored_totals(db, tenant)[Resource.IMAGE_COUNT_TOTAL] == PROCESSES // len(tenants)
        (actual,) = recount(db, [tenant])
        assert stored_totals(db, tenant) == actual.totals
