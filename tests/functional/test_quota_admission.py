"""Admission: requests that would pass a limit are refused with 413 and change nothing (SPEC section 5).

Every refusal is checked three ways: the status and error code, the stored usage unchanged, and the
image and store as they were (a refused upload leaves the image queued, with no size and no data).
"""

import io
import shutil
import threading
import uuid

import pytest
from pyramid.scripting import prepare
from sqlalchemy import event, select
from webob import Request

from locations.models import Image, ImageStatus, Location, LocationStatus
from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy, upload_lease_terms
from locations.services.upload_reaper import UploadReaper
from locations.stores.base import StoreRegistry
from locquota.settings import Settings
from tests.fakes import unit_of_work_on

MIB = 1024 * 1024
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


@pytest.fixture
def settings(settings):
    return {**settings, "locquota.show_multiple_locations": "true", "locquota.upload_chunk_bytes": "65536"}


def set_limits(app, admin, tenant_id="tenant-a", **limits):
    app.put_json(f"/v1/tenants/{tenant_id}/limits", {"limits": limits}, headers=admin)


def create(app, headers, status=201):
    body = {"name": "img", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=headers, status=status).json


def put_file(app, image_id, data, headers, status=204):
    headers = {**headers, "Content-Type": "application/octet-stream"}
    return app.put(f"/v2/images/{image_id}/file", data, headers=headers, status=status)


def add_location(app, image_id, url, headers, status=200):
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}]
    return app.patch_json(
        f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": PATCH_TYPE}, status=status
    )


def file_in_store(store_root, name, data):
    store_root.mkdir(parents=True, exist_ok=True)
    (store_root / name).write_bytes(data)
    return f"file://{store_root / name}"


def stored_files(store_root):
    return sorted(path.name for path in store_root.rglob("*") if path.is_file()) if store_root.exists() else []


def image_row(db, image_id):
    db.expire_all()
    return db.get(Image, uuid.UUID(image_id))


class StreamingBody(io.RawIOBase):
    """A request body of unknown length that can pause after its first chunk (a slow client)."""

    def __init__(self, data: bytes, pause: threading.Event | None = None) -> None:
        self._data, self._pause, self.started = io.BytesIO(data), pause, threading.Event()
        self.served = 0

    def readable(self) -> bool:
        return True

    def read(self, size=-1):
        chunk = self._data.read(size)
        self.served += len(chunk)
        if not self.started.is_set():
            self.started.set()
            if self._pause is not None and not self._pause.wait(30):
                raise ConnectionResetError("the test never released the body")
        return chunk


def send_chunked(wsgi_app, image_id, headers, body):
    environ = {
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "REQUEST_METHOD": "PUT",
        "CONTENT_TYPE": "application/octet-stream",
    }
    return Request.blank(f"/v2/images/{image_id}/file", environ=environ, headers=headers).get_response(wsgi_app)


# --- creating images: image_count_total ---------------------------------------------------------------


def test_creating_past_image_count_total_is_refused_and_creates_nothing(app, db, tenant, admin, usage_of):
    set_limits(app, admin, image_count_total=2)
    create(app, tenant)
    create(app, tenant)
    before = usage_of("tenant-a")
    res = create(app, tenant, status=413)
    assert res["error"]["code"] == "quota_exceeded"
    assert res["error"]["details"]["resource"] == "image_count_total"
    assert usage_of("tenant-a") == before
    assert len(db.scalars(select(Image)).all()) == 2


def test_deleted_images_stop_counting_towards_image_count_total(app, tenant, admin, usage_of):
    set_limits(app, admin, image_count_total=1)
    first = create(app, tenant)
    app.delete(f"/v2/images/{first['id']}", headers=tenant, status=204)
    create(app, tenant)
    assert usage_of("tenant-a")["totals"]["image_count_total"] == 1


def test_an_admin_creating_for_a_tenant_charges_that_tenant(app, admin, usage_of):
    set_limits(app, admin, image_count_total=0)
    body = {"name": "img", "owner": "tenant-a"}
    res = app.post_json("/v2/images", body, headers=admin, status=413).json
    assert res["error"]["code"] == "quota_exceeded"
    app.post_json("/v2/images", {"name": "img"}, headers=admin, status=201)
    assert usage_of("operators")["totals"]["image_count_total"] == 1
    assert usage_of("tenant-a")["totals"]["image_count_total"] == 0


# --- uploads: image_size_total and image_count_uploading -------------------------------------------------


def test_an_upload_up_to_the_limit_exactly_is_admitted(app, tenant, admin, usage_of):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    put_file(app, image["id"], b"x" * MIB, tenant)
    assert usage_of("tenant-a")["totals"]["image_size_total"] == MIB


def test_an_upload_one_byte_past_the_limit_is_refused_before_saving(app, db, tenant, admin, usage_of, store_root):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    before = usage_of("tenant-a")
    res = put_file(app, image["id"], b"x" * (MIB + 1), tenant, status=413).json
    assert res["error"]["code"] == "quota_exceeded"
    assert usage_of("tenant-a") == before
    row = image_row(db, image["id"])
    assert (row.status, row.size, row.locations) == (ImageStatus.QUEUED, None, [])
    assert stored_files(store_root) == []


def test_a_chunked_upload_is_cut_off_once_past_the_quota_and_its_data_deleted(
    wsgi_app, db, tenant, admin, app, usage_of, store_root
):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    before = usage_of("tenant-a")
    body = StreamingBody(b"y" * (4 * MIB))
    response = send_chunked(wsgi_app, image["id"], tenant, body)
    assert response.status_int == 413
    assert response.json["error"]["code"] == "quota_exceeded"
    assert body.served < 2 * MIB  # cut off within a chunk of the limit, not read to the end
    assert usage_of("tenant-a") == before
    row = image_row(db, image["id"])
    assert (row.status, row.size, row.locations) == (ImageStatus.QUEUED, None, [])
    assert stored_files(store_root) == []


def test_a_chunked_upload_within_the_quota_is_admitted(wsgi_app, tenant, admin, app, usage_of):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    response = send_chunked(wsgi_app, image["id"], tenant, StreamingBody(b"z" * 1000))
    assert response.status_int == 204
    assert usage_of("tenant-a")["totals"]["image_size_total"] == 1000


def test_space_used_while_an_upload_streams_refuses_it_at_the_end(
    wsgi_app, db, tenant, admin, app, usage_of, store_root
):
    """Both uploads fit what was left when they started; the one that finishes second is refused."""
    set_limits(app, admin, image_size_total=1)
    slow, fast = create(app, tenant), create(app, tenant)
    release = threading.Event()
    body = StreamingBody(b"s" * (600 * 1024), pause=release)
    result = {}
    worker = threading.Thread(target=lambda: result.update(res=send_chunked(wsgi_app, slow["id"], tenant, body)))
    worker.start()
    try:
        assert body.started.wait(30)
        put_file(app, fast["id"], b"f" * (600 * 1024), tenant)
    finally:
        release.set()
        worker.join(30)
    assert result["res"].status_int == 413
    assert result["res"].json["error"]["code"] == "quota_exceeded"
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_size_total"] == 600 * 1024
    assert usage["totals"]["image_count_uploading"] == 0
    row = image_row(db, slow["id"])
    assert (row.status, row.size) == (ImageStatus.QUEUED, None)
    # What it wrote went the pending_delete way and was deleted at once: only the row's history stays.
    assert [(location.status, location.size_bytes) for location in row.locations] == [
        (LocationStatus.DELETED, 600 * 1024)
    ]
    assert stored_files(store_root) == [fast["id"]]


def test_uploads_in_progress_count_towards_image_count_uploading(wsgi_app, db, tenant, admin, app, usage_of):
    set_limits(app, admin, image_count_uploading=1)
    first, second = create(app, tenant), create(app, tenant)
    release = threading.Event()
    body = StreamingBody(b"u" * 10_000, pause=release)
    result = {}
    worker = threading.Thread(target=lambda: result.update(res=send_chunked(wsgi_app, first["id"], tenant, body)))
    worker.start()
    try:
        assert body.started.wait(30)
        assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 1
        res = put_file(app, second["id"], b"v", tenant, status=413).json
        assert res["error"]["details"]["resource"] == "image_count_uploading"
        assert image_row(db, second["id"]).status is ImageStatus.QUEUED
    finally:
        release.set()
        worker.join(30)
    assert result["res"].status_int == 204
    assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 0


# --- adding locations: image_size_total again, and locations_per_image ----------------------------------


def test_a_second_location_charges_the_image_size_again(app, tenant, usage_of, store_root):
    image = create(app, tenant)
    put_file(app, image["id"], b"d" * 1000, tenant)
    add_location(app, image["id"], file_in_store(store_root, "copy", b"d" * 1000), tenant)
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_size_total"] == 2000
    assert usage["space"] == {("file", "active"): (2000, 2)}


def test_a_location_past_image_size_total_is_refused_and_changes_nothing(app, db, tenant, admin, usage_of, store_root):
    set_limits(app, admin, image_size_total=1)
    image = create(app, tenant)
    put_file(app, image["id"], b"d" * (MIB // 2 + 1), tenant)
    before = usage_of("tenant-a")
    res = add_location(app, image["id"], file_in_store(store_root, "copy", b"d"), tenant, status=413).json
    assert res["error"]["code"] == "quota_exceeded"
    assert res["error"]["details"]["resource"] == "image_size_total"
    assert usage_of("tenant-a") == before
    db.expire_all()
    assert len(db.scalars(select(Location)).all()) == 1


def test_locations_per_image_can_be_set_per_tenant(app, tenant, other_tenant, admin, store_root):
    set_limits(app, admin, locations_per_image=1)
    mine, theirs = create(app, tenant), create(app, other_tenant)
    add_location(app, mine["id"], file_in_store(store_root, "a1", b"a"), tenant)
    res = add_location(app, mine["id"], file_in_store(store_root, "a2", b"a"), tenant, status=413).json
    assert res["error"]["code"] == "location_limit_exceeded"
    add_location(app, theirs["id"], file_in_store(store_root, "b1", b"b"), other_tenant)
    add_location(app, theirs["id"], file_in_store(store_root, "b2", b"b"), other_tenant)


def test_an_admin_adding_a_location_charges_the_image_owner(app, tenant, admin, usage_of, store_root):
    set_limits(app, admin, image_size_total=0)
    image = create(app, tenant)
    res = add_location(app, image["id"], file_in_store(store_root, "x", b"x"), admin, status=413).json
    assert res["error"]["code"] == "quota_exceeded"
    assert usage_of("operators")["totals"]["image_size_total"] == 0


# --- freeing space: delete, scrub, restore ---------------------------------------------------------------


@pytest.fixture
def delayed(make_app, settings):
    return make_app({**settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "60"})


def test_delayed_delete_keeps_size_charged_until_scrubbed(delayed, tenant, usage_of, clock, settings):
    image = create(delayed, tenant)
    put_file(delayed, image["id"], b"p" * 500, tenant)
    delayed.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    usage = usage_of("tenant-a")
    assert usage["totals"] == {**usage["totals"], "image_size_total": 500, "image_count_total": 1}
    assert usage["space"] == {("file", "pending_delete"): (500, 1)}
    clock.advance(seconds=61)
    registry = delayed.app.registry
    scrubber = Scrubber(
        unit_of_work_on(registry["locquota.session_factory"]),
        prepare(registry=registry)["request"].find_service(StoreRegistry),
        clock,
        scrub_policy(Settings()),
        batch_size=10,
        pool_size=1,
    )
    assert scrubber.run_once().deleted == 1
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_size_total"] == 0
    assert usage["totals"]["image_count_total"] == 0
    assert usage["space"] == {}


def test_restore_keeps_the_charge_and_can_never_pass_a_limit(delayed, tenant, admin, usage_of):
    image = create(delayed, tenant)
    put_file(delayed, image["id"], b"r" * 700, tenant)
    delayed.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    set_limits(delayed, admin, image_size_total=0, image_count_total=0)  # the limit drops below what is held
    delayed.post(f"/v1/images/{image['id']}/restore", headers=admin, status=200)
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_size_total"] == 700
    assert usage["space"] == {("file", "active"): (700, 1)}


def test_immediate_delete_frees_the_space_at_once(app, tenant, usage_of):
    image = create(app, tenant)
    put_file(app, image["id"], b"i" * 300, tenant)
    app.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    assert usage_of("tenant-a")["totals"] == {
        "image_size_total": 0,
        "image_count_total": 0,
        "image_count_uploading": 0,
        "image_stage_total": 0,
    }


def test_removing_a_location_moves_its_bytes_to_pending_delete(delayed, tenant, admin, usage_of, store_root):
    image = create(delayed, tenant)
    put_file(delayed, image["id"], b"m" * 100, tenant)
    add_location(delayed, image["id"], file_in_store(store_root, "copy", b"m" * 100), tenant)
    operations = [{"op": "remove", "path": "/locations/1"}]
    delayed.patch_json(
        f"/v2/images/{image['id']}", operations, headers={**admin, "Content-Type": PATCH_TYPE}, status=200
    )
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_size_total"] == 200
    assert usage["space"] == {("file", "active"): (100, 1), ("file", "pending_delete"): (100, 1)}


def test_a_store_failure_that_kills_an_upload_frees_its_counts(wsgi_app, db, tenant, app, usage_of, store_root):
    image = create(app, tenant)
    store_root.mkdir(parents=True, exist_ok=True)

    class VanishingStoreBody(StreamingBody):
        def read(self, size=-1):
            shutil.rmtree(store_root, ignore_errors=True)
            return super().read(size)

    response = send_chunked(wsgi_app, image["id"], tenant, VanishingStoreBody(b"k" * 100))
    assert response.status_int == 503
    assert image_row(db, image["id"]).status is ImageStatus.KILLED
    assert usage_of("tenant-a")["totals"]["image_count_total"] == 0
    assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 0


def test_other_tenants_are_not_charged(app, tenant, other_tenant, usage_of):
    image = create(app, tenant)
    put_file(app, image["id"], b"o" * 10, tenant)
    assert usage_of("tenant-b")["totals"]["image_size_total"] == 0
    assert usage_of("tenant-a")["totals"]["image_size_total"] == 10


def test_a_database_failure_while_finishing_an_upload_leaves_it_to_the_reaper(
    app, wsgi_app, engine, db, tenant, usage_of, store_root, clock
):
    """The last unit fails, and so does giving the image back (the same INSERT): the reaper ends it later."""
    image = create(app, tenant)

    def fail_location_insert(_conn, _cursor, statement, _parameters, _context, _executemany):
        if statement.lstrip().upper().startswith("INSERT INTO LOCATIONS"):
            raise RuntimeError("the database went away")

    event.listen(engine, "before_cursor_execute", fail_location_insert)
    try:
        response = send_chunked(wsgi_app, image["id"], tenant, StreamingBody(b"f" * 1000))
    finally:
        event.remove(engine, "before_cursor_execute", fail_location_insert)
    assert response.status_int == 500
    assert image_row(db, image["id"]).status is ImageStatus.SAVING  # held by its lease, not stranded
    assert stored_files(store_root) == [image["id"]]

    clock.advance(seconds=Settings().upload_lease_seconds + 1)
    stores = prepare(registry=wsgi_app.registry)["request"].find_service(StoreRegistry)
    UploadReaper(unit_of_work_on(engine), stores, clock, upload_lease_terms(Settings()), batch_size=10).run_once()
    Scrubber(unit_of_work_on(engine), stores, clock, scrub_policy(Settings()), batch_size=10, pool_size=1).run_once()

    row = image_row(db, image["id"])
    assert (row.status, row.size) == (ImageStatus.QUEUED, None)
    assert [location.status for location in row.locations] == [LocationStatus.DELETED]
    assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 0
    assert usage_of("tenant-a")["totals"]["image_size_total"] == 0
    assert stored_files(store_root) == []
    put_file(app, image["id"], b"again", tenant)  # and it can be uploaded again
