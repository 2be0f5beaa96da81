"""Interoperable image import (issue 16): staging, glance-direct, copy-image, tasks, as Glance 33 answers them.

Real file stores (fast, cheap, slow) and a real staging directory; tasks run on the app's own worker
threads, waited for through the registry. Glance's observed answers are in ../shared/GLANCE_COMPAT.md
("Multi-store, import and the locations API").
"""

import hashlib
import logging
import shutil
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import jsonschema
import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from locations import waiting_tasks_keeper
from locations.models import Image, ImageStatus, Task
from locations.reaping import reapers
from locations.services.image_import.workers import ImportWorkers
from locquota.cli import cli
from locquota.scripting import LazyApp
from quota.models import TenantUsage
from tests.conftest import identity, multi_store, write_ini
from tests.web_source_servers import DATA as WEB_DATA
from tests.web_source_servers import serve_fixture  # noqa: F401  (the `serve` fixture)

TENANT = identity("tenant-a")
OTHER = identity("tenant-b")
ADMIN = identity("operators", "admin")
IMAGE = {"name": "imported", "disk_format": "raw", "container_format": "bare"}
OCTET = {"Content-Type": "application/octet-stream"}
DATA = bytes(range(256)) * 40  # 10 240 bytes


def import_settings(settings: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    stores = {name: ("file", {"filesystem_store_datadir": str(tmp_path / name)}) for name in ("fast", "cheap", "slow")}
    return {
        **multi_store(settings, "fast", stores),
        "locquota.show_multiple_locations": "true",
        "locquota.node_staging_uri": f"file://{tmp_path / 'staging'}",
        **extra,
    }


@pytest.fixture
def api(make_app, settings, tmp_path):
    return make_app(import_settings(settings, tmp_path))


def audit_is_clean(settings: dict[str, str], tmp_path: Path) -> None:
    """`locquota audit` finds the stores, the staging area and the database in agreement (and reconcile no drift)."""
    ini = write_ini(tmp_path / "audit.ini", import_settings(settings, tmp_path))
    for command in (["audit", "--grace-seconds", "0"], ["reconcile"]):
        result = CliRunner().invoke(cli, ["--config", str(ini), *command])
        assert result.exit_code == 0, result.output


def files(tmp_path: Path, store: str) -> list[str]:
    root = tmp_path / store
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def dead_workers() -> ImportWorkers:
    """Import workers that never run what they are given: an API process that died before running its tasks."""
    return ImportWorkers(lambda _task, _holder: None, 1, keep_queued=lambda _ids, _holder: None, every_seconds=3600)


def wait_for_tasks(app) -> None:
    app.app.registry["locquota.import_workers"].wait(timeout=30)


def staged(app, data: bytes = DATA, headers=TENANT) -> str:
    image = app.post_json("/v2/images", IMAGE, headers=headers, status=201).json["id"]
    app.put(f"/v2/images/{image}/stage", data, headers={**headers, **OCTET}, status=204)
    return image


def test_import_info_lists_the_methods_served(api):
    info = api.get("/v2/info/import", headers=TENANT).json
    assert info["import-methods"]["value"] == ["glance-direct", "web-download", "copy-image"]


def test_staging_charges_image_stage_total_and_leaves_the_image_uploading(api, tmp_path, usage_of, settings):
    image = staged(api)

    shown = api.get(f"/v2/images/{image}", headers=TENANT).json
    assert (shown["status"], shown["size"], shown["checksum"]) == ("uploading", len(DATA), None)
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_stage_total"] == len(DATA)
    assert usage["totals"]["image_size_total"] == 0
    assert len(files(tmp_path, "staging")) == 1
    audit_is_clean(settings, tmp_path)  # staged data is known to the audit, and recounted exactly


def test_glance_direct_lands_in_the_stores_and_empties_staging(api, tmp_path, usage_of, settings):
    image = staged(api)

    api.post_json(
        f"/v2/images/{image}/import",
        {"method": {"name": "glance-direct"}, "stores": ["fast", "cheap"]},
        headers=TENANT,
        status=202,
    )
    wait_for_tasks(api)

    shown = api.get(f"/v2/images/{image}", headers=TENANT).json
    assert shown["status"] == "active"
    assert [location["metadata"]["store"] for location in shown["locations"]] == ["fast", "cheap"]
    assert (shown["os_glance_importing_to_stores"], shown["os_glance_failed_import"]) == ("", "")
    assert "os_glance_import_task" not in shown
    assert shown["size"] == len(DATA)
    assert files(tmp_path, "staging") == []
    assert files(tmp_path, "fast") == files(tmp_path, "cheap") == [image]
    usage = usage_of("tenant-a")
    assert usage["totals"]["image_stage_total"] == 0
    assert usage["totals"]["image_size_total"] == 2 * len(DATA)
    assert usage["totals"]["image_count_uploading"] == 0
    tasks = api.get(f"/v2/images/{image}/tasks", headers=TENANT).json["tasks"]
    assert [(task["status"], task["type"]) for task in tasks] == [("success", "api_image_import")]
    audit_is_clean(settings, tmp_path)


def import_to(app, image: str, body: dict, headers=TENANT, status: int = 202):
    return app.post_json(f"/v2/images/{image}/import", body, headers=headers, status=status)


def image_of(app, image: str, headers=TENANT) -> dict:
    return app.get(f"/v2/images/{image}", headers=headers).json


def tasks_of(app, image: str, headers=TENANT) -> list[dict]:
    return app.get(f"/v2/images/{image}/tasks", headers=headers).json["tasks"]


BIG = bytes(range(256)) * 2400  # 614 400 bytes: one copy fits a 1 MiB limit, two do not


@pytest.fixture
def small_quota_api(make_app, settings, tmp_path):
    return make_app(import_settings(settings, tmp_path, **{"locquota.quota.image_size_total": "1"}))


def test_a_copy_past_the_quota_fails_alone_when_not_all_must_succeed(small_quota_api, tmp_path, usage_of):
    api = small_quota_api
    image = staged(api, BIG)

    body = {"method": {"name": "glance-direct"}, "stores": ["fast", "cheap"], "all_stores_must_succeed": False}
    import_to(api, image, body)
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert (shown["status"], shown["stores"]) == ("active", "fast")
    assert shown["os_glance_failed_import"] == "cheap"
    assert files(tmp_path, "cheap") == files(tmp_path, "staging") == []
    assert usage_of("tenant-a")["totals"]["image_size_total"] == len(BIG)
    [task] = tasks_of(api, image)
    assert task["status"] == "success"
    assert "cheap: Quota exceeded for image_size_total" in task["message"]


def test_when_all_must_succeed_a_refused_copy_undoes_the_others(small_quota_api, tmp_path, usage_of, settings):
    api = small_quota_api
    image = staged(api, BIG)

    import_to(api, image, {"method": {"name": "glance-direct"}, "stores": ["fast", "cheap"]})
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert (shown["status"], shown["locations"], shown["size"]) == ("queued", [], None)
    assert shown["os_glance_failed_import"] == "cheap"
    assert files(tmp_path, "fast") == files(tmp_path, "cheap") == files(tmp_path, "staging") == []
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_size_total"], totals["image_stage_total"], totals["image_count_uploading"]) == (0, 0, 0)
    assert [task["status"] for task in tasks_of(api, image)] == ["failure"]
    audit_is_clean(settings, tmp_path)


def active_in(app, store: str = "fast") -> str:
    image = app.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    app.put(f"/v2/images/{image}/file", DATA, headers={**TENANT, **OCTET, "X-Image-Meta-Store": store}, status=204)
    return image


def test_copy_image_adds_a_location_per_store_charged_to_the_owner(api, tmp_path, usage_of, settings):
    image = active_in(api)

    import_to(api, image, {"method": {"name": "copy-image"}, "stores": ["cheap", "slow"]}, headers=ADMIN)
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert [location["metadata"]["store"] for location in shown["locations"]] == ["fast", "cheap", "slow"]
    assert (shown["status"], shown["os_glance_importing_to_stores"]) == ("active", "")
    assert files(tmp_path, "slow") == [image]
    assert (tmp_path / "slow" / image).read_bytes() == DATA
    assert usage_of("tenant-a")["totals"]["image_size_total"] == 3 * len(DATA)
    assert usage_of("operators")["totals"]["image_size_total"] == 0
    assert tasks_of(api, image, ADMIN)[0]["owner"] == "operators"
    assert tasks_of(api, image, TENANT) == []  # Glance shows a task to the project that started it
    audit_is_clean(settings, tmp_path)


def test_copy_image_to_all_stores_skips_those_it_is_in(api, tmp_path):
    image = active_in(api, "cheap")

    import_to(api, image, {"method": {"name": "copy-image"}, "all_stores": True}, headers=ADMIN)
    wait_for_tasks(api)

    assert image_of(api, image)["stores"] == "cheap,fast,slow"
    import_to(api, image, {"method": {"name": "copy-image"}, "all_stores": True}, headers=ADMIN)  # nothing left
    wait_for_tasks(api)
    assert len(tasks_of(api, image, ADMIN)) == 1


def test_deleting_a_staged_image_releases_its_staging(api, tmp_path, usage_of):
    image = staged(api)

    api.delete(f"/v2/images/{image}", headers=TENANT, status=204)

    assert files(tmp_path, "staging") == []
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_stage_total"], totals["image_size_total"], totals["image_count_uploading"]) == (0, 0, 0)


COPY = {"method": {"name": "copy-image"}, "stores": ["cheap"]}
DIRECT = {"method": {"name": "glance-direct"}}


@pytest.mark.parametrize(
    ("body", "caller", "status", "code"),
    [
        ([DIRECT], TENANT, 400, "invalid_body"),  # Glance: 500
        ({"method": "glance-direct"}, TENANT, 400, "invalid_body"),  # Glance: 500
        ({"method": {}}, TENANT, 400, "invalid_body"),
        ({"method": {"name": "telepathy"}}, TENANT, 400, "invalid_body"),
        ({**DIRECT, "all_stores_must_succeed": "yes"}, TENANT, 400, "invalid_body"),
        ({**COPY, "all_stores": True}, ADMIN, 400, "invalid_body"),
        ({**COPY, "stores": []}, ADMIN, 400, "invalid_body"),
        ({**COPY, "stores": ["fast"]}, ADMIN, 400, "invalid_body"),  # already there
        ({**COPY, "stores": ["nowhere"]}, ADMIN, 409, "store_not_enabled"),
        (COPY, TENANT, 403, "forbidden"),  # copy-image is admin-only
        (COPY, OTHER, 404, "image_not_found"),
        (DIRECT, TENANT, 409, "invalid_image_status"),  # an active image
        ({"method": {"name": "web-download", "uri": "http://example.com/x"}}, TENANT, 409, "invalid_image_status"),
    ],
)
def test_refused_imports_change_nothing(api, usage_of, body, caller, status, code):
    image = active_in(api)
    before = usage_of("tenant-a")

    refused = import_to(api, image, body, headers=caller, status=status)

    assert refused.json["error"]["code"] == code
    assert usage_of("tenant-a") == before
    shown = image_of(api, image)
    assert (shown["status"], shown["stores"]) == ("active", "fast")
    assert "os_glance_import_task" not in shown
    assert tasks_of(api, image, ADMIN) == []


@pytest.mark.parametrize(
    "uri",
    ["file:///etc/passwd", "http://127.0.0.1/x", "http://localhost/x", "http://[::1]/x", "http://10.0.0.1/x",
     "http://169.254.169.254/latest/meta-data", "ftp://example.com/x", "not a url", "", "http://example.com:22/x"],
)  # fmt: skip
def test_web_download_to_a_forbidden_place_is_refused_before_any_task(api, usage_of, uri):
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    refused = import_to(api, image, {"method": {"name": "web-download", "uri": uri}}, status=400)

    assert refused.json["error"]["code"] in {"web_download_refused", "invalid_body"}
    assert image_of(api, image)["status"] == "queued"
    assert tasks_of(api, image) == []
    assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 0


def test_glance_direct_without_staged_data_is_a_conflict(api):
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    assert import_to(api, image, DIRECT, status=409).json["error"]["code"] == "invalid_image_status"


@pytest.mark.parametrize(
    ("setup", "headers", "status"),
    [
        ("queued", {**TENANT, "Content-Type": "application/json"}, 415),
        ("queued", {**OTHER, **OCTET}, 404),
        ("staged", {**TENANT, **OCTET}, 409),  # twice
        ("active", {**TENANT, **OCTET}, 409),
    ],
)
def test_stage_refusals(api, tmp_path, usage_of, setup, headers, status):
    if setup == "staged":
        image = staged(api)
    elif setup == "active":
        image = active_in(api)
    else:
        image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    before, staging = usage_of("tenant-a"), files(tmp_path, "staging")

    api.put(f"/v2/images/{image}/stage", DATA, headers=headers, status=status)

    assert usage_of("tenant-a") == before
    assert files(tmp_path, "staging") == staging


def test_uploading_to_a_staged_image_is_a_conflict(api):
    image = staged(api)
    api.put(f"/v2/images/{image}/file", DATA, headers={**TENANT, **OCTET}, status=409)
    assert image_of(api, image)["status"] == "uploading"


def test_staging_past_image_stage_total_leaves_nothing(make_app, settings, tmp_path, usage_of):
    api = make_app(import_settings(settings, tmp_path, **{"locquota.quota.image_stage_total": "0"}))
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    refused = api.put(f"/v2/images/{image}/stage", DATA, headers={**TENANT, **OCTET}, status=413)

    assert refused.json["error"]["details"]["resource"] == "image_stage_total"
    assert image_of(api, image)["status"] == "queued"
    assert files(tmp_path, "staging") == []
    assert usage_of("tenant-a")["totals"]["image_stage_total"] == 0


def test_an_import_whose_worker_died_is_ended_by_the_reaper(api, tmp_path, settings, usage_of):
    registry = api.app.registry
    registry["locquota.import_workers"] = dead_workers()  # dies before it runs
    image = staged(api)
    import_to(api, image, {"method": {"name": "glance-direct"}, "stores": ["fast", "cheap"]})
    assert image_of(api, image)["status"] == "importing"

    # The CLI's clock is the real one: the frozen test clock's lease ran out long ago.
    ini = write_ini(tmp_path / "reap.ini", import_settings(settings, tmp_path))
    reaped = CliRunner().invoke(cli, ["--config", str(ini), "reap"])

    assert reaped.exit_code == 0, reaped.output
    assert "ended 1 import tasks" in reaped.output
    shown = image_of(api, image)
    assert (shown["status"], shown["os_glance_failed_import"], shown["os_glance_importing_to_stores"]) == (
        "queued",
        "fast,cheap",
        "",
    )
    assert "os_glance_import_task" not in shown
    [task] = tasks_of(api, image)
    assert task["status"] == "failure"
    assert "lease ran out" in task["message"]
    assert files(tmp_path, "staging") == files(tmp_path, "fast") == []
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_stage_total"], totals["image_count_uploading"], totals["image_size_total"]) == (0, 0, 0)
    again = CliRunner().invoke(cli, ["--config", str(ini), "reap"])
    assert "no upload or import lease has run out" in again.output
    audit_is_clean(settings, tmp_path)


def test_a_reap_pass_that_ended_something_says_what_at_info(api, tmp_path, settings, caplog):
    api.app.registry["locquota.import_workers"] = dead_workers()  # dies before it runs
    import_to(api, staged(api), {"method": {"name": "glance-direct"}, "stores": ["fast", "cheap"]})
    ini = write_ini(tmp_path / "reap.ini", import_settings(settings, tmp_path))

    with caplog.at_level(logging.INFO, logger="locations.services.image_import.reaper"):
        ended = reapers(LazyApp(str(ini))).run_once()  # the real clock: the frozen clock's lease ran out long ago
        idle = reapers(LazyApp(str(ini))).run_once()

    assert (ended.uploads, ended.imports, idle.imports) == (0, 1, 0)
    summaries = [record.getMessage() for record in caplog.records if record.getMessage().startswith("reap pass")]
    # One line for the pass that ended something, none for the idle one.
    assert summaries == [f"reap pass: 0 uploads and 1 import tasks ended, {ended.locations} pieces of data to scrub"]


def test_an_image_being_imported_cannot_lose_a_store_nor_start_a_second_import(api):
    api.app.registry["locquota.import_workers"] = dead_workers()  # never runs
    image = staged(api)
    import_to(api, image, {"method": {"name": "glance-direct"}, "stores": ["fast", "cheap"]})

    assert api.delete(f"/v2/stores/fast/{image}", headers=ADMIN, status=409).json["error"]["code"] == (
        "invalid_image_status"
    )
    again = import_to(api, image, {"method": {"name": "glance-direct"}}, status=409)
    assert again.json["error"]["code"] == "invalid_image_status"  # importing, no longer uploading


def test_a_second_copy_while_one_is_in_flight_is_a_conflict(api):
    image = active_in(api)
    api.app.registry["locquota.import_workers"] = dead_workers()  # never runs
    import_to(api, image, {"method": {"name": "copy-image"}, "stores": ["cheap"]}, headers=ADMIN)

    again = import_to(api, image, {"method": {"name": "copy-image"}, "stores": ["slow"]}, headers=ADMIN, status=409)

    assert again.json["error"]["code"] == "import_in_progress"
    assert len(tasks_of(api, image, ADMIN)) == 1


@pytest.fixture
def web_api(make_app, settings, tmp_path, serve):
    server = serve()
    allowed = {"locquota.import_allowed_hosts": "127.0.0.1", "locquota.import_allowed_ports": str(server.server_port)}
    return make_app(import_settings(settings, tmp_path, **allowed)), server


def test_web_download_lands_the_served_bytes(web_api, tmp_path, usage_of):
    api, server = web_api
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    import_to(api, image, {"method": {"name": "web-download", "uri": f"{server.base}/image"}, "stores": ["cheap"]})
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert (shown["status"], shown["stores"], shown["size"]) == ("active", "cheap", len(WEB_DATA))
    assert (tmp_path / "cheap" / image).read_bytes() == WEB_DATA
    assert shown["checksum"] == hashlib.md5(WEB_DATA, usedforsecurity=False).hexdigest()
    assert files(tmp_path, "staging") == []
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_size_total"], totals["image_stage_total"]) == (len(WEB_DATA), 0)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/status/404", "404"),
        ("/short", ""),
        ("/loop", "redirect"),
        ("/huge-declared", ""),
    ],
)
def test_a_failed_web_download_fails_its_task_and_leaves_nothing(web_api, tmp_path, usage_of, path, reason):
    api, server = web_api
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    import_to(api, image, {"method": {"name": "web-download", "uri": f"{server.base}{path}"}})
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert (shown["status"], shown["os_glance_failed_import"], shown["os_glance_importing_to_stores"]) == (
        "queued",
        "fast",
        "",
    )
    [task] = tasks_of(api, image)
    assert task["status"] == "failure"
    assert reason in task["message"]
    assert files(tmp_path, "staging") == files(tmp_path, "fast") == []
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_size_total"], totals["image_stage_total"], totals["image_count_uploading"]) == (0, 0, 0)


def test_a_redirect_to_a_forbidden_host_fails_the_task_before_connecting(web_api, serve, tmp_path):
    api, server = web_api
    elsewhere = serve()  # its port is not allowed
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    target = f"{server.base}/to?{quote(elsewhere.base + '/image', safe='')}"
    before = elsewhere.quiet_point()

    import_to(api, image, {"method": {"name": "web-download", "uri": target}})
    wait_for_tasks(api)

    assert elsewhere.quiet_point() == before + 1  # only its own probe: the import never connected
    assert image_of(api, image)["status"] == "queued"
    assert tasks_of(api, image)[0]["status"] == "failure"
    assert files(tmp_path, "staging") == []


def test_a_web_download_past_image_stage_total_fails_and_charges_nothing(make_app, settings, tmp_path, serve, usage_of):
    server = serve()
    allowed = {
        "locquota.import_allowed_hosts": "127.0.0.1",
        "locquota.import_allowed_ports": str(server.server_port),
        "locquota.quota.image_stage_total": "0",
    }
    api = make_app(import_settings(settings, tmp_path, **allowed))
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]

    import_to(api, image, {"method": {"name": "web-download", "uri": f"{server.base}/image"}})
    wait_for_tasks(api)

    assert image_of(api, image)["status"] == "queued"
    assert files(tmp_path, "staging") == []
    assert usage_of("tenant-a")["totals"]["image_stage_total"] == 0


def test_creating_an_image_says_how_it_may_be_imported_and_where(api, app):
    created = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201)
    assert created.headers["OpenStack-image-import-methods"] == "glance-direct,web-download,copy-image"
    assert created.headers["OpenStack-image-store-ids"] == "fast,cheap,slow"
    single = app.post_json("/v2/images", IMAGE, headers=TENANT, status=201)  # one store, no staging area
    assert "OpenStack-image-import-methods" not in single.headers
    assert "OpenStack-image-store-ids" not in single.headers


def test_a_task_waiting_for_a_thread_keeps_its_lease(api, clock, engine):
    registry = api.app.registry
    gate = threading.Event()
    busy = ImportWorkers(
        lambda _task, _holder: gate.wait(30), 1, keep_queued=waiting_tasks_keeper(registry), every_seconds=0.05
    )
    registry["locquota.import_workers"] = busy
    first, second = active_in(api), active_in(api)
    import_to(api, first, {"method": {"name": "copy-image"}, "stores": ["cheap"]}, headers=ADMIN)
    import_to(api, second, {"method": {"name": "copy-image"}, "stores": ["cheap"]}, headers=ADMIN)
    clock.advance(seconds=200)  # past half of the second task's lease, which waits behind the first
    try:

        def second_lease() -> object:
            with Session(engine) as session:
                return session.scalar(select(Task.lease_expires_at).where(Task.image_id == uuid.UUID(second)))

        deadline = time.monotonic() + 20
        while second_lease() != clock.now() + timedelta(seconds=300):
            assert time.monotonic() < deadline, "the waiting task's lease was never renewed"
            time.sleep(0.05)  # polling an observed condition
    finally:
        gate.set()
        busy.wait(timeout=30)


def test_a_task_is_shown_to_admins_as_its_schema_says_until_it_expires(api, clock, tmp_path, settings, engine):
    image = active_in(api)
    import_to(api, image, {"method": {"name": "copy-image"}, "stores": ["cheap"]}, headers=ADMIN)
    wait_for_tasks(api)
    [listed] = tasks_of(api, image, ADMIN)

    shown = api.get(f"/v2/tasks/{listed['id']}", headers=ADMIN).json
    jsonschema.validate(shown, api.get("/v2/schemas/task", headers=ADMIN).json)
    jsonschema.validate({"tasks": [listed]}, api.get("/v2/schemas/tasks", headers=ADMIN).json)
    assert (shown["status"], shown["result"], shown["input"]["backend"]) == ("success", {"image_id": image}, ["cheap"])
    api.get(f"/v2/tasks/{listed['id']}", headers=TENANT, status=403)  # tasks_api_access: admins
    api.get("/v2/tasks/not-a-uuid", headers=ADMIN, status=404)
    clock.advance(seconds=49 * 3600)  # past Glance's 48 h task_time_to_live
    api.get(f"/v2/tasks/{listed['id']}", headers=ADMIN, status=404)
    assert tasks_of(api, image, ADMIN) == []
    ini = write_ini(tmp_path / "purge.ini", import_settings(settings, tmp_path))
    purged = CliRunner().invoke(cli, ["--config", str(ini), "purge", "--older-than", "30"])
    assert purged.exit_code == 0, purged.output
    assert "1 expired import task rows" in purged.output
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0


@pytest.mark.parametrize("must_succeed", [False, True])
def test_one_read_feeds_every_copy_and_a_broken_store_fails_alone(api, tmp_path, usage_of, settings, must_succeed):
    image = active_in(api)
    shutil.rmtree(tmp_path / "slow")
    (tmp_path / "slow").write_text("not a directory: every write into this store fails")

    body = {"method": {"name": "copy-image"}, "stores": ["cheap", "slow"], "all_stores_must_succeed": must_succeed}
    import_to(api, image, body, headers=ADMIN)
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert shown["os_glance_failed_import"] == "slow"
    expected_stores = "fast" if must_succeed else "fast,cheap"
    assert (shown["status"], shown["stores"]) == ("active", expected_stores)
    assert files(tmp_path, "cheap") == ([] if must_succeed else [image])
    copies = 1 if must_succeed else 2
    assert usage_of("tenant-a")["totals"]["image_size_total"] == copies * len(DATA)
    [task] = tasks_of(api, image, ADMIN)
    assert task["status"] == ("failure" if must_succeed else "success")
    assert task["message"].startswith("slow: ")


def test_a_source_whose_bytes_changed_fails_every_copy_and_leaves_nothing(api, tmp_path, usage_of, settings):
    image = active_in(api)
    with open(tmp_path / "fast" / image, "r+b") as stored:  # same file, same size, other bytes: bit rot
        stored.write(b"\xff" * 100)
    before = usage_of("tenant-a")

    body = {"method": {"name": "copy-image"}, "stores": ["cheap", "slow"], "all_stores_must_succeed": False}
    import_to(api, image, body, headers=ADMIN)
    wait_for_tasks(api)

    shown = image_of(api, image)
    assert (shown["stores"], shown["os_glance_failed_import"]) == ("fast", "cheap,slow")
    assert files(tmp_path, "cheap") == files(tmp_path, "slow") == []
    assert usage_of("tenant-a") == before
    assert "do not match the image's checksum" in tasks_of(api, image, ADMIN)[0]["message"]


def audit(settings: dict[str, str], tmp_path: Path, *args: str):
    ini = write_ini(tmp_path / "audit.ini", import_settings(settings, tmp_path))
    return CliRunner().invoke(cli, ["--config", str(ini), "audit", "--grace-seconds", "0", *args])


def test_an_image_stuck_importing_without_a_task_is_found_and_ended_by_audit_fix(
    api, tmp_path, settings, engine, usage_of
):
    api.app.registry["locquota.import_workers"] = dead_workers()
    image = staged(api)
    import_to(api, image, {"method": {"name": "glance-direct"}})
    with Session(engine) as session, session.begin():  # the task row lost (a bug, a hand-edited database)
        session.execute(delete(Task).where(Task.image_id == uuid.UUID(image)))

    found = audit(settings, tmp_path)
    assert found.exit_code == 1, found.output
    assert "in importing without an import task" in found.output

    fixed = audit(settings, tmp_path, "--fix")
    assert fixed.exit_code == 1, fixed.output  # it reports what it found, and what it repaired
    assert (image_of(api, image)["status"], files(tmp_path, "staging")) == ("queued", [])
    totals = usage_of("tenant-a")["totals"]
    assert (totals["image_stage_total"], totals["image_count_uploading"]) == (0, 0)
    audit_is_clean(settings, tmp_path)


def test_an_image_uploading_with_neither_a_lease_nor_staged_data_is_stuck(api, tmp_path, settings, engine, usage_of):
    image = api.post_json("/v2/images", IMAGE, headers=TENANT, status=201).json["id"]
    with Session(engine) as session, session.begin():  # as if its stage request's lease row were lost
        session.execute(update(Image).where(Image.id == uuid.UUID(image)).values(status=ImageStatus.UPLOADING))
        session.execute(update(TenantUsage).values(image_count_uploading=1))

    assert "in uploading without an upload lease" in audit(settings, tmp_path).output
    audit(settings, tmp_path, "--fix")

    assert image_of(api, image)["status"] == "queued"
    assert usage_of("tenant-a")["totals"]["image_count_uploading"] == 0
    audit_is_clean(settings, tmp_path)


@pytest.mark.parametrize("where", ["inside", "around"])
def test_a_staging_directory_overlapping_a_store_refuses_to_start(build_wsgi_app, settings, tmp_path, where):
    """Staged data is no location: inside a store's root, another tenant could add it as a location of its own."""
    staging = tmp_path / "fast" / "staging" if where == "inside" else tmp_path
    overlapping = {**import_settings(settings, tmp_path), "locquota.node_staging_uri": f"file://{staging}"}
    with pytest.raises(ValueError, match="node_staging_uri: the staging directory and store 'fast'"):
        build_wsgi_app(overlapping)
