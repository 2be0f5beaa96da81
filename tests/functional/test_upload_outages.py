"""Outages in the middle of an upload (issue 13): PostgreSQL stopped and restarted, Redis stopped.

PostgreSQL here is this module's own server (tests.servers.PostgresqlServer), stopped at once as a
crash would stop it, at two moments: while the bytes stream in (the lease's renewal meets the outage)
and after the data is in place but before the upload's last unit commits. The client gets a JSON 503;
once the database is back and the lease has run out, the reaper and the scrubber leave no image in
saving, exact counters and no file without a location. Redis going away changes nothing but speed.
"""

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import Image, ImageStatus, Location, LocationStatus, Upload
from locations.scrubber import Scrubber
from locations.services.recount import reconcile_batches
from locations.services.upload_reaper import UploadReaper
from locquota.cli import cli
from locquota.leases import LeaseTerms
from tests import stoppable_postgresql
from tests.conftest import identity
from tests.fakes import POLICY, FakeFailingStore, build_app_with_store, registry_of, unit_of_work_on
from tests.servers import RedisServer
from tests.uploading import ObservingBody, send_upload

TENANT = identity("tenant-a")
# This module stops and starts its own PostgreSQL: the app runs on it (database_url overrides conftest's).
own_postgresql, database_url = stoppable_postgresql.own_postgresql, stoppable_postgresql.database_url
LEASE_SECONDS = 300
CHUNK = 4096


@pytest.fixture
def store(store_root: Path) -> FakeFailingStore:
    return FakeFailingStore.at(store_root)


@pytest.fixture
def outage_app(settings, store, clock):
    wsgi = build_app_with_store(settings, store, clock)
    yield wsgi
    wsgi.registry["locquota.engine"].dispose()


def create_image(wsgi) -> str:
    body = {"name": "outage", "disk_format": "raw", "container_format": "bare"}
    return TestApp(wsgi).post_json("/v2/images", body, headers=TENANT, status=201).json["id"]


def clean_up_after_the_lease(wsgi, store, clock) -> None:
    """What the scrubber daemon does once the lease has run out: reap, then scrub."""
    clock.advance(seconds=LEASE_SECONDS + 1)
    unit = unit_of_work_on(wsgi.registry["locquota.session_factory"])
    terms = LeaseTerms(timedelta(seconds=LEASE_SECONDS))
    assert UploadReaper(unit, registry_of(store), clock, terms, batch_size=10).run_once().uploads == 1
    Scrubber(unit, registry_of(store), clock, POLICY, batch_size=10, pool_size=1).run_once()


def assert_nothing_stranded(wsgi, store_root: Path, image_id: str, clock, ini: Path) -> None:
    """No image in saving, no lease, no live location, exact counters (reconcile: no drift), no file, a clean audit."""
    engine = wsgi.registry["locquota.engine"]
    with Session(engine) as session:
        assert session.get(Image, uuid.UUID(image_id)).status is ImageStatus.QUEUED
        assert session.scalars(select(Upload)).all() == []
        statuses = set(session.scalars(select(Location.status).where(Location.image_id == uuid.UUID(image_id))))
        assert statuses <= {LocationStatus.DELETED}
    batches = list(reconcile_batches(unit_of_work_on(engine), clock, 100, fix=False))
    assert [drift for batch in batches for drift in batch.drift] == []
    usage = TestApp(wsgi).get("/v2/info/usage", headers=TENANT, status=200).json["usage"]
    assert (usage["image_count_uploading"]["usage"], usage["image_size_total"]["usage"]) == (0, 0)
    assert sorted(store_root.iterdir()) == []
    audited = CliRunner().invoke(cli, ["--config", str(ini), "audit", "--grace-seconds", "0"])
    assert audited.exit_code == 0, audited.output


def test_postgresql_stopped_while_the_bytes_stream_in(outage_app, own_postgresql, store, store_root, clock, ini):
    image_id = create_image(outage_app)
    stopped = []

    def crash_the_database(served: int) -> None:
        if served >= 2 * CHUNK and not stopped:
            stopped.append(True)
            own_postgresql.stop()
            clock.advance(seconds=LEASE_SECONDS / 2)  # the renewal is due: it meets the outage

    body = ObservingBody(b"p" * (8 * CHUNK), None, on_read=crash_the_database)
    response = send_upload(outage_app, image_id, TENANT, body, 8 * CHUNK)

    assert response.status_int == 503
    assert response.json["error"]["code"] == "service_unavailable"
    assert response.headers["Retry-After"]
    own_postgresql.start()
    clean_up_after_the_lease(outage_app, store, clock)
    assert_nothing_stranded(outage_app, store_root, image_id, clock, ini)
    headers = {**TENANT, "Content-Type": "application/octet-stream"}
    TestApp(outage_app).put(f"/v2/images/{image_id}/file", b"back", headers=headers, status=204)


def test_postgresql_stopped_after_the_data_landed_but_before_its_commit(
    outage_app, own_postgresql, store, store_root, clock, ini
):
    image_id = create_image(outage_app)
    store.after_add = own_postgresql.stop

    response = send_upload(outage_app, image_id, TENANT, ObservingBody(b"q" * (3 * CHUNK), None), 3 * CHUNK)

    assert response.status_int == 503
    assert response.json["error"]["code"] == "service_unavailable"
    assert sorted(path.name for path in store_root.iterdir()) == [image_id]  # the finished data, unrecorded
    store.after_add = None
    own_postgresql.start()
    clean_up_after_the_lease(outage_app, store, clock)
    assert_nothing_stranded(outage_app, store_root, image_id, clock, ini)


def test_redis_stopped_mid_upload_changes_nothing_but_speed(settings, store, store_root, clock, tmp_path):
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    wsgi = build_app_with_store({**settings, "locquota.redis_url": redis_server.url}, store, clock)
    try:
        image_id = create_image(wsgi)
        stopped = []

        def crash_the_cache(served: int) -> None:
            if served >= CHUNK and not stopped:
                stopped.append(True)
                redis_server.stop()

        body = ObservingBody(b"r" * (4 * CHUNK), None, on_read=crash_the_cache)
        assert send_upload(wsgi, image_id, TENANT, body, 4 * CHUNK).status_int == 204
        usage = TestApp(wsgi).get("/v1/usage", headers=TENANT, status=200).json
    finally:
        wsgi.registry["locquota.engine"].dispose()
        if redis_server.process is not None:
            redis_server.stop()

    assert stopped
    assert usage["resources"]["image_size_total"]["usage"] == 4 * CHUNK
    with Session(wsgi.registry["locquota.engine"]) as session:
        assert session.get(Image, uuid.UUID(image_id)).status is ImageStatus.ACTIVE
        assert session.scalars(select(Upload)).all() == []
