"""`locquota import-glance` on the Glance 33.0.0 fixtures (../shared/fixtures/glance), through click's CliRunner.

Every location of glance-33.expected.json is checked, on the SQLite file, the pre-Juno variant, and the same
data loaded into a PostgreSQL and a MariaDB that the suite starts itself; each import lands in both locquota
databases the suite uses (PostgreSQL and SQLite). Hostile data is made by copying the SQLite fixture and
corrupting rows. The fixtures' README lists what real Glance writes; docs/import.md the decisions tested here.
"""

# The SQL built with f-strings below corrupts a copy of a fixture, with this module's own constants.
# ruff: noqa: S608

import json
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest
from alembic import command
from click.testing import CliRunner, Result
from pymysql.constants import CLIENT
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session

from locations.models import Image, ImageProperty, ImageTag, Location, LocationStatus
from locations.services.glance_import import Finding, mask_url
from locations.services.recount import recount
from locquota.cli import cli
from locquota.db import alembic_config, make_engine
from quota.models import StoreUsage, TenantUsage, UsageDrift
from tests.conftest import write_ini
from tests.servers import mariadb_server

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "glance"
JUNO, PRE_JUNO = "glance-33.sqlite", "glance-pre-juno.sqlite"
GLANCE_TO_LOCQUOTA_IMAGE_STATUS = {
    "queued": "queued",
    "saving": "queued",  # the upload died with Glance; locquota takes a new upload of a queued image
    "uploading": "queued",  # staged data is in Glance's staging area, not a store
    "active": "active",
    "deactivated": "deactivated",  # its data is there, and it stays deactivated
    "pending_delete": "pending_delete",
    "killed": "killed",
    "deleted": "deleted",
}
P1, P2, P3 = "cd613e30d8f14adf91b7584a2265b1f5", "1e2feb89414c443c9027c4d1c386bbc4", "78e51061731148a382ce6f447ed4d57b"
ACTIVE_1LOC_018 = "cee9a4fd-725a-4a5b-b6a0-7500ae9c8563"  # P1, active, 147571 B, fs location #23
ACTIVE_2LOC_006 = "721754ef-2904-4cec-b5bb-9188b80599e9"  # P1, active, 132041 B, #12 fs and #13 web
ACTIVE_1LOC_024 = "9b0a6817-f91c-45fd-a0a5-951807e30f11"  # P1, active, 249 B, fs location #27
ACTIVE_2LOC_037 = "340e8462-eb2c-49d4-8f07-8f6c26a89353"  # P1, active, one live property: hw_disk_bus=scsi
SCRUB_TIME_SECONDS = 3600


@pytest.fixture(scope="session")
def expected() -> dict[str, object]:
    path = FIXTURES / "glance-33.expected.json"
    assert path.exists(), f"the Glance fixtures are expected at {FIXTURES} (../shared beside the repository)"
    return json.loads(path.read_text())


def expected_location_statuses(expected: dict[str, object], *, pre_juno: bool) -> dict[int, str]:
    """Glance location id -> locquota status: the README's table, with the two decisions docs/import.md makes.

    - the restored image (glance-scrubber --restore left its locations pending_delete under an active image):
      its locations are made active again, as the operator meant;
    - pre-Juno, a location soft-deleted under a live image (the README's ², "the SPEC does not decide"):
      pending_delete, not active (it may hold data, Glance no longer served it; it counts either way).
    """
    statuses: dict[int, str] = {}
    restored, removed = set(), set()
    for image in expected["images"]:
        for location in image["locations"]:
            statuses[location["location_id"]] = location["expected_pre_juno" if pre_juno else "expected"]
            if image["kind"] == "restored":
                restored.add(location["location_id"])
            elif pre_juno and location["deleted"] and not image["deleted"]:
                removed.add(location["location_id"])
    assert restored == {5, 6}
    assert removed == (({10, 26, 45}) if pre_juno else set())
    statuses.update(dict.fromkeys(restored, "active"))
    statuses.update(dict.fromkeys(removed, "pending_delete"))
    return statuses


@pytest.fixture
def ini(settings: dict[str, str], tmp_path: Path) -> Path:
    return write_ini(tmp_path / "locquota.ini", {**settings, "locquota.scrub_time": str(SCRUB_TIME_SECONDS)})


@pytest.fixture
def target(database_url: str) -> Iterator[Engine]:
    """The locquota database the import writes to, to check what it committed."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def run_import(ini: Path):
    def invoke(url: str, *args: str, exit_code: int = 0) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(ini), "import-glance", url, *args])
        assert result.exit_code == exit_code, (result.output, result.exception)
        return result

    return invoke


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def glance_copy(tmp_path: Path, *statements: str, name: str = JUNO) -> Path:
    """A writable copy of a fixture with statements applied (how hostile rows are made)."""
    path = tmp_path / f"copy-of-{name}"
    shutil.copyfile(FIXTURES / name, path)
    with closing(sqlite3.connect(path)) as connection, connection:
        for statement in statements:
            connection.execute(statement)
    return path


def findings(result: Result) -> dict[str, int]:
    """The summary's finding lines: text -> count."""
    return {match[2]: int(match[1]) for match in re.finditer(r"^(\d+)\t(.+)$", result.stdout, re.MULTILINE)}


def summary_line(result: Result, key: str) -> str:
    [line] = [line for line in result.stdout.splitlines() if line.startswith(key + "\t")]
    return line.split("\t", 1)[1]


def location_statuses(engine: Engine) -> dict[int, str]:
    with Session(engine) as session:
        rows = session.execute(select(Location.glance_location_id, Location.status)).all()
    return {glance_id: status.value for glance_id, status in rows}


def usage(engine: Engine) -> dict[str, dict[str, int]]:
    with Session(engine) as session:
        return {
            row.tenant_id: {"image_count_total": row.image_count_total, "image_size_total": row.image_size_total}
            for row in session.scalars(select(TenantUsage))
        }


def equals_recount(engine: Engine, tenant_id: str) -> bool:
    """The stored totals and the store split are what a recount of the tables gives."""
    with Session(engine) as session:
        [actual] = recount(session, [tenant_id])
        row = session.get(TenantUsage, tenant_id)
        spaces = session.scalars(select(StoreUsage).where(StoreUsage.tenant_id == tenant_id)).all()
        stored_space = {(s.store, s.state): (s.size_bytes, s.locations) for s in spaces if s.size_bytes or s.locations}
        real_space = {(store, state.value): (v.size_bytes, v.locations) for (store, state), v in actual.space.items()}
        stored = {resource: getattr(row, resource.value) for resource in actual.totals}
        return stored == actual.totals and stored_space == real_space


def snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row the import writes, ids included, in a stable order."""
    with Session(engine) as session:
        return {
            name: sorted(tuple(row) for row in session.execute(text(f"SELECT * FROM {name}")))
            for name in ("images", "image_properties", "image_tags", "locations", "tenant_usage", "store_usage")
        }


def assert_mapping(engine: Engine, expected: dict[str, object], *, pre_juno: bool) -> None:
    """Every image and location of the expected JSON, and the usage of every project."""
    assert location_statuses(engine) == expected_location_statuses(expected, pre_juno=pre_juno)
    with Session(engine) as session:
        images = {row.id: row for row in session.execute(select(Image.id, Image.owner, Image.status, Image.size))}
        per_image = dict(session.execute(select(Location.image_id, func.count()).group_by(Location.image_id)).all())
    assert len(images) == len(expected["images"]) == 39
    for image in expected["images"]:
        row = images[uuid.UUID(image["id"])]
        assert (row.owner, row.status.value, row.size) == (
            image["project"],
            GLANCE_TO_LOCQUOTA_IMAGE_STATUS[image["status"]],
            image["size"],
        ), image["name"]
        assert per_image.get(row.id, 0) == len(image["locations"]), image["name"]
    assert usage(engine) == expected["usage_pre_juno" if pre_juno else "usage"]
    assert all(equals_recount(engine, project) for project in expected["projects"])


# --- the mapping, on every backend ------------------------------------------------------------------------------------


def test_import_maps_every_location_and_project_of_the_fixture(run_import, target, expected):
    result = run_import(sqlite_url(FIXTURES / JUNO))
    assert_mapping(target, expected, pre_juno=False)
    assert summary_line(result, "images") == "39 read, 39 imported (39 new, 0 updated, 0 unchanged), 0 skipped"
    assert summary_line(result, "locations by status") == "active 29, deleted 6, pending_delete 10"


def test_pre_juno_location_statuses_come_from_the_image_status(run_import, target, expected):
    result = run_import(sqlite_url(FIXTURES / PRE_JUNO))
    assert_mapping(target, expected, pre_juno=True)
    assert summary_line(result, "schema").startswith("no image_locations.status (pre-Juno)")
    assert findings(result)[Finding.PRE_JUNO_REMOVED.value] == 3


def test_usage_lines_give_every_project(run_import, expected):
    result = run_import(sqlite_url(FIXTURES / JUNO))
    lines = re.findall(r"^usage\t(\w+)\timage_size_total (\d+)\timage_count_total (\d+)$", result.stdout, re.MULTILINE)
    assert {
        tenant: {"image_size_total": int(size), "image_count_total": int(count)} for tenant, size, count in lines
    } == (expected["usage"])


def test_a_second_import_changes_nothing(run_import, target):
    run_import(sqlite_url(FIXTURES / JUNO))
    before = snapshot(target)
    result = run_import(sqlite_url(FIXTURES / JUNO))
    assert snapshot(target) == before
    assert summary_line(result, "images") == "39 read, 39 imported (0 new, 0 updated, 39 unchanged), 0 skipped"
    assert "45 imported (0 new, 0 updated, 45 unchanged)" in summary_line(result, "locations")


def test_the_import_records_no_drift(run_import, target):
    run_import(sqlite_url(FIXTURES / JUNO))
    with Session(target) as session:
        assert session.scalars(select(UsageDrift)).all() == []


def test_dry_run_reports_and_writes_nothing(run_import, target, expected):
    result = run_import(sqlite_url(FIXTURES / JUNO), "--dry-run")
    assert all(rows == [] for rows in snapshot(target).values())
    assert summary_line(result, "images") == "39 read, 39 would be imported (39 new, 0 updated, 0 unchanged), 0 skipped"
    lines = re.findall(r"^usage from Glance's rows \(dry run\)\t(\w+)\timage_size_total (\d+)\t", result.stdout, re.M)
    assert {tenant: int(size) for tenant, size in lines} == {
        p: u["image_size_total"] for p, u in expected["usage"].items()
    }


def test_only_live_properties_and_tags_are_imported(run_import, target):
    run_import(sqlite_url(FIXTURES / JUNO))
    with closing(sqlite3.connect(FIXTURES / JUNO)) as glance:
        live_properties = set(glance.execute("SELECT image_id, name, value FROM image_properties WHERE deleted = 0"))
        live_tags = set(glance.execute("SELECT image_id, value FROM image_tags WHERE deleted = 0"))
    with Session(target) as session:
        properties = {
            (str(i), n, v)
            for i, n, v in session.execute(select(ImageProperty.image_id, ImageProperty.name, ImageProperty.value))
        }
        tags = {(str(i), v) for i, v in session.execute(select(ImageTag.image_id, ImageTag.value))}
    assert (properties, tags) == (live_properties, live_tags)
    assert len(properties) == 24
    assert len(tags) == 37


def test_pending_delete_locations_are_due_scrub_time_after_glance_deleted_them(run_import, target):
    run_import(sqlite_url(FIXTURES / JUNO))
    with closing(sqlite3.connect(FIXTURES / JUNO)) as glance:
        [deleted_at] = glance.execute("SELECT deleted_at FROM image_locations WHERE id = 7").fetchone()
    with Session(target) as session:
        location = session.scalars(select(Location).where(Location.glance_location_id == 7)).one()
        assert str(location.pending_since) == deleted_at
        assert (location.scrub_after - location.pending_since).total_seconds() == SCRUB_TIME_SECONDS
        assert (location.attempts, location.store) == (0, "glance:fs")


# --- stores and re-runs -------------------------------------------------------------------------------------------


def test_locations_inside_a_configured_store_are_assigned_to_it(run_import, target, store_root, tmp_path):
    store_root.mkdir(parents=True, exist_ok=True)
    moved = glance_copy(
        tmp_path,
        f"UPDATE image_locations SET value = replace(value, 'file:///var/lib/glance/images/', 'file://{store_root}/')",
    )
    result = run_import(sqlite_url(moved))
    assert Finding.OUTSIDE_STORE.value not in findings(result)
    assert findings(result)[Finding.SCHEME_NOT_ENABLED.value] == 20  # the http (web) ones
    with Session(target) as session:
        stores = dict(session.execute(select(Location.store, func.count()).group_by(Location.store)).all())
    assert stores == {"file": 25, "glance:web": 20}


def test_two_spellings_of_one_file_in_one_image_are_imported_once_and_keyed_alike(
    run_import, target, store_root, tmp_path
):
    """Inside a configured store, locations are keyed by their data: a second spelling is a duplicate, not a copy."""
    store_root.mkdir(parents=True, exist_ok=True)
    moved = glance_copy(
        tmp_path,
        f"UPDATE image_locations SET value = replace(value, 'file:///var/lib/glance/images/', 'file://{store_root}/')",
        "INSERT INTO image_locations (id, image_id, value, created_at, deleted, meta_data, status)"
        " SELECT 100, image_id, replace(value, 'file:///', 'file://localhost/./'), created_at, deleted, meta_data,"
        " status FROM image_locations WHERE id = 23",
    )
    with closing(sqlite3.connect(moved)) as connection:
        urls = [url for (url,) in connection.execute("SELECT value FROM image_locations")]
    for path in {urlsplit(url).path for url in urls}:
        if path.startswith(str(store_root)):
            Path(path).write_bytes(b"data")

    result = run_import(sqlite_url(moved))

    assert findings(result)[Finding.LOCATION_DUPLICATE.value] == 1
    with Session(target) as session:
        rows = session.execute(select(Location.glance_location_id, Location.data_key_hash, Location.data_inode)).all()
    by_glance_id = {glance_id: (key_hash, inode) for glance_id, key_hash, inode in rows}
    assert 100 not in by_glance_id
    assert by_glance_id[23][1] is not None  # keyed by the file, found on disk


def test_a_rerun_updates_what_changed_in_glance_and_doubles_nothing(run_import, target, tmp_path):
    glance = glance_copy(tmp_path)
    run_import(sqlite_url(glance))
    with closing(sqlite3.connect(glance)) as connection, connection:
        # Deleted in Glance (delayed_delete) between the runs, a property changed, a tag removed, a copy added.
        connection.execute(
            f"UPDATE images SET status = 'pending_delete', deleted = 1, deleted_at = '2026-11-26 10:00:00'"
            f" WHERE id = '{ACTIVE_1LOC_018}'"
        )
        connection.execute(
            "UPDATE image_locations SET status = 'pending_delete', deleted = 1, deleted_at = '2026-11-26 10:00:00'"
            " WHERE id = 23"
        )
        connection.execute(f"UPDATE image_properties SET value = 'ide' WHERE image_id = '{ACTIVE_2LOC_037}'")
        connection.execute(f"UPDATE image_tags SET deleted = 1 WHERE image_id = '{ACTIVE_2LOC_006}'")
        connection.execute(
            "INSERT INTO image_locations (id, image_id, value, created_at, deleted, meta_data, status) VALUES"
            f" (46, '{ACTIVE_1LOC_024}', 'http://127.0.0.1:9495/blob/{ACTIVE_1LOC_024}/0', '2026-11-26 10:00:00', 0,"
            " '{\"store\": \"web\"}', 'active')"
        )
    result = run_import(sqlite_url(glance))
    assert summary_line(result, "images") == "39 read, 39 imported (0 new, 4 updated, 35 unchanged), 0 skipped"
    assert "46 imported (1 new, 1 updated, 44 unchanged)" in summary_line(result, "locations")
    statuses = location_statuses(target)
    assert (statuses[23], statuses[46], len(statuses)) == ("pending_delete", "active", 46)
    with Session(target) as session:
        assert session.get(Image, uuid.UUID(ACTIVE_1LOC_018)).status.value == "pending_delete"
        assert session.scalars(select(ImageTag).where(ImageTag.image_id == uuid.UUID(ACTIVE_2LOC_006))).all() == []
        properties = session.execute(
            select(ImageProperty.name, ImageProperty.value).where(ImageProperty.image_id == uuid.UUID(ACTIVE_2LOC_037))
        )
        assert properties.all() == [("hw_disk_bus", "ide")]
        location = session.scalars(select(Location).where(Location.glance_location_id == 23)).one()
        assert str(location.scrub_after) == "2026-11-26 11:00:00"
    assert usage(target)[P1] == {"image_count_total": 13, "image_size_total": 499242 + 249}  # pending still counts
    assert equals_recount(target, P1)


def test_a_location_deleted_in_locquota_stays_deleted(run_import, target):
    run_import(sqlite_url(FIXTURES / JUNO))
    with Session(target) as session, session.begin():  # as the scrubber leaves it
        session.execute(update(Location).where(Location.glance_location_id == 7).values(status=LocationStatus.DELETED))
    result = run_import(sqlite_url(FIXTURES / JUNO))
    assert location_statuses(target)[7] == "deleted"
    assert findings(result)[Finding.KEPT_DELETED.value] == 1
    assert usage(target)[P1]["image_size_total"] == 499242 - 8830
    assert equals_recount(target, P1)


# --- Glance on PostgreSQL and MariaDB -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def glance_postgresql_url(postgresql_admin_url: str) -> str:
    """The PostgreSQL dump, loaded as the README says, into a database of its own on the suite's server."""
    with psycopg.connect(postgresql_admin_url + "/postgres", autocommit=True) as connection:
        connection.execute("CREATE DATABASE glance_fixture")
    with psycopg.connect(postgresql_admin_url + "/glance_fixture", autocommit=True) as connection:
        connection.execute((FIXTURES / "glance-33.postgresql.sql").read_text())  # INSERTs, no COPY
    return postgresql_admin_url + "/glance_fixture"


@pytest.fixture(scope="session")
def mariadb_port() -> Iterator[int]:
    """A MariaDB the suite starts on a free port of 127.0.0.1 (never the machine's own)."""
    with mariadb_server() as url:
        yield int(url.rsplit(":", 1)[1])


def load_mariadb_dump(port: int, database: str, *statements: str) -> str:
    """The MariaDB dump, loaded as the README says, into a new database; then statements. Its mysql:// URL."""
    connection = pymysql.connect(
        host="127.0.0.1", port=port, user="root", client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True
    )
    with closing(connection), connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
        cursor.execute(f"USE {database}")
        cursor.execute((FIXTURES / "glance-33.mysql.sql").read_text())
        while cursor.nextset():
            pass
        for statement in statements:
            cursor.execute(statement)
    return f"mysql://root@127.0.0.1:{port}/{database}"


@pytest.fixture(scope="session")
def glance_mariadb_url(mariadb_port: int) -> str:
    return load_mariadb_dump(mariadb_port, "glance_fixture")


@pytest.mark.glance_dump
def test_import_from_glance_on_postgresql(run_import, target, expected, glance_postgresql_url):
    run_import(glance_postgresql_url)
    assert_mapping(target, expected, pre_juno=False)
    result = run_import(glance_postgresql_url)
    assert summary_line(result, "images") == "39 read, 39 imported (0 new, 0 updated, 39 unchanged), 0 skipped"


@pytest.mark.glance_dump
@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql"])
def test_import_from_glance_on_mariadb(run_import, target, expected, glance_mariadb_url, scheme):
    url = glance_mariadb_url.replace("mysql://", f"{scheme}://", 1)
    run_import(url)
    assert_mapping(target, expected, pre_juno=False)
    result = run_import(url)
    assert summary_line(result, "images") == "39 read, 39 imported (0 new, 0 updated, 39 unchanged), 0 skipped"


@pytest.mark.glance_dump
def test_mariadb_rows_naming_their_image_in_another_case_still_find_it(run_import, target, expected, mariadb_port):
    """MySQL's collations compare ids without case: a location whose image_id is upper case still belongs to it."""
    url = load_mariadb_dump(
        mariadb_port,
        f"glance_upper_{uuid.uuid4().hex[:8]}",
        "UPDATE image_locations SET image_id = UPPER(image_id) WHERE id = 23",
    )
    run_import(url)
    assert_mapping(target, expected, pre_juno=False)


@pytest.mark.glance_dump
def test_every_backend_gives_the_same_rows(run_import, target, glance_postgresql_url, glance_mariadb_url):
    """Same data on every backend (README): the imports agree but for timestamps (MariaDB keeps whole seconds)."""

    def rows() -> dict[str, list[tuple[object, ...]]]:
        with Session(target) as session:
            return {
                "images": sorted(session.execute(select(Image.id, Image.status, Image.owner, Image.size)).all()),
                "locations": sorted(
                    session.execute(
                        select(Location.glance_location_id, Location.status, Location.url, Location.store)
                    ).all()
                ),
                "properties": sorted(session.execute(select(ImageProperty.image_id, ImageProperty.name)).all()),
                "usage": sorted(session.execute(select(TenantUsage.tenant_id, TenantUsage.image_size_total)).all()),
            }

    run_import(sqlite_url(FIXTURES / JUNO))
    from_sqlite = rows()
    run_import(glance_postgresql_url)
    assert rows() == from_sqlite
    run_import(glance_mariadb_url)
    assert rows() == from_sqlite


# --- hostile data -------------------------------------------------------------------------------------------------

HOSTILE = [
    pytest.param(
        [f"UPDATE images SET status = 'frobnicated' WHERE id = '{ACTIVE_1LOC_018}'"],
        Finding.IMAGE_UNKNOWN_STATUS, 1, {"images": 38, "locations": 44, P1: 499242 - 147571},
        id="unknown image status",
    ),
    pytest.param(
        [f"UPDATE images SET size = NULL WHERE id = '{ACTIVE_2LOC_006}'"],
        Finding.SIZE_UNKNOWN, 1, {"images": 39, "locations": 45, P1: 499242 - 2 * 132041},
        id="NULL size of an image with data",
    ),
    pytest.param(
        [f"UPDATE images SET size = 'lots' WHERE id = '{ACTIVE_2LOC_006}'"],
        Finding.SIZE_INVALID, 1, {"images": 39, "locations": 45, P1: 499242 - 2 * 132041},
        id="size that is not a number",
    ),
    pytest.param(
        [
            "INSERT INTO image_locations (id, image_id, value, created_at, deleted, meta_data, status)"
            " SELECT 100, image_id, value, created_at, deleted, meta_data, status FROM image_locations WHERE id = 23"
        ],
        Finding.LOCATION_DUPLICATE, 1, {"images": 39, "locations": 45, P1: 499242},
        id="duplicate location URL in one image",
    ),
    pytest.param(
        [
            "INSERT INTO image_locations (id, image_id, value, created_at, deleted, meta_data, status)"
            " SELECT 100, image_id, value, created_at, 1, meta_data, 'pending_delete'"
            " FROM image_locations WHERE id = 23"
        ],
        Finding.LOCATION_DUPLICATE, 1, {"images": 39, "locations": 45, P1: 499242},
        id="pending_delete location of the same URL as an active one",
    ),
    pytest.param(
        [
            "INSERT INTO image_locations (id, image_id, value, created_at, deleted, meta_data, status)"
            " SELECT 100, image_id, value, created_at, 1, meta_data, 'deleted' FROM image_locations WHERE id = 23"
        ],
        None, 0, {"images": 39, "locations": 46, P1: 499242},
        id="location removed and its URL added back (history, not a duplicate)",
    ),
    pytest.param(
        ["UPDATE image_locations SET value = (SELECT value FROM image_locations WHERE id = 23) WHERE id = 27"],
        Finding.SHARED_URL, 1, {"images": 39, "locations": 45, P1: 499242},
        id="location URL of another image",
    ),
    pytest.param(
        [
            "UPDATE image_locations SET value = 'swift+https://glance:s3cr3t-k3y@swift.example/v1/AUTH_x/glance/a'"
            " WHERE id = 13"
        ],
        Finding.URL_CREDENTIALS, 1, {"images": 39, "locations": 45, P1: 499242},
        id="URL with credentials",
    ),
    pytest.param(
        ["UPDATE image_locations SET meta_data = '{\"store\": \"fs\", \"x\": \"' || hex(zeroblob(600000)) || '\"}'"
         " WHERE id = 23"],
        Finding.METADATA_TOO_LARGE, 1, {"images": 39, "locations": 45, P1: 499242},
        id="huge metadata JSON",
    ),
    pytest.param(
        ["UPDATE image_locations SET meta_data = '{\"store\": fs' WHERE id = 23",
         "UPDATE image_locations SET meta_data = '[1, 2]' WHERE id = 27",
         "UPDATE image_locations SET meta_data = '{\"store\": \"fs\", \"x\": NaN}' WHERE id = 12"],
        Finding.METADATA_MALFORMED, 3, {"images": 39, "locations": 45, P1: 499242},
        id="malformed metadata text",
    ),
    pytest.param(
        ["UPDATE image_locations SET meta_data = replace(hex(zeroblob(30000)), '00', '[') WHERE id = 23"],
        Finding.METADATA_MALFORMED, 1, {"images": 39, "locations": 45, P1: 499242},
        id="metadata JSON nested past the parser's stack",
    ),
    pytest.param(
        ["UPDATE image_locations SET status = 'gone-fishing' WHERE id = 23"],
        Finding.UNKNOWN_LOCATION_STATUS, 1, {"images": 39, "locations": 45, P1: 499242},
        id="unknown location status",
    ),
    pytest.param(
        [f"UPDATE images SET id = 'not-a-uuid' WHERE id = '{ACTIVE_1LOC_018}'",
         f"UPDATE image_locations SET image_id = 'not-a-uuid' WHERE image_id = '{ACTIVE_1LOC_018}'"],
        Finding.IMAGE_BAD_ID, 1, {"images": 38, "locations": 44, P1: 499242 - 147571},
        id="image id that is not a UUID",
    ),
    pytest.param(
        [f"UPDATE images SET owner = NULL WHERE id = '{ACTIVE_1LOC_018}'"],
        Finding.IMAGE_NO_OWNER, 1, {"images": 38, "locations": 44, P1: 499242 - 147571},
        id="image without owner",
    ),
    pytest.param(
        [f"UPDATE images SET name = hex(zeroblob(200)) WHERE id = '{ACTIVE_1LOC_018}'"],
        Finding.IMAGE_VALUE_TOO_LONG, 1, {"images": 38, "locations": 44, P1: 499242 - 147571},
        id="name longer than its column",
    ),
    pytest.param(
        ["UPDATE image_locations SET value = 'file:///' || hex(zeroblob(3000)) WHERE id = 23"],
        Finding.LOCATION_URL_UNUSABLE, 1, {"images": 39, "locations": 44, P1: 499242 - 147571},
        id="URL too long",
    ),
    pytest.param(
        [f"UPDATE images SET visibility = 'everyone' WHERE id = '{ACTIVE_1LOC_018}'"],
        Finding.VISIBILITY_UNKNOWN, 1, {"images": 39, "locations": 45, P1: 499242},
        id="unknown visibility",
    ),
    pytest.param(
        [f"UPDATE images SET created_at = 'the day before yesterday', min_disk = -4 WHERE id = '{ACTIVE_1LOC_018}'"],
        None, 0, {"images": 39, "locations": 45, P1: 499242},
        id="unreadable timestamp and negative min_disk",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("statements", "finding", "count", "outcome"), HOSTILE)
def test_hostile_rows_are_reported_and_the_rest_imported(
    run_import, target, tmp_path, statements, finding, count, outcome
):
    url = sqlite_url(glance_copy(tmp_path, *statements))
    result = run_import(url)
    if finding is not None:
        assert findings(result)[finding.value] == count
    with Session(target) as session:
        images = session.scalar(select(func.count()).select_from(Image))
        locations = session.scalar(select(func.count()).select_from(Location))
    assert {"images": images, "locations": locations, P1: usage(target)[P1]["image_size_total"]} == outcome
    assert equals_recount(target, P1)
    assert "s3cr3t" not in result.output
    before = snapshot(target)
    run_import(url)  # hostile rows do not make a re-run write again
    assert snapshot(target) == before


def test_an_image_row_without_id_is_reported_and_the_batches_go_on(run_import, target, tmp_path):
    glance = glance_copy(
        tmp_path,
        "CREATE TABLE images_copy AS SELECT * FROM images",  # without NOT NULL: as a hand-made table might be
        "DROP TABLE images",
        "ALTER TABLE images_copy RENAME TO images",
        f"UPDATE images SET id = NULL WHERE id = '{ACTIVE_1LOC_018}'",
    )
    result = run_import(sqlite_url(glance), "--batch-size", "7")
    assert findings(result)[Finding.IMAGE_BAD_ID.value] == 1
    assert summary_line(result, "images") == "39 read, 38 imported (38 new, 0 updated, 0 unchanged), 1 skipped"
    assert usage(target)[P1]["image_size_total"] == 499242 - 147571


def test_credentials_in_location_urls_are_never_printed_or_logged(run_import, target, tmp_path, caplog):
    caplog.set_level("DEBUG")
    glance = glance_copy(
        tmp_path,
        "UPDATE image_locations SET value = 'swift+https://glance:s3cr3t-k3y@swift.example/v1/a' WHERE id = 13",
    )
    result = run_import(sqlite_url(glance))
    assert "swift+https://***@swift.example/v1/a" in result.stdout
    assert "s3cr3t" not in result.output + caplog.text
    with Session(target) as session:  # stored as is: the data is reached with them
        url = session.scalar(select(Location.url).where(Location.glance_location_id == 13))
    assert url == "swift+https://glance:s3cr3t-k3y@swift.example/v1/a"


def test_a_value_the_database_refuses_skips_only_its_image(run_import, target, tmp_path, database_url):
    """PostgreSQL refuses NUL in text (SQLite keeps it): the batch is retried image by image."""
    glance = glance_copy(
        tmp_path, f"UPDATE images SET name = 'bad' || char(0) || 'name' WHERE id = '{ACTIVE_1LOC_018}'"
    )
    result = run_import(sqlite_url(glance), "--batch-size", "10")
    refused = findings(result).get(Finding.IMAGE_WRITE_FAILED.value, 0)
    assert refused == (1 if database_url.startswith("postgresql") else 0)
    with Session(target) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 39 - refused
    assert equals_recount(target, P1)


# --- the source -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:////nonexistent/glance.sqlite", "cannot read it"),
        ("oracle://glance:pw@127.0.0.1/glance", "unsupported database 'oracle'"),
        ("no url at all", "not a database URL"),
        ("postgresql://glance:s3cr3t@127.0.0.1:1/glance", "postgresql://glance:***@127.0.0.1:1/glance: cannot read it"),
    ],
)
def test_an_unreadable_source_fails_clearly_and_writes_nothing(run_import, target, url, message):
    result = run_import(url, exit_code=1)
    assert message in result.output
    assert "s3cr3t" not in result.output
    assert snapshot(target)["images"] == []


def test_an_unmigrated_locquota_database_is_refused_before_any_write(tmp_path, store_root):
    database_url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(database_url)
    command.upgrade(alembic_config(engine), "0003")
    engine.dispose()
    settings = {"database_url": database_url, "redis_url": "", "store.file.datadir": str(store_root)}
    ini = write_ini(tmp_path / "old.ini", {f"locquota.{key}": value for key, value in settings.items()})
    result = CliRunner().invoke(cli, ["--config", str(ini), "import-glance", sqlite_url(FIXTURES / JUNO)])
    assert result.exit_code == 1
    assert "run `locquota db upgrade`" in result.output


def test_a_database_that_is_not_glance_is_refused(run_import, tmp_path):
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE images (id TEXT)")
    result = run_import(sqlite_url(path), exit_code=1)
    assert "not a Glance database (no images.status)" in result.output


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("swift+https://user:key@host/v1/x", "swift+https://***@host/v1/x"),
        ("s3://AKIA:se/cr@et@bucket.example/o", "s3://***@bucket.example/o"),
        ("file:///var/lib/glance/images/x", "file:///var/lib/glance/images/x"),
        ("http://127.0.0.1:9495/blob/x/0", "http://127.0.0.1:9495/blob/x/0"),
    ],
)
def test_mask_url_hides_every_user_info(url, masked):
    assert mask_url(url) == masked
