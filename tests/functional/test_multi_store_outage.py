"""One store of several failing (issue 15): only its own operations fail; the others keep working.

Two real file stores; `cheap` is a FakeFailingStore (the real file store whose deletes fail on demand),
and for uploads its root directory is replaced by a file, so the real store's writes fail. Runs on
PostgreSQL and SQLite.
"""

import shutil
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import Location, LocationStatus, Upload
from locations.scrubber import Scrubber
from locations.stores.base import StoreError, StoreRegistry
from locations.stores.file import FileStore
from locquota.app import configure
from locquota.clock import Clock
from tests.conftest import identity, multi_store
from tests.fakes import POLICY, SCRUB_TIME, FakeFailingStore, scrub_settings, unit_of_work_on

TENANT = identity("tenant-a")
ADMIN = identity("operators", "admin")
IMAGE = {"name": "split", "disk_format": "raw", "container_format": "bare"}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def roots(tmp_path):
    return {"fast": tmp_path / "fast", "cheap": tmp_path / "cheap"}


@pytest.fixture
def registry(roots) -> StoreRegistry:
    fast = FileStore("fast", {"filesystem_store_datadir": str(roots["fast"])})
    cheap = FakeFailingStore(FileStore("cheap", {"filesystem_store_datadir": str(roots["cheap"])}))
    return StoreRegistry({"fast": fast, "cheap": cheap}, "fast")


@pytest.fixture
def split_app(settings, roots, registry, clock):
    config = configure(scrub_settings(two_stores(settings, roots), delayed_delete=True))
    config.register_service(registry, iface=StoreRegistry)
    config.register_service(clock, iface=Clock)
    router = config.make_wsgi_app()
    yield TestApp(router)
    router.registry["locquota.engine"].dispose()


def two_stores(settings, roots) -> dict[str, str]:
    """fast and cheap, file stores in their own roots."""
    stores = {name: ("file", {"filesystem_store_datadir": str(root)}) for name, root in roots.items()}
    return multi_store(settings, "fast", stores)


def upload_into(app: TestApp, store: str, data: bytes, status: int = 204):
    image = app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    app.put(f"/v2/images/{image}/file", data, headers={**TENANT, **OCTET, "X-Image-Meta-Store": store}, status=status)
    return image


def test_a_store_that_cannot_be_written_fails_only_uploads_into_it(split_app, roots, usage_of):
    roots["cheap"].mkdir(parents=True, exist_ok=True)
    shutil.rmtree(roots["cheap"])
    roots["cheap"].write_bytes(b"not a directory any more")

    broken = upload_into(split_app, "cheap", b"x" * 100, status=503)
    fine = upload_into(split_app, "fast", b"y" * 100)

    assert split_app.get(f"/v2/images/{broken}", headers=TENANT).json["status"] == "killed"
    assert split_app.get(f"/v2/images/{fine}", headers=TENANT).json["stores"] == "fast"
    assert usage_of("tenant-a")["space"] == {("fast", "active"): (100, 1)}


def test_the_scrubber_retries_a_failing_store_and_finishes_the_others(split_app, registry, engine, clock, usage_of):
    fast_image, cheap_image = upload_into(split_app, "fast", b"f" * 10), upload_into(split_app, "cheap", b"c" * 20)
    for image in (fast_image, cheap_image):
        split_app.delete(f"/v2/images/{image}", headers=TENANT, status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    registry["cheap"].fail_deletes = 1
    scrubber = Scrubber(unit_of_work_on(engine), registry, clock, POLICY, batch_size=10, pool_size=2)

    first = scrubber.run_once()

    assert (first.deleted, first.outcomes["failed"]) == (1, 1)
    backlog = split_app.get("/v1/scrubber/backlog", headers=ADMIN).json
    assert [(entry["store"], entry["attempts"]) for entry in backlog["locations"]] == [("cheap", 1)]
    assert usage_of("tenant-a")["space"] == {("cheap", "pending_delete"): (20, 1)}

    clock.advance(seconds=POLICY.retry_delay(1).total_seconds() + 1)
    second = scrubber.run_once()

    assert second.deleted == 1
    assert usage_of("tenant-a")["space"] == {}
    assert split_app.get("/v1/scrubber/backlog", headers=ADMIN).json["locations"] == []


class FailingMidWriteStore(FakeFailingStore):
    """A store that dies after writing part of the data and cannot clean up (an S3 multipart upload left open)."""

    def add(self, target, chunks, ready=lambda: None):
        self.inner.path_for(target.scratch_url).write_bytes(next(iter(chunks)))
        raise StoreError("fake store: connection reset mid-write, clean-up failed too")


def test_what_a_store_failing_mid_write_leaves_goes_to_the_scrubber_not_the_audit(
    settings, roots, registry, clock, engine, usage_of
):
    failing = FailingMidWriteStore(registry["cheap"].inner)
    stores = StoreRegistry({"fast": registry["fast"], "cheap": failing}, "fast")
    config = configure(scrub_settings(two_stores(settings, roots), delayed_delete=True))
    config.register_service(stores, iface=StoreRegistry)
    config.register_service(clock, iface=Clock)
    app = TestApp(config.make_wsgi_app())

    image = upload_into(app, "cheap", b"x" * 10000, status=503)

    assert app.get(f"/v2/images/{image}", headers=TENANT).json["status"] == "queued"
    with Session(engine) as session:
        left = session.scalars(select(Location).where(Location.image_id == uuid.UUID(image))).all()
        assert [(location.status, location.store) for location in left] == [(LocationStatus.DELETED, "cheap")]
        assert session.get(Upload, uuid.UUID(image)) is None
    assert list(roots["cheap"].iterdir()) == []  # deleted at once, as an immediate delete is
    assert usage_of("tenant-a")["space"] == {}
    app.app.registry["locquota.engine"].dispose()
