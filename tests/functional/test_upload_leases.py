"""Upload leases and the reaper (issue 13): an upload that will not finish never strands its image or its data.

Each upload is held by a lease recorded with queued -> saving, before the first byte, together with the
names the store writes at. The tests act between the client's chunks (tests.uploading.ObservingBody):
they move the frozen clock, run the real reaper and scrubber, lower a limit or delete the image. A
worker killed mid-upload is what tests/e2e/test_upload_crashes.py does for real; here, a dead upload
is one whose request raised past every handler, and the files a killed process leaves are written back.
Runs on PostgreSQL and SQLite.
"""

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import Image, ImageStatus, Location, LocationStatus, Upload
from locations.scrubber import Scrubber
from locations.services.lifecycle import LocationLifecycle
from locations.services.upload_reaper import UploadReaper
from locations.stores.base import StoreError, StoreRegistry
from locations.stores.file import FileStore
from locquota.leases import LeaseTerms
from locquota.settings import Settings, SettingsError
from tests.fakes import POLICY, FakeFailingStore, build_app_with_store, registry_of, unit_of_work_on
from tests.uploading import ObservingBody, send_upload

LEASE = timedelta(seconds=300)  # the default locquota.upload_lease_seconds
CHUNK = 4096  # the suite's locquota.upload_chunk_bytes


class WorkerKilled(BaseException):
    """Raised from the body: like SIGKILL, no handler of the app runs (only finally clauses do)."""


@pytest.fixture
def stores(store_root: Path) -> StoreRegistry:
    return StoreRegistry({"file": FileStore("file", {"datadir": str(store_root)})}, "file")


@pytest.fixture
def reaper(engine, stores, clock) -> UploadReaper:
    return UploadReaper(unit_of_work_on(engine), stores, clock, LeaseTerms(LEASE), batch_size=10)


@pytest.fixture
def scrubber(engine, stores, clock) -> Scrubber:
    return Scrubber(unit_of_work_on(engine), stores, clock, POLICY, batch_size=10, pool_size=1)


def upload_row(engine, image_id: str) -> Upload | None:
    with Session(engine) as session:
        return session.get(Upload, uuid.UUID(image_id))


def image_of(engine, image_id: str) -> Image:
    with Session(engine) as session:
        return session.get(Image, uuid.UUID(image_id))


def locations_of(engine, image_id: str) -> list[tuple[LocationStatus, int | None]]:
    with Session(engine) as session:
        rows = session.execute(
            select(Location.status, Location.size_bytes)
            .where(Location.image_id == uuid.UUID(image_id))
            .order_by(Location.id)
        )
        return [(row.status, row.size_bytes) for row in rows]


def files_in(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def totals(usage_of, tenant_id: str = "tenant-a") -> dict[str, int]:
    return usage_of(tenant_id)["totals"]


def idle_usage(count: int = 1) -> dict[str, int]:
    return {"image_size_total": 0, "image_count_total": count, "image_count_uploading": 0, "image_stage_total": 0}


# --- the lease while an upload runs ---------------------------------------------------------------------------


def test_the_lease_and_the_names_are_recorded_before_the_first_byte(
    wsgi_app, engine, tenant, new_image, clock, store_root
):
    image = new_image()
    seen = []
    body = ObservingBody(b"a" * 10_000, lambda: seen.append(upload_row(engine, image["id"])))

    assert send_upload(wsgi_app, image["id"], tenant, body, None).status_int == 204

    lease = seen[0]
    assert lease.holder.startswith("upload:")
    assert lease.expires_at == clock.now() + LEASE
    assert (lease.store, lease.url) == ("file", f"file://{store_root.resolve()}/{image['id']}")
    assert lease.scratch_url.startswith(f"file://{store_root.resolve()}/.{image['id']}.")
    assert lease.scratch_url.endswith(".partial")
    assert upload_row(engine, image["id"]) is None  # the lease ends with the upload
    assert files_in(store_root) == [image["id"]]


def test_the_lease_is_renewed_while_bytes_flow_however_long_the_upload(
    wsgi_app, engine, tenant, new_image, clock, usage_of
):
    image = new_image()
    expiries = []

    def slow_client(_served: int) -> None:  # each read takes a third of the lease
        clock.advance(seconds=LEASE.total_seconds() / 3)
        expiries.append((clock.now(), upload_row(engine, image["id"]).expires_at))

    body = ObservingBody(b"b" * (40 * CHUNK), None, on_read=slow_client)

    assert send_upload(wsgi_app, image["id"], tenant, body, 40 * CHUNK).status_int == 204
    assert expiries[-1][0] - expiries[0][0] > 3 * LEASE  # the upload outlived its first lease several times
    assert all(expires_at > now for now, expires_at in expiries)  # and never ran out
    assert image_of(engine, image["id"]).status is ImageStatus.ACTIVE
    assert totals(usage_of)["image_count_uploading"] == 0


def test_an_upload_whose_lease_was_taken_over_stops_and_keeps_nothing(
    wsgi_app, engine, tenant, new_image, clock, reaper, scrubber, store_root, usage_of, upload
):
    """A client silent past the lease (a stalled proxy, say): the reaper ends it; the request then stops."""
    image = new_image()
    reaped = []

    def stall_then_reap(served: int) -> None:
        if served >= 3 * CHUNK and not reaped:
            clock.advance(seconds=LEASE.total_seconds() + 1)
            reaped.append(reaper.run_once())

    body = ObservingBody(b"c" * (10 * CHUNK), None, on_read=stall_then_reap)
    response = send_upload(wsgi_app, image["id"], tenant, body, 10 * CHUNK)

    assert response.status_int == 409
    assert response.json["error"]["code"] == "upload_interrupted"
    assert [(report.uploads, report.locations) for report in reaped] == [(1, 1)]  # the partial file it found
    sent = locations_of(engine, image["id"])[0][1]
    assert sent >= 3 * CHUNK
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED
    assert files_in(store_root) == []  # the request removed its partial file when it stopped
    scrubber.run_once()
    assert locations_of(engine, image["id"]) == [(LocationStatus.DELETED, sent)]
    assert totals(usage_of) == idle_usage()
    upload(image["id"], b"again")
    assert image_of(engine, image["id"]).status is ImageStatus.ACTIVE


def test_a_final_admission_refused_sends_the_data_to_the_scrubber_at_once(
    app, wsgi_app, engine, tenant, admin, new_image, store_root, usage_of, upload
):
    """Another upload takes the space while these bytes stream in: refused at the end, and nothing stays."""
    app.put_json("/v1/tenants/tenant-a/limits", {"limits": {"image_size_total": 1}}, headers=admin, status=200)
    image, rival = new_image(), new_image()
    raced = []

    def rival_takes_the_space(served: int) -> None:
        if served >= CHUNK and not raced:
            raced.append(True)
            upload(rival["id"], b"r" * (1024 * 1024 - 2 * CHUNK))

    body = ObservingBody(b"d" * (4 * CHUNK), None, on_read=rival_takes_the_space)
    response = send_upload(wsgi_app, image["id"], tenant, body, 4 * CHUNK)

    assert response.status_int == 413
    assert response.json["error"]["code"] == "quota_exceeded"
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED
    assert upload_row(engine, image["id"]) is None
    assert files_in(store_root) == [rival["id"]]
    assert locations_of(engine, image["id"]) == [(LocationStatus.DELETED, 4 * CHUNK)]
    assert totals(usage_of) == {**idle_usage(2), "image_size_total": 1024 * 1024 - 2 * CHUNK}
    assert set(usage_of("tenant-a")["space"]) == {("file", "active")}


def test_an_image_deleted_while_its_data_streamed_in_stays_deleted_and_keeps_no_data(
    app, wsgi_app, engine, tenant, new_image, store_root, usage_of
):
    image = new_image()
    deleted = []

    def delete_it(served: int) -> None:
        if served >= CHUNK and not deleted:
            deleted.append(True)
            app.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)

    body = ObservingBody(b"e" * (3 * CHUNK), None, on_read=delete_it)
    response = send_upload(wsgi_app, image["id"], tenant, body, 3 * CHUNK)

    assert response.status_int == 409
    assert image_of(engine, image["id"]).status is ImageStatus.DELETED
    app.get(f"/v2/images/{image['id']}", headers=tenant, status=404)
    assert files_in(store_root) == []
    assert upload_row(engine, image["id"]) is None
    assert totals(usage_of) == idle_usage(count=0)


def test_a_lease_taken_over_after_the_data_is_linked_lands_nothing(
    settings, engine, tenant, clock, reaper, scrubber, store_root, usage_of
):
    """A worker frozen past its lease between linking its data and landing it: the reaper hands the data over
    first, and the landing's guarded delete of the lease finds it gone: 409, nothing recorded twice."""
    store = FakeFailingStore.at(store_root)
    wsgi_app = build_app_with_store(settings, store, clock)
    app = TestApp(wsgi_app)
    body = {"name": "frozen", "disk_format": "raw", "container_format": "bare"}
    image = app.post_json("/v2/images", body, headers=tenant, status=201).json
    reaped = []

    def freeze_past_the_lease() -> None:
        clock.advance(seconds=LEASE.total_seconds() + 1)
        reaped.append(reaper.run_once())

    store.after_add = freeze_past_the_lease
    response = send_upload(wsgi_app, image["id"], tenant, ObservingBody(b"g" * CHUNK, None), CHUNK)

    assert response.status_int == 409
    assert response.json["error"]["code"] == "upload_interrupted"
    assert [(report.uploads, report.locations) for report in reaped] == [(1, 1)]  # the linked file, handed over
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED
    assert upload_row(engine, image["id"]) is None
    assert locations_of(engine, image["id"]) == [(LocationStatus.PENDING_DELETE, CHUNK)]
    scrubber.run_once()
    assert locations_of(engine, image["id"]) == [(LocationStatus.DELETED, CHUNK)]
    assert files_in(store_root) == []
    assert totals(usage_of) == idle_usage()
    wsgi_app.registry["locquota.engine"].dispose()


# --- dead uploads and the reaper ----------------------------------------------------------------------------------


def die_mid_upload(wsgi_app, engine, tenant, image_id: str, *, sent: int, linked: bool = False) -> Upload:
    """An upload whose worker dies after `sent` bytes; the files a SIGKILL would leave are put back.

    linked: the data had been linked in place too (a crash between the link and the final commit).
    """

    def killed(served: int) -> None:
        if served >= sent:
            raise WorkerKilled

    with pytest.raises(WorkerKilled):
        send_upload(wsgi_app, image_id, tenant, ObservingBody(b"f" * (8 * sent), None, on_read=killed), 8 * sent)
    lease = upload_row(engine, image_id)
    scratch = Path(lease.scratch_url.removeprefix("file://"))
    scratch.write_bytes(b"f" * sent)  # the finally that removed it does not run under SIGKILL
    if linked:
        Path(lease.url.removeprefix("file://")).hardlink_to(scratch)
    return lease


@pytest.mark.parametrize("linked", [False, True], ids=["partial-only", "linked-before-commit"])
def test_the_reaper_ends_a_dead_upload_once_its_lease_runs_out(
    wsgi_app, engine, tenant, new_image, clock, reaper, scrubber, store_root, usage_of, upload, linked
):
    image = new_image()
    die_mid_upload(wsgi_app, engine, tenant, image["id"], sent=2 * CHUNK, linked=linked)
    assert image_of(engine, image["id"]).status is ImageStatus.SAVING
    assert totals(usage_of)["image_count_uploading"] == 1

    clock.advance(seconds=LEASE.total_seconds() - 1)
    assert reaper.run_once().uploads == 0  # the lease has not run out: it may still be alive
    clock.advance(seconds=2)
    report = reaper.run_once()

    pieces = 2 if linked else 1  # the final name is a second name of the same file: each name goes
    assert (report.uploads, report.locations) == (1, pieces)
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED
    assert upload_row(engine, image["id"]) is None
    assert totals(usage_of)["image_count_uploading"] == 0
    assert totals(usage_of)["image_size_total"] == pieces * 2 * CHUNK  # charged as pending_delete until scrubbed
    assert reaper.run_once().uploads == 0  # exactly once

    scrubber.run_once()
    assert files_in(store_root) == []
    assert locations_of(engine, image["id"]) == [(LocationStatus.DELETED, 2 * CHUNK)] * pieces
    assert totals(usage_of) == idle_usage()
    upload(image["id"], b"and again")
    assert image_of(engine, image["id"]).status is ImageStatus.ACTIVE


def test_a_dead_upload_that_wrote_nothing_only_gives_its_image_back(
    wsgi_app, engine, tenant, new_image, clock, reaper, store_root, usage_of
):
    image = new_image()
    lease = die_mid_upload(wsgi_app, engine, tenant, image["id"], sent=CHUNK)
    Path(lease.scratch_url.removeprefix("file://")).unlink()
    clock.advance(seconds=LEASE.total_seconds() + 1)

    assert (reaper.run_once().uploads, locations_of(engine, image["id"])) == (1, [])
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED
    assert totals(usage_of) == idle_usage()


class UnreachableStore(FakeFailingStore):
    """The file store, but sizes fail as a store that is down fails them (a StoreError, not "not found")."""

    reachable = False

    def get_size(self, url: str) -> int:
        if not self.reachable:
            raise StoreError("fake store: connection refused")
        return self.inner.get_size(url)


def test_a_dead_upload_in_a_store_that_does_not_answer_is_kept_until_it_does(
    wsgi_app, engine, tenant, new_image, clock, store_root, usage_of
):
    image = new_image()
    die_mid_upload(wsgi_app, engine, tenant, image["id"], sent=2 * CHUNK)
    store = UnreachableStore.at(store_root)
    reaper = UploadReaper(unit_of_work_on(engine), registry_of(store), clock, LeaseTerms(LEASE), batch_size=10)
    clock.advance(seconds=LEASE.total_seconds() + 1)

    assert reaper.run_once().uploads == 0  # nothing concluded: the data may well be there
    assert image_of(engine, image["id"]).status is ImageStatus.SAVING
    assert upload_row(engine, image["id"]) is not None
    assert len(files_in(store_root)) == 1

    store.reachable = True
    clock.advance(seconds=LEASE.total_seconds() + 1)  # the reaper's own hold on the lease runs out in turn
    assert (reaper.run_once().uploads, locations_of(engine, image["id"])) == (
        1,
        [(LocationStatus.PENDING_DELETE, 2 * CHUNK)],
    )
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED


def test_data_a_live_location_reaches_by_the_same_name_is_left_to_it(
    app, wsgi_app, engine, tenant, new_image, clock, reaper, store_root, usage_of, upload
):
    """A dead upload's final name already holds data of a pending_delete location: not charged twice."""
    image = new_image()
    die_mid_upload(wsgi_app, engine, tenant, image["id"], sent=CHUNK, linked=True)
    clock.advance(seconds=LEASE.total_seconds() + 1)
    reaper.run_once()
    assert len(locations_of(engine, image["id"])) == 2
    first_charge = totals(usage_of)["image_size_total"]

    die_mid_upload(wsgi_app, engine, tenant, image["id"], sent=CHUNK)  # the old final name is still there
    clock.advance(seconds=LEASE.total_seconds() + 1)
    assert reaper.run_once().locations == 1  # its own partial file only

    assert totals(usage_of)["image_size_total"] == first_charge + CHUNK


@pytest.mark.postgresql
@pytest.mark.mariadb
def test_reapers_on_every_node_end_each_dead_upload_exactly_once(
    wsgi_app, engine, tenant, new_image, clock, stores, store_root, usage_of
):
    images = [new_image()["id"] for _ in range(12)]
    for image_id in images:
        die_mid_upload(wsgi_app, engine, tenant, image_id, sent=CHUNK)
    clock.advance(seconds=LEASE.total_seconds() + 1)
    reapers = [UploadReaper(unit_of_work_on(engine), stores, clock, LeaseTerms(LEASE), batch_size=3) for _ in range(4)]
    start = threading.Barrier(len(reapers))
    reports = []

    def run(each: UploadReaper) -> None:
        start.wait()
        reports.append(each.run_once())

    threads = [threading.Thread(target=run, args=(each,)) for each in reapers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(report.uploads for report in reports) == len(images)
    with Session(engine) as session:
        per_image = session.execute(select(Location.image_id, func.count()).group_by(Location.image_id)).all()
    assert sorted(count for _, count in per_image) == [1] * len(images)
    assert totals(usage_of) == {**idle_usage(len(images)), "image_size_total": len(images) * CHUNK}


def test_images_stuck_in_saving_before_leases_existed_are_reaped(
    engine, tenant, app, new_image, clock, reaper, usage_of
):
    """Migration 0007 gives each image already in saving an expired lease without names: the reaper frees it."""
    image = new_image()
    with Session(engine) as session, session.begin():
        LocationLifecycle(session, clock).change_image_status(
            uuid.UUID(image["id"]), "tenant-a", ImageStatus.QUEUED, ImageStatus.SAVING
        )
        session.add(
            Upload(
                image_id=uuid.UUID(image["id"]),
                holder="migration-0007",
                expires_at=clock.now(),
                started_at=clock.now(),
            )
        )
    clock.advance(seconds=1)

    assert reaper.run_once().uploads == 1
    assert image_of(engine, image["id"]).status is ImageStatus.QUEUED
    assert totals(usage_of) == idle_usage()


def test_the_lease_must_outlast_two_client_silences():
    with pytest.raises(SettingsError, match="upload_lease_seconds"):
        Settings.from_ini({"locquota.upload_lease_seconds": "60", "locquota.client_idle_timeout_seconds": "30"})
    assert Settings.from_ini({"locquota.upload_lease_seconds": "61"}).upload_lease_seconds == 61
