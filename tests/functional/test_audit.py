"""`locquota audit` through click's CliRunner, on the real test database and a real store directory.

Inconsistencies are planted the way they happen in life: a file deleted or truncated behind the service's
back, a stray file and a scratch file left by a crash, an upload whose process died (its lease runs out)
and an image left in saving without any lease. Files are aged with os.utime, never by sleeping; the CLI
runs on the wall clock, so ages are taken from it.
"""

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from locations.models import TEXT_KEY_VERSION, AuditRun, Image, ImageStatus, Location, LocationStatus, Upload
from locations.services.audit import Auditor, Finding, Found
from locations.services.audit_fix import AUDIT_PROJECT, ORPHAN_IMAGE_NAME, AuditRepairs, Repair
from locations.services.lifecycle import LocationLifecycle
from locations.stores.base import DataIdentity, StoredData, StoreError, StoreRegistry
from locations.stores.file import FileStore
from locquota.cli import cli
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from tests.fakes import FakeFailingStore, registry_of, unit_of_work_on

DATA = b"image data \x00\xff" * 100
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
HOUR = 3600
IMAGE = {"name": "x", "disk_format": "raw", "container_format": "bare"}
KINDS = ("missing", "wrong_size", "orphan", "partial", "stuck", "unreadable")


def wall_now() -> datetime:
    """The CLI's clock (naive UTC, as stored)."""
    return datetime.now(UTC).replace(tzinfo=None)


def aged(path: Path, seconds: float = 2 * HOUR) -> Path:
    """Make a file look written `seconds` ago (older than the default grace of an hour)."""
    moment = time.time() - seconds
    os.utime(path, (moment, moment), follow_symlinks=False)
    return path


def file_url(path: Path) -> str:
    return f"file://{path}"


def scratch_name(image_id: uuid.UUID | str | None = None) -> str:
    """An upload's scratch file name, as the file store plans it."""
    return f".{image_id or uuid.uuid4()}.{uuid.uuid4().hex}.partial"


@pytest.fixture
def locquota(ini) -> Iterator[Callable[..., Result]]:
    """Run `locquota --config <ini> ...`; the signal handlers `scrub` installs are put back after."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(ini), *args])

    yield run
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def uploaded(new_image, upload) -> Callable[..., str]:
    """A tenant's image with DATA uploaded through the API; its id."""

    def make(data: bytes = DATA, **attributes: object) -> str:
        image_id = str(new_image(**attributes)["id"])
        upload(image_id, data)
        return image_id

    return make


def dead_upload(
    engine, image_id: str, store_root: Path, *, expires_at: datetime, scratch: bytes | None, vault: UrlVault = PLAINTEXT
) -> Path:
    """An upload whose process died after writing scratch data: saving, charged, its lease left to run out."""
    scratch_path = store_root / scratch_name(image_id)
    if scratch is not None:
        scratch_path.write_bytes(scratch)
        aged(scratch_path)
    with Session(engine) as session:
        image = session.get_one(Image, uuid.UUID(image_id))
        LocationLifecycle(session, Clock()).change_image_status(
            image.id, image.owner, ImageStatus.QUEUED, ImageStatus.SAVING
        )
        session.add(
            Upload(
                image_id=image.id,
                holder="upload:dead-worker",
                expires_at=expires_at,
                store="file",
                url=vault.seal(file_url(store_root / image_id)),
                scratch_url=vault.seal(file_url(scratch_path)),
                started_at=expires_at - timedelta(minutes=5),
            )
        )
        session.commit()
    return scratch_path


def saving_without_lease(engine, image_id: str) -> None:
    """An image left in saving without an upload row (as an import of an old Glance database might)."""
    with Session(engine) as session:
        image = session.get_one(Image, uuid.UUID(image_id))
        LocationLifecycle(session, Clock()).change_image_status(
            image.id, image.owner, ImageStatus.QUEUED, ImageStatus.SAVING
        )
        session.commit()


def image_status(engine, image_id: str) -> ImageStatus:
    with Session(engine) as session:
        return session.get_one(Image, uuid.UUID(image_id)).status


def locations_of(engine, image_id: str) -> list[Location]:
    with Session(engine) as session:
        return list(
            session.scalars(select(Location).where(Location.image_id == uuid.UUID(image_id)).order_by(Location.id))
        )


def lines_of(result: Result, kind: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(f"{kind}\t")]


def summary(result: Result) -> dict[str, int]:
    """The per-kind count lines of the human report."""
    counts = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in KINDS and words[1].isdigit():
            counts[words[0]] = int(words[1])
    return counts


def report(result: Result) -> dict:
    return json.loads(result.stdout)


# --- the whole story: plant, report, fix, scrub, clean ---------------------------------------------------------


@pytest.fixture
def planted(app, engine, store_root, uploaded, new_image) -> dict[str, object]:
    """One of each repairable inconsistency, beside a healthy image."""
    healthy, missing, corrupt = uploaded(name="healthy"), uploaded(name="missing"), uploaded(name="corrupt")
    (store_root / missing).unlink()
    (store_root / corrupt).write_bytes(DATA[:10])
    orphan = store_root / "left-behind"
    orphan.write_bytes(b"x" * 70)
    aged(orphan)
    partial = store_root / scratch_name()
    partial.write_bytes(b"p" * 30)
    aged(partial)
    dead = str(new_image(name="dead upload")["id"])
    dead_scratch = dead_upload(engine, dead, store_root, expires_at=wall_now() - timedelta(hours=2), scratch=b"s" * 20)
    no_lease = str(new_image(name="no lease")["id"])
    saving_without_lease(engine, no_lease)
    return {
        "healthy": healthy,
        "missing": missing,
        "corrupt": corrupt,
        "orphan": orphan,
        "partial": partial,
        "dead": dead,
        "dead_scratch": dead_scratch,
        "no_lease": no_lease,
    }


def test_audit_reports_each_planted_inconsistency_and_exits_1(locquota, planted):
    result = locquota("audit")

    assert result.exit_code == 1, result.output
    assert summary(result) == {"missing": 1, "wrong_size": 1, "orphan": 1, "partial": 1, "stuck": 2, "unreadable": 0}
    [missing] = lines_of(result, "missing")
    assert f"image {planted['missing']}" in missing
    assert f"expected {len(DATA)} bytes" in missing
    [wrong] = lines_of(result, "wrong_size")
    assert f"image {planted['corrupt']}" in wrong
    assert f"size 10, expected {len(DATA)}" in wrong
    [orphan] = lines_of(result, "orphan")
    assert file_url(planted["orphan"]) in orphan
    assert "70 bytes" in orphan
    [partial] = lines_of(result, "partial")
    assert file_url(planted["partial"]) in partial
    stuck = "\n".join(lines_of(result, "stuck"))
    assert planted["dead"] in stuck
    assert planted["no_lease"] in stuck
    assert "without an upload lease" in stuck
    assert "run with --fix to repair" in result.stdout
    assert planted["healthy"] not in result.stdout


def test_audit_json_lists_every_finding_without_location_urls(locquota, planted, store_root):
    result = locquota("audit", "--json", "--batch-size", "2")

    assert result.exit_code == 1, result.output
    document = report(result)
    assert document["found"] == {"missing": 1, "wrong_size": 1, "orphan": 1, "partial": 1, "stuck": 2, "unreadable": 0}
    assert document["fixed"] == dict.fromkeys(KINDS, 0)
    assert document["fix"] is False
    assert document["unchecked_stores"] == []
    assert document["checked"]["locations"] == 3
    by_kind = {}
    for finding in document["findings"]:
        by_kind.setdefault(finding["kind"], []).append(finding)
    [missing] = by_kind["missing"]
    assert missing["image_id"] == planted["missing"]
    assert missing["owner"] == "tenant-a"
    assert missing["expected_bytes"] == len(DATA)
    assert missing["url"] is None  # a location's URL may carry credentials: never printed
    assert missing["repair"] is None
    [wrong] = by_kind["wrong_size"]
    assert (wrong["size_bytes"], wrong["expected_bytes"], wrong["url"]) == (10, len(DATA), None)
    [orphan] = by_kind["orphan"]
    assert (orphan["url"], orphan["size_bytes"], orphan["store"]) == (file_url(planted["orphan"]), 70, "file")
    assert orphan["location_id"] is None
    [partial] = by_kind["partial"]
    assert partial["url"] == file_url(planted["partial"])
    assert {finding["image_id"] for finding in by_kind["stuck"]} == {planted["dead"], planted["no_lease"]}
    assert str(store_root / planted["healthy"]) not in result.stdout


def test_fix_then_scrub_leaves_a_clean_audit_and_no_drift(app, engine, locquota, planted, store_root, tenant, usage_of):
    before = usage_of("tenant-a")["totals"]

    fixed = locquota("audit", "--fix", "--json")

    assert fixed.exit_code == 1, fixed.output  # it found something: the report says what, and what was fixed
    document = report(fixed)
    assert document["fixed"] == {"missing": 1, "wrong_size": 1, "orphan": 1, "partial": 1, "stuck": 2, "unreadable": 0}
    assert {finding["repair"] for finding in document["findings"]} == {"fixed"}

    # Lost data: the location deleted (no longer charged), the image killed, with the reason recorded.
    [lost] = locations_of(engine, planted["missing"])
    assert lost.status is LocationStatus.DELETED
    assert lost.last_error == "data lost: missing from its store (found by locquota audit)"
    assert image_status(engine, planted["missing"]) is ImageStatus.KILLED
    shown = app.get(f"/v2/images/{planted['missing']}", headers=tenant, status=200).json
    assert shown["status"] == "killed"
    assert app.get(f"/v2/images/{planted['missing']}/file", headers=tenant, status=204).body == b""
    # Corrupt data: sent to the scrubber, the image killed.
    [corrupt] = locations_of(engine, planted["corrupt"])
    assert corrupt.status is LocationStatus.PENDING_DELETE
    assert corrupt.last_error == f"data corrupt: size 10, expected {len(DATA)} (found by locquota audit)"
    assert image_status(engine, planted["corrupt"]) is ImageStatus.KILLED
    # Stuck uploads ended by the reaper: back to queued.
    assert image_status(engine, planted["dead"]) is ImageStatus.QUEUED
    assert image_status(engine, planted["no_lease"]) is ImageStatus.QUEUED
    # Orphans and partials charged to the reserved project, not a tenant, until scrubbed.
    reserved = usage_of(AUDIT_PROJECT)["totals"]
    assert reserved["image_size_total"] == 70 + 30
    assert reserved["image_count_total"] == 1
    with Session(engine) as session:
        [orphans] = session.scalars(select(Image).where(Image.owner == AUDIT_PROJECT)).all()
        assert (orphans.name, orphans.status) == (ORPHAN_IMAGE_NAME, ImageStatus.PENDING_DELETE)
    after_fix = usage_of("tenant-a")["totals"]
    assert after_fix["image_size_total"] == before["image_size_total"] - len(DATA) + 20  # lost gone; dead's scratch
    assert after_fix["image_count_total"] == before["image_count_total"] - 2  # two killed
    assert after_fix["image_count_uploading"] == 0
    app.get(f"/v2/images/{planted['missing']}", headers=tenant, status=200)  # killed images stay listed

    scrubbed = locquota("scrub")
    assert scrubbed.exit_code == 0, scrubbed.output

    for path in (planted["orphan"], planted["partial"], planted["dead_scratch"], store_root / planted["corrupt"]):
        assert not path.exists(), path
    assert (store_root / planted["healthy"]).read_bytes() == DATA
    assert app.get(f"/v2/images/{planted['healthy']}/file", headers=tenant, status=200).body == DATA
    assert usage_of(AUDIT_PROJECT)["totals"] == dict.fromkeys(usage_of(AUDIT_PROJECT)["totals"], 0)
    assert usage_of("tenant-a")["totals"]["image_size_total"] == len(DATA)  # only the healthy image's data

    clean = locquota("audit")
    assert clean.exit_code == 0, clean.output
    assert summary(clean) == dict.fromkeys(KINDS, 0)
    assert "--fix" not in clean.stdout

    reconciled = locquota("reconcile")
    assert reconciled.exit_code == 0, reconciled.output
    assert "0 drifted figures" in reconciled.stdout


def test_a_finding_no_longer_true_when_repaired_is_left_alone(engine, uploaded, new_image, store_root, usage_of):
    # What the walk found changed before the repair acts: the lost file is back, the stray one gone, the
    # orphan referenced by a location added since, the partial named by an upload started since. The repairs
    # check again, in their own unit of work, and leave them all alone.
    image_id = uploaded()
    [location] = locations_of(engine, image_id)
    uploading = str(new_image()["id"])
    scratch = dead_upload(engine, uploading, store_root, expires_at=wall_now() + timedelta(hours=1), scratch=b"s")
    stores = StoreRegistry({"file": FileStore("file", {"datadir": str(store_root)})}, "file")
    repairs = AuditRepairs(unit_of_work_on(engine), stores, Clock(), lambda: None)
    findings = [
        Found(Finding.MISSING, "file", location.id, location.image_id, "tenant-a", expected_bytes=len(DATA)),
        Found(Finding.ORPHAN, "file", url=file_url(store_root / "stray"), size_bytes=1),
        Found(Finding.ORPHAN, "file", url=file_url(store_root / image_id), size_bytes=len(DATA)),
        Found(Finding.PARTIAL, "file", url=file_url(scratch), size_bytes=1),
    ]

    assert [repairs.repair(found) for found in findings] == [Repair.CHANGED] * 4
    assert [loc.status for loc in locations_of(engine, image_id)] == [LocationStatus.ACTIVE]
    assert image_status(engine, image_id) is ImageStatus.ACTIVE
    assert (store_root / image_id).read_bytes() == DATA
    assert scratch.exists()
    assert usage_of(AUDIT_PROJECT)["totals"]["image_count_total"] == 0


def test_an_encrypted_deployment_is_audited_through_its_key_ring(
    make_app, settings, engine, ini, store_root, tenant, usage_of
):
    key = Fernet.generate_key().decode()
    sealed = make_app({**settings, "locquota.location_encryption_keys": key})
    vault = UrlVault([key.encode()])
    kept, lost = (sealed.post_json("/v2/images", IMAGE, headers=tenant).json["id"] for _ in range(2))
    for image_id in (kept, lost):
        sealed.put(f"/v2/images/{image_id}/file", DATA, headers={**tenant, "Content-Type": "application/octet-stream"})
    (store_root / lost).unlink()
    dead = sealed.post_json("/v2/images", IMAGE, headers=tenant).json["id"]
    scratch = dead_upload(
        engine, dead, store_root, expires_at=wall_now() - timedelta(hours=2), scratch=b"s" * 5, vault=vault
    )
    with Session(engine) as session:
        assert all(url.startswith("enc:") for url in session.scalars(select(Location.url)))

    def locquota(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(ini), *args], env={"LOCQUOTA_LOCATION_ENCRYPTION_KEYS": key})

    found = locquota("audit", "--json")
    fixed = locquota("audit", "--fix")
    scrubbed = locquota("scrub")
    clean = locquota("audit")

    assert found.exit_code == 1, found.output
    document = report(found)
    assert document["found"] == {**dict.fromkeys(KINDS, 0), "missing": 1, "stuck": 1}  # the scratch is the upload's
    assert document["unchecked_stores"] == []
    assert "enc:" not in found.stdout
    assert str(store_root / kept) not in found.stdout
    assert (fixed.exit_code, scrubbed.exit_code, clean.exit_code) == (1, 0, 0), clean.output
    assert not scratch.exists()
    assert image_status(engine, lost) is ImageStatus.KILLED
    assert image_status(engine, dead) is ImageStatus.QUEUED
    assert usage_of("tenant-a")["totals"]["image_size_total"] == len(DATA)


def test_audit_help_needs_no_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCQUOTA_CONFIG", str(tmp_path / "nowhere.ini"))

    result = CliRunner().invoke(cli, ["audit", "--help"])

    assert result.exit_code == 0, result.output
    for option in ("--fix", "--json", "--grace-seconds", "--batch-size"):
        assert option in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--grace-seconds", "-1"],
        ["--grace-seconds", "99999999999999999999"],
        ["--grace-seconds", "soon"],
        ["--batch-size", "0"],
        ["--batch-size", "10001"],
    ],
)
def test_audit_refuses_bad_options_and_records_no_run(engine, locquota, args):
    result = locquota("audit", *args)

    assert result.exit_code == 2
    assert args[0] in result.output
    with Session(engine) as session:
        assert session.scalars(select(AuditRun)).all() == []


# --- what is not a finding -------------------------------------------------------------------------------------


def test_fresh_data_is_within_the_grace_and_not_reported(locquota, store_root, uploaded):
    uploaded()
    (store_root / "just-written").write_bytes(b"new")
    (store_root / scratch_name()).write_bytes(b"in flight")
    old = store_root / "old"
    old.write_bytes(b"old")
    aged(old)

    result = locquota("audit", "--json")

    document = report(result)
    assert [(f["kind"], f["url"]) for f in document["findings"]] == [("orphan", file_url(old))]
    assert document["checked"]["too_recent"] == 3  # the two fresh files and the fresh upload


def test_a_shorter_grace_judges_younger_data(locquota, store_root):
    young = store_root / "ten-minutes-old"
    store_root.mkdir(parents=True, exist_ok=True)
    young.write_bytes(b"y")
    aged(young, 600)

    assert locquota("audit").exit_code == 0
    result = locquota("audit", "--grace-seconds", "300", "--json")

    assert result.exit_code == 1
    assert [f["url"] for f in report(result)["findings"]] == [file_url(young)]


def test_data_of_an_upload_in_flight_is_neither_partial_nor_orphan(engine, locquota, new_image, store_root):
    store_root.mkdir(parents=True, exist_ok=True)
    image_id = str(new_image()["id"])
    scratch = dead_upload(engine, image_id, store_root, expires_at=wall_now() + timedelta(hours=1), scratch=b"s" * 9)
    final = store_root / image_id  # linked in place, the lease not yet released
    os.link(scratch, final)

    result = locquota("audit", "--fix")

    assert result.exit_code == 0, result.output
    assert scratch.exists()
    assert final.exists()
    assert image_status(engine, image_id) is ImageStatus.SAVING


def test_an_upload_lease_run_out_within_the_grace_is_the_reapers_not_stuck(engine, locquota, new_image, store_root):
    store_root.mkdir(parents=True, exist_ok=True)
    image_id = str(new_image()["id"])
    dead_upload(engine, image_id, store_root, expires_at=wall_now() - timedelta(minutes=10), scratch=None)

    result = locquota("audit")

    assert result.exit_code == 0, result.output
    assert summary(result)["stuck"] == 0


def test_data_referenced_only_by_a_pending_delete_location_is_not_an_orphan(
    make_app, settings, engine, store_root, tenant, locquota
):
    delayed = make_app({**settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "86400"})
    image = delayed.post_json(
        "/v2/images", {"name": "x", "disk_format": "raw", "container_format": "bare"}, headers=tenant
    )
    image_id = image.json["id"]
    delayed.put(f"/v2/images/{image_id}/file", DATA, headers={**tenant, "Content-Type": "application/octet-stream"})
    delayed.delete(f"/v2/images/{image_id}", headers=tenant, status=204)
    aged(store_root / image_id)

    result = locquota("audit", "--fix")

    assert result.exit_code == 0, result.output
    assert (store_root / image_id).read_bytes() == DATA
    assert [loc.status for loc in locations_of(engine, image_id)] == [LocationStatus.PENDING_DELETE]


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda root, name: f"file://{root}/./{name}", id="dot-segment"),
        pytest.param(lambda root, name: f"file://localhost{root}//{name}", id="localhost-double-slash"),
        pytest.param(
            lambda root, name: (root / f"{name}.link").symlink_to(root / name) or f"file://{root}/{name}.link",
            id="symlink",
        ),
    ],
)
def test_data_a_location_reaches_under_another_spelling_is_not_an_orphan(
    make_app, settings, store_root, tenant, locquota, spelling
):
    api = make_app({**settings, "locquota.show_multiple_locations": "true"})
    store_root.mkdir(parents=True, exist_ok=True)
    data = store_root / "seed"
    data.write_bytes(b"12345")
    aged(data)
    image = api.post_json("/v2/images", IMAGE, headers=tenant)
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": spelling(store_root, "seed"), "metadata": {}}}]
    api.patch_json(f"/v2/images/{image.json['id']}", operations, headers={**tenant, "Content-Type": PATCH_TYPE})

    result = locquota("audit", "--fix")

    assert result.exit_code == 0, result.output
    assert data.read_bytes() == b"12345"


def test_a_location_in_a_store_not_configured_here_is_skipped(engine, locquota, new_image):
    image_id = uuid.UUID(str(new_image()["id"]))
    with Session(engine) as session:
        image = session.get_one(Image, image_id)
        url = "rbd://fsid/images/x/snap"
        LocationLifecycle(session, Clock()).add(image, url, DataIdentity(url), "glance:rbd", {}, 10, limits=None)
        session.commit()

    result = locquota("audit", "--json")

    assert result.exit_code == 0, result.output
    assert report(result)["checked"]["skipped_locations"] == 1
    assert report(result)["findings"] == []


# --- unreadable, and hostile stores ----------------------------------------------------------------------------


def test_a_symlink_swapped_out_of_the_root_is_unreadable_and_never_fixed(
    make_app, settings, engine, store_root, tmp_path, tenant, locquota
):
    api = make_app({**settings, "locquota.show_multiple_locations": "true"})
    store_root.mkdir(parents=True, exist_ok=True)
    (store_root / "seed").write_bytes(b"12345")
    link = store_root / "alias"
    link.symlink_to(store_root / "seed")
    image = api.post_json("/v2/images", IMAGE, headers=tenant)
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": file_url(link), "metadata": {}}}]
    api.patch_json(f"/v2/images/{image.json['id']}", operations, headers={**tenant, "Content-Type": PATCH_TYPE})
    outside = tmp_path / "outside-secret"
    outside.write_bytes(b"secret")
    link.unlink()
    link.symlink_to(outside)
    aged(store_root / "seed")  # now nothing reaches it: an orphan

    result = locquota("audit", "--fix", "--json")

    assert result.exit_code == 1, result.output
    document = report(result)
    [unreadable] = [f for f in document["findings"] if f["kind"] == "unreadable"]
    assert unreadable["image_id"] == image.json["id"]
    assert "location_outside_store" in unreadable["detail"]
    assert (unreadable["repairable"], unreadable["repair"]) == (False, "kept")
    assert outside.read_bytes() == b"secret"
    assert [loc.status for loc in locations_of(engine, image.json["id"])] == [LocationStatus.ACTIVE]


def test_a_symlink_out_of_the_root_is_never_reported_nor_deleted(locquota, store_root, tmp_path):
    store_root.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"not the store's")
    aged(outside)
    escape = store_root / "escape"
    escape.symlink_to(outside)
    aged(escape)  # the link itself

    reported = locquota("audit", "--json")
    fixed = locquota("audit", "--fix")
    scrubbed = locquota("scrub")

    assert (reported.exit_code, fixed.exit_code, scrubbed.exit_code) == (0, 0, 0), fixed.output
    assert report(reported)["findings"] == []
    assert outside.read_bytes() == b"not the store's"
    assert (store_root / "escape").is_symlink()


def test_missing_data_in_a_store_that_lists_nothing_is_not_marked_lost(engine, locquota, uploaded, store_root):
    first, second = uploaded(), uploaded()
    for image_id in (first, second):
        (store_root / image_id).unlink()  # as an unmounted root looks

    result = locquota("audit", "--fix", "--json")

    assert result.exit_code == 1
    document = report(result)
    assert document["found"]["missing"] == 2
    assert document["fixed"]["missing"] == 0
    assert {(f["repairable"], f["repair"]) for f in document["findings"]} == {(False, "kept")}
    for image_id in (first, second):
        assert [loc.status for loc in locations_of(engine, image_id)] == [LocationStatus.ACTIVE]
        assert image_status(engine, image_id) is ImageStatus.ACTIVE


class FakeUnlistableStore(FakeFailingStore):
    """A real file store whose inventory fails half-way, as a store refusing to list would."""

    def inventory(self) -> Iterator[StoredData]:
        """The first piece of data, then a store error."""
        yield from islice(self.inner.inventory(), 1)
        raise StoreError("fake store: listing refused")


def test_a_store_whose_inventory_fails_is_unchecked_and_its_missing_data_not_marked_lost(engine, uploaded, store_root):
    kept, lost = uploaded(), uploaded()
    (store_root / lost).unlink()
    stray = store_root / "stray"
    stray.write_bytes(b"z")
    aged(stray)
    store = FakeUnlistableStore.at(store_root)
    auditor = Auditor(
        unit_of_work_on(engine), registry_of(store), ["file"], Clock(), grace=timedelta(hours=1), batch_size=1
    )

    stored = [found for batch in auditor.stored_data("file") for found in batch.findings]
    located = [found for batch in auditor.locations() for found in batch.findings]

    assert [item.store for item in auditor.tally.unchecked] == ["file"]
    assert "inventory failed" in auditor.tally.unchecked[0].reason
    assert [(found.kind, found.image_id, found.is_repairable) for found in located] == [
        (Finding.MISSING, uuid.UUID(lost), False)
    ]
    assert all(found.kind is Finding.ORPHAN for found in stored)
    assert (store_root / kept).exists()


class FakeUnreachableStore(FakeFailingStore):
    """A store that lists its data, then stops answering: every size asked for is a StoreError, not "not found"."""

    def get_size(self, url: str) -> int:
        raise StoreError("fake store: connection refused")


def test_a_store_that_stops_answering_is_unreadable_never_missing_and_nothing_is_marked_lost(
    engine, uploaded, store_root
):
    image_id = uploaded()
    store = FakeUnreachableStore.at(store_root)
    auditor = Auditor(
        unit_of_work_on(engine), registry_of(store), ["file"], Clock(), grace=timedelta(hours=1), batch_size=10
    )
    list(auditor.stored_data("file"))  # the store listed data: a missing location there would be repairable

    [found] = [found for batch in auditor.locations() for found in batch.findings]
    [location_id] = [found.location_id]
    missing = Found(Finding.MISSING, "file", location_id, uuid.UUID(image_id), "tenant-a", expected_bytes=len(DATA))
    repaired = AuditRepairs(unit_of_work_on(engine), registry_of(store), Clock(), lambda: None).repair(missing)

    assert (found.kind, found.is_repairable) == (Finding.UNREADABLE, False)
    assert "cannot be reached" in found.detail
    assert repaired is Repair.CHANGED  # re-checked under lock: a store that does not answer proves nothing
    with Session(engine) as session:
        assert session.get(Location, location_id).status is LocationStatus.ACTIVE


def test_a_store_with_locations_not_keyed_yet_is_not_compared_and_fails_the_run(engine, locquota, uploaded, store_root):
    image_id = uploaded()
    with Session(engine) as session:
        session.execute(update(Location).values(data_key_version=TEXT_KEY_VERSION))
        session.commit()
    stray = store_root / "stray"
    stray.write_bytes(b"z")
    aged(stray)

    result = locquota("audit", "--fix", "--json")

    assert result.exit_code == 1, result.output
    document = report(result)
    [unchecked] = document["unchecked_stores"]
    assert unchecked["store"] == "file"
    assert "locquota locations rekey" in unchecked["reason"]
    assert document["findings"] == []
    assert stray.exists()
    assert (store_root / image_id).read_bytes() == DATA


# --- the run, for the metrics ------------------------------------------------------------------------------------


def test_each_run_is_recorded_with_its_counts(engine, locquota, store_root):
    store_root.mkdir(parents=True, exist_ok=True)
    stray = store_root / "stray"
    stray.write_bytes(b"z")
    aged(stray)

    locquota("audit")
    locquota("audit", "--fix")

    with Session(engine) as session:
        runs = session.scalars(select(AuditRun).order_by(AuditRun.id)).all()
    assert [(run.fixed, run.orphan, run.repaired) for run in runs] == [(False, 1, 0), (True, 1, 1)]
    assert all(run.finished_at is not None for run in runs)


def test_the_last_audit_is_exported_as_metrics(app, locquota, store_root):
    before = app.get("/metrics", status=200).text
    assert 'locquota_collector_up{collector="audit"} 1.0' in before
    assert "locquota_audit_last_run_timestamp_seconds 0.0" in before
    store_root.mkdir(parents=True, exist_ok=True)
    stray = store_root / "stray"
    stray.write_bytes(b"z")
    aged(stray)
    started = time.time()

    assert locquota("audit").exit_code == 1
    after = app.get("/metrics", status=200).text

    assert 'locquota_audit_findings{kind="orphan"} 1.0' in after
    assert 'locquota_audit_findings{kind="missing"} 0.0' in after
    [stamp] = [line for line in after.splitlines() if line.startswith("locquota_audit_last_run_timestamp_seconds ")]
    assert float(stamp.split()[1]) >= started - 1
