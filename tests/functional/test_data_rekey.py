"""Migration 0006 on existing data: `locquota db upgrade` keys old rows by what their URLs reach (SPEC section 6).

Each test starts from a fresh database at revision 0005 holding rows as a deployment before data keys wrote
them (url_hash: the hash of the URL's text), runs the real commands through CliRunner, and reads what they
committed. Two tenants reaching one file under different spellings must end up sharing a data key, be
reported and counted as a collision, and keep that file from the scrubber while either is live.
"""

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session
from webtest import TestApp

from locations.models import DataKeyCollision, Image, ImageStatus, Location, LocationStatus, Visibility, data_key_digest
from locations.scrubber import Scrubber
from locations.services.data_references import DataKeys, DataReferences
from locations.services.data_rekey import rekey_batches
from locations.services.scrubbing import Outcome
from locations.stores.base import StoreRegistry
from locations.stores.file import FileStore
from locquota.cli import cli
from locquota.crypto import PLAINTEXT, UrlVault, plain_digest
from locquota.db import alembic_config, make_engine, upgrade_to_head
from tests.conftest import T0, identity, write_ini
from tests.fakes import POLICY, SCRUB_TIME, scrub_settings, unit_of_work_on
from tests.functional.test_metrics import scrape, value

PRE_DATA_KEYS = "0005"  # the last revision before locations.data_key_hash
KEY = Fernet.generate_key().decode()
DATA = b"shared image bytes"
RBD_URL = "rbd://fsid/pool/img/snap"
SUMMARY_ONE_COLLISION = "data reached by more than one tenant: 1"

# The planted rows: (label, owner, spelling of the URL under the store root or a whole URL, store, live).
# a_shared/b_shared: two tenants, one file, two spellings (the collision). a_mine/a_mine_alias: one tenant's
# two images on one file (not a collision). c_shared_deleted: a third tenant's deleted row on the shared
# file (deleted rows never count). b_gone: a deleted row whose file is gone. c_rbd: a store not configured.
PLANT = (
    ("a_shared", "tenant-a", "file://{root}/shared", "file", True),
    ("b_shared", "tenant-b", "file://localhost{root}/./shared", "file", True),
    ("a_mine", "tenant-a", "file://{root}/mine", "file", True),
    ("a_mine_alias", "tenant-a", "FILE://{root}//%6Dine", "file", True),
    ("c_shared_deleted", "tenant-c", "file://{root}/shared", "file", False),
    ("b_gone", "tenant-b", "file://{root}/gone", "file", False),
    ("c_rbd", "tenant-c", RBD_URL, "glance:rbd", True),
)

# The locations table as revision 0005 has it: Location (the model) already names the column data_key_hash.
OLD_LOCATIONS = sa.table(
    "locations",
    sa.column("id", sa.Integer),
    sa.column("image_id", sa.Uuid),
    sa.column("url", sa.Text),
    sa.column("url_hash", sa.String),
    sa.column("store", sa.String),
    sa.column("metadata", sa.JSON),
    sa.column("status", sa.String),
    sa.column("size_bytes", sa.BigInteger),
    sa.column("created_at", sa.DateTime),
    sa.column("updated_at", sa.DateTime),
    sa.column("deleted_at", sa.DateTime),
)


@dataclass(frozen=True, slots=True)
class Planted:
    """What a pre-0006 deployment left: location ids, images and URLs by label, and the store root."""

    ids: dict[str, int]
    images: dict[str, uuid.UUID]
    urls: dict[str, str]
    root: Path


@dataclass(frozen=True, slots=True)
class Row:
    url: str
    data_key_hash: str
    data_key_version: int
    data_inode: str | None


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Overrides conftest's: a fresh database of the parametrized kind, migrated only to revision 0005."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pre-data-keys.sqlite'}"
        migrate(url, PRE_DATA_KEYS)
        yield url
        return
    admin_url = request.getfixturevalue("postgresql_admin_url")
    name = f"locquota_rekey_{uuid.uuid4().hex}"
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        url = f"{admin_url}/{name}"
        migrate(url, PRE_DATA_KEYS)
        yield url
    finally:
        with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name} WITH (FORCE)")  # an app engine may still hold a connection


def migrate(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        engine.dispose()


@pytest.fixture
def database(database_url: str) -> Iterator[Engine]:
    """An engine on the test database, to plant rows and read what the commands committed."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def plant_pre_data_key_rows(engine: Engine, store_root: Path, vault: UrlVault = PLAINTEXT) -> Planted:
    """Images and locations as a pre-0006 deployment wrote them: url_hash = vault.digest(the URL's text)."""
    store_root.mkdir(parents=True, exist_ok=True)
    (store_root / "shared").write_bytes(DATA)
    (store_root / "mine").write_bytes(DATA)
    ids, images, urls = {}, {}, {}
    with engine.begin() as connection:
        for label, owner, spelling, store, live in PLANT:
            image_id, url = uuid.uuid4(), spelling.format(root=store_root)
            status = ImageStatus.ACTIVE if live else ImageStatus.DELETED
            connection.execute(
                insert(Image).values(
                    id=image_id, name=label, status=status, visibility=Visibility.PRIVATE, owner=owner,
                    size=len(DATA), min_disk=0, min_ram=0, protected=False, os_hidden=False,
                    created_at=T0, updated_at=T0,
                )
            )  # fmt: skip
            ids[label] = connection.execute(
                insert(OLD_LOCATIONS)
                .values(
                    image_id=image_id, url=vault.seal(url), url_hash=vault.digest(url), store=store, metadata={},
                    status=LocationStatus.ACTIVE.value if live else LocationStatus.DELETED.value,
                    size_bytes=len(DATA), created_at=T0, updated_at=T0, deleted_at=None if live else T0,
                )
                .returning(OLD_LOCATIONS.c.id)
            ).scalar_one()  # fmt: skip
            images[label], urls[label] = image_id, url
    return Planted(ids, images, urls, store_root)


def canonical_key(path: Path) -> str:
    """What the file store's key of a file must be: its real path as a file URL (percent-encoded)."""
    return "file://" + quote(os.fsencode(os.path.realpath(path)))


def inode_of(path: Path) -> str:
    status = os.stat(path)
    return f"{status.st_dev}:{status.st_ino}"


def rows(engine: Engine) -> dict[int, Row]:
    with engine.connect() as connection:
        result = connection.execute(
            sa.text("SELECT id, url, data_key_hash, data_key_version, data_inode FROM locations ORDER BY id")
        )
        return {row.id: Row(row.url, row.data_key_hash, row.data_key_version, row.data_inode) for row in result}


def collisions(engine: Engine) -> list[tuple[str, int, int]]:
    with Session(engine) as session:
        return [(c.data_key_hash, c.tenants, c.locations) for c in session.scalars(select(DataKeyCollision))]


def locquota(ini: Path, *args: str, keys: str | None = None):
    """The `locquota` command in-process; keys, as test_location_encryption passes them: from the environment."""
    env = {"LOCQUOTA_LOCATION_ENCRYPTION_KEYS": keys} if keys else {}
    return CliRunner().invoke(cli, ["--config", str(ini), *args], env=env, catch_exceptions=False)


@pytest.fixture
def planted(database: Engine, store_root: Path) -> Planted:
    return plant_pre_data_key_rows(database, store_root)


@pytest.fixture
def upgraded(planted: Planted, ini: Path) -> Planted:
    """The planted database after `locquota db upgrade`."""
    result = locquota(ini, "db", "upgrade")
    assert result.exit_code == 0, result.output
    return planted


def file_store(root: Path) -> StoreRegistry:
    return StoreRegistry({"file": FileStore("file", {"datadir": str(root)})}, "file")


# --- db upgrade ---------------------------------------------------------------------------------------------


def test_db_upgrade_keys_every_file_row_by_its_files_canonical_key(database, planted, ini):
    result = locquota(ini, "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"upgraded the database from {PRE_DATA_KEYS} to ")
    after = rows(database)
    root = planted.root
    expected_keys = {
        "a_shared": canonical_key(root / "shared"),
        "b_shared": canonical_key(root / "shared"),
        "c_shared_deleted": canonical_key(root / "shared"),
        "a_mine": canonical_key(root / "mine"),
        "a_mine_alias": canonical_key(root / "mine"),
        "b_gone": canonical_key(root / "gone"),
    }
    for label, key in expected_keys.items():
        row = after[planted.ids[label]]
        assert (label, row.data_key_version, row.data_key_hash) == (label, 1, data_key_digest(key))
        assert row.url == planted.urls[label]  # the URL as given is kept; only its key columns change
    assert after[planted.ids["a_shared"]].data_key_hash == after[planted.ids["b_shared"]].data_key_hash
    assert after[planted.ids["a_mine"]].data_key_hash == after[planted.ids["a_mine_alias"]].data_key_hash
    assert after[planted.ids["a_shared"]].data_key_hash != plain_digest(planted.urls["b_shared"])


def test_db_upgrade_records_the_inode_of_files_that_exist(database, planted, ini):
    assert locquota(ini, "db", "upgrade").exit_code == 0

    inodes = {label: rows(database)[location_id].data_inode for label, location_id in planted.ids.items()}
    shared, mine = inode_of(planted.root / "shared"), inode_of(planted.root / "mine")
    assert inodes == {
        "a_shared": shared,
        "b_shared": shared,
        "c_shared_deleted": shared,
        "a_mine": mine,
        "a_mine_alias": mine,
        "b_gone": None,
        "c_rbd": None,
    }


def test_db_upgrade_keys_a_row_of_a_store_not_configured_by_its_urls_text(database, planted, ini):
    assert locquota(ini, "db", "upgrade").exit_code == 0

    row = rows(database)[planted.ids["c_rbd"]]
    assert row == Row(RBD_URL, data_key_digest(RBD_URL), 1, None)


def test_db_upgrade_reports_only_the_cross_tenant_alias_as_a_collision(database, planted, ini):
    result = locquota(ini, "db", "upgrade")

    assert result.exit_code == 0, result.output
    shared_hash = data_key_digest(canonical_key(planted.root / "shared"))
    a, b = planted.ids["a_shared"], planted.ids["b_shared"]
    assert [line for line in result.stdout.splitlines() if line.startswith("collision")] == [
        f"collision\t{shared_hash[:16]}\ttenants tenant-a,tenant-b\tlocations {a},{b}"
    ]
    assert result.stdout.splitlines()[-1] == f"re-keyed {len(PLANT)} locations; {SUMMARY_ONE_COLLISION}"
    assert collisions(database) == [(shared_hash, 2, 2)]


# --- locations rekey: idempotent and resumable ----------------------------------------------------------------


@pytest.mark.parametrize("flags", [(), ("--all",)], ids=["pending", "all"])
def test_rekey_after_the_upgrade_changes_nothing(database, upgraded, ini, flags):
    before = rows(database)

    result = locquota(ini, "locations", "rekey", *flags)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"re-keyed 0 locations; {SUMMARY_ONE_COLLISION}"
    assert rows(database) == before
    assert len(collisions(database)) == 1


def test_rekey_in_batches_of_one_repairs_rows_set_back_to_their_text_hash(database, upgraded, ini):
    keyed = rows(database)
    set_back = [upgraded.ids["b_shared"], upgraded.ids["a_mine_alias"], upgraded.ids["c_rbd"]]
    with database.begin() as connection:
        for location_id in set_back:
            connection.execute(
                update(Location)
                .where(Location.id == location_id)
                .values(data_key_hash="0" * 64, data_key_version=0, data_inode=None)
            )

    result = locquota(ini, "locations", "rekey", "--batch-size", "1")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"re-keyed {len(set_back)} locations; {SUMMARY_ONE_COLLISION}"
    assert rows(database) == keyed


def test_a_pass_stopped_after_its_first_batch_is_finished_by_the_next_rekey(database, planted, ini):
    upgrade_to_head(database)  # the schema step of `db upgrade` alone: every row still at version 0
    keys = DataKeys(file_store(planted.root), PLAINTEXT)
    passes = rekey_batches(unit_of_work_on(database), keys, 2, everything=False)
    first = next(passes)
    passes.close()  # stopped here: the first batch is committed, the rest never started
    assert (first.scanned, first.changed) == (2, 2)
    assert sorted(row.data_key_version for row in rows(database).values()) == [0] * (len(PLANT) - 2) + [1, 1]

    result = locquota(ini, "locations", "rekey")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"re-keyed {len(PLANT) - 2} locations; {SUMMARY_ONE_COLLISION}"
    after = rows(database)
    assert all(row.data_key_version == 1 for row in after.values())
    assert after[planted.ids["b_shared"]].data_key_hash == data_key_digest(canonical_key(planted.root / "shared"))


# --- with URL encryption --------------------------------------------------------------------------------------


def test_db_upgrade_rehashes_sealed_rows_under_the_primary_key(database, store_root, settings, tmp_path):
    vault = UrlVault([KEY.encode()])
    planted = plant_pre_data_key_rows(database, store_root, vault)
    ini = write_ini(tmp_path / "sealed.ini", settings)

    result = locquota(ini, "db", "upgrade", keys=KEY)

    assert result.exit_code == 0, result.output
    after = rows(database)
    shared_hash = vault.digest(canonical_key(store_root / "shared"))
    assert after[planted.ids["a_shared"]].data_key_hash == shared_hash
    assert after[planted.ids["b_shared"]].data_key_hash == shared_hash
    assert after[planted.ids["a_mine_alias"]].data_key_hash == vault.digest(canonical_key(store_root / "mine"))
    assert after[planted.ids["c_rbd"]].data_key_hash == vault.digest(RBD_URL)
    assert shared_hash != data_key_digest(canonical_key(store_root / "shared"))
    assert all(row.data_key_version == 1 for row in after.values())
    for label, location_id in planted.ids.items():
        assert after[location_id].url.startswith("enc:")
        assert vault.open(after[location_id].url) == planted.urls[label]
    a, b = planted.ids["a_shared"], planted.ids["b_shared"]
    assert [line for line in result.stdout.splitlines() if line.startswith("collision")] == [
        f"collision\t{shared_hash[:16]}\ttenants tenant-a,tenant-b\tlocations {a},{b}"
    ]
    assert collisions(database) == [(shared_hash, 2, 2)]


# --- what the service makes of it ------------------------------------------------------------------------------


def test_the_collision_gauge_counts_the_shared_data_after_the_upgrade(upgraded, make_app, settings):
    samples = scrape(make_app(settings))

    assert value(samples, "locquota_collector_up", collector="data_keys") == 1
    assert value(samples, "locquota_location_data_collisions") == 1


def test_each_location_of_the_cross_tenant_pair_shares_its_data_name(database, upgraded):
    with Session(database) as session:
        references = DataReferences(session, DataKeys(file_store(upgraded.root), PLAINTEXT))
        shared = {
            label: any(ref.shares_name for ref in references.find_for(session.get_one(Location, location_id)) or [])
            for label, location_id in upgraded.ids.items()
            if label in ("a_shared", "b_shared", "a_mine", "c_rbd")
        }

    # c_rbd: the check is not always yes; nothing else references that data.
    assert shared == {"a_shared": True, "b_shared": True, "a_mine": True, "c_rbd": False}


def test_the_scrubber_keeps_the_file_another_tenants_live_location_reaches(
    database, upgraded, build_wsgi_app, settings, clock
):
    app = TestApp(build_wsgi_app(scrub_settings(settings, delayed_delete=True)))
    tenant_b_image, tenant_a_image = upgraded.images["b_shared"], upgraded.images["a_shared"]
    app.delete(f"/v2/images/{tenant_b_image}", headers=identity("tenant-b"), status=204)
    clock.advance(seconds=SCRUB_TIME + 1)
    scrubber = Scrubber(unit_of_work_on(database), file_store(upgraded.root), clock, POLICY, batch_size=10, pool_size=1)

    report = scrubber.run_once()

    assert report.outcomes == {Outcome.SHARED: 1}
    assert (upgraded.root / "shared").read_bytes() == DATA
    assert rows(database)[upgraded.ids["b_shared"]].data_key_version == 1
    with Session(database) as session:
        assert session.get_one(Location, upgraded.ids["b_shared"]).status is LocationStatus.DELETED
    assert app.get(f"/v2/images/{tenant_a_image}/file", headers=identity("tenant-a"), status=200).body == DATA


def test_restoring_an_image_whose_data_another_tenant_reaches_is_refused(database, upgraded, build_wsgi_app, settings):
    """Data shared across tenants before canonical keys is never handed back to either by a restore."""
    app = TestApp(build_wsgi_app(scrub_settings(settings, delayed_delete=True)))
    tenant_b_image = upgraded.images["b_shared"]
    app.delete(f"/v2/images/{tenant_b_image}", headers=identity("tenant-b"), status=204)
    before = rows(database)

    res = app.post(f"/v1/images/{tenant_b_image}/restore", headers=identity("operators", "admin"), status=403)

    assert res.json["error"]["code"] == "location_in_use"
    assert rows(database) == before
