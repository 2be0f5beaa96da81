"""Location URLs encrypted at rest (SPEC section 9): through the API, the scrubber and the CLI, on both databases."""

import logging
import os
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY
from sqlalchemy import Engine, insert, select, text, update

from locations.models import Image, ImageStatus, Location, LocationStatus, Visibility, data_key_digest
from locations.scrubber import Scrubber
from locquota.app import configure
from locquota.cli import cli
from locquota.crypto import UrlVault
from locquota.settings import SettingsError
from tests.conftest import T0, identity, write_ini
from tests.fakes import POLICY, FakeFailingStore, registry_of, unit_of_work_on

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()
MANY_ROWS = 2500


@pytest.fixture
def plain_settings(settings):
    return {**settings, "locquota.show_multiple_locations": "true"}


@pytest.fixture
def sealed_settings(plain_settings):
    return {**plain_settings, "locquota.location_encryption_keys": NEW_KEY}


@pytest.fixture
def api(make_app, sealed_settings):
    return make_app(sealed_settings)


@pytest.fixture
def engine(api) -> Engine:
    return api.app.registry["locquota.engine"]


def create(app, headers):
    body = {"name": "img", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=headers, status=201).json


def file_in_store(store_root: Path, name: str, data: bytes = b"data") -> str:
    store_root.mkdir(parents=True, exist_ok=True)
    path = store_root / name
    path.write_bytes(data)
    return f"file://{path}"


def add_location(app, image_id, url, headers, status=200):
    operations = [{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {"k": "v"}}}]
    return app.patch_json(
        f"/v2/images/{image_id}", operations, headers={**headers, "Content-Type": PATCH_TYPE}, status=status
    )


def stored_rows(engine: Engine) -> list[tuple[int, str, str]]:
    with engine.connect() as connection:
        return [
            tuple(row) for row in connection.execute(text("SELECT id, url, data_key_hash FROM locations ORDER BY id"))
        ]


def decrypt_errors() -> float:
    return REGISTRY.get_sample_value("locquota_location_decrypt_errors_total", {"reader": "api"}) or 0.0


def flip_one_byte(sealed: str) -> str:
    position = len(sealed) // 2
    return sealed[:position] + ("A" if sealed[position] != "A" else "B") + sealed[position + 1 :]


def test_a_location_round_trips_through_the_api_and_is_stored_sealed(api, engine, tenant, store_root):
    image = create(api, tenant)
    url = file_in_store(store_root, "seed")

    add_location(api, image["id"], url, tenant)

    shown = api.get(f"/v2/images/{image['id']}", headers=tenant).json
    assert shown["locations"] == [{"url": url, "metadata": {"k": "v"}}]
    listed = api.get("/v2/images", headers=tenant).json["images"]
    assert listed[0]["locations"] == [{"url": url, "metadata": {"k": "v"}}]
    [(_id, stored, data_key_hash)] = stored_rows(engine)
    assert stored.startswith("enc:")
    assert str(store_root) not in stored
    assert data_key_hash == UrlVault([NEW_KEY.encode()]).digest(url) != data_key_digest(url)


def test_an_upload_is_stored_sealed_and_downloads(api, engine, tenant, store_root):
    image = create(api, tenant)
    headers = {**tenant, "Content-Type": "application/octet-stream"}
    api.put(f"/v2/images/{image['id']}/file", b"payload", headers=headers, status=204)

    assert api.get(f"/v2/images/{image['id']}/file", headers=tenant).body == b"payload"
    [(_id, stored, _hash)] = stored_rows(engine)
    assert stored.startswith("enc:")
    assert str(store_root) not in stored


def test_a_tampered_location_is_left_out_logged_and_counted_never_a_500(api, engine, tenant, store_root, caplog):
    image = create(api, tenant)
    kept, tampered = file_in_store(store_root, "kept"), file_in_store(store_root, "tampered")
    add_location(api, image["id"], kept, tenant)
    add_location(api, image["id"], tampered, tenant)
    _first, second = stored_rows(engine)
    with engine.begin() as connection:
        connection.execute(update(Location).where(Location.id == second[0]).values(url=flip_one_byte(second[1])))
    before = decrypt_errors()

    with caplog.at_level(logging.ERROR):
        shown = api.get(f"/v2/images/{image['id']}", headers=tenant, status=200).json
        listed = api.get("/v2/images", headers=tenant, status=200).json["images"]

    assert [entry["url"] for entry in shown["locations"]] == [kept]
    assert [entry["url"] for entry in listed[0]["locations"]] == [kept]
    assert decrypt_errors() == before + 2
    assert f"location {second[0]}" in caplog.text
    assert str(store_root) not in caplog.text


def test_the_same_url_twice_on_an_image_is_a_duplicate(api, tenant, store_root):
    image = create(api, tenant)
    url = file_in_store(store_root, "seed")
    add_location(api, image["id"], url, tenant)

    res = add_location(api, image["id"], url, tenant, status=400)

    assert res.json["error"]["code"] == "duplicate_location"


def test_data_of_another_tenants_image_cannot_be_added(api, tenant, other_tenant, store_root):
    url = file_in_store(store_root, "seed")
    add_location(api, create(api, tenant)["id"], url, tenant)

    res = add_location(api, create(api, other_tenant)["id"], url, other_tenant, status=403)

    assert res.json["error"]["code"] == "location_in_use"
    assert str(store_root) not in res.text


def test_duplicates_are_found_while_a_rotation_is_half_done(make_app, sealed_settings, tenant, store_root):
    old_api = make_app({**sealed_settings, "locquota.location_encryption_keys": OLD_KEY})
    image = create(old_api, tenant)
    url = file_in_store(store_root, "seed")
    add_location(old_api, image["id"], url, tenant)
    ring_api = make_app({**sealed_settings, "locquota.location_encryption_keys": f"{NEW_KEY},{OLD_KEY}"})

    res = add_location(ring_api, image["id"], url, tenant, status=400)

    assert res.json["error"]["code"] == "duplicate_location"
    assert ring_api.get(f"/v2/images/{image['id']}", headers=tenant).json["locations"][0]["url"] == url


def test_deleting_an_image_deletes_the_data_of_its_sealed_location(api, tenant, store_root):
    image = create(api, tenant)
    url = file_in_store(store_root, "seed")
    add_location(api, image["id"], url, tenant)

    api.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)

    assert not Path(url.removeprefix("file://")).exists()


def test_the_scrubber_deletes_sealed_locations_data(make_app, sealed_settings, tenant, store_root, clock):
    api = make_app({**sealed_settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "0"})
    engine = api.app.registry["locquota.engine"]
    image = create(api, tenant)
    url = file_in_store(store_root, "seed")
    add_location(api, image["id"], url, tenant)
    api.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    assert Path(url.removeprefix("file://")).exists()
    store = FakeFailingStore.at(store_root)
    vault = api.app.registry["locquota.url_vault"]
    scrubber = Scrubber(
        unit_of_work_on(engine), registry_of(store), clock, POLICY, batch_size=10, pool_size=1, vault=vault
    )

    report = scrubber.run_once()

    assert report.deleted == 1
    assert not Path(url.removeprefix("file://")).exists()


def test_an_unreadable_sealed_url_is_a_failed_scrub_attempt(make_app, sealed_settings, tenant, store_root, clock):
    api = make_app({**sealed_settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "0"})
    engine = api.app.registry["locquota.engine"]
    image = create(api, tenant)
    add_location(api, image["id"], file_in_store(store_root, "seed"), tenant)
    api.delete(f"/v2/images/{image['id']}", headers=tenant, status=204)
    [(location_id, stored, _hash)] = stored_rows(engine)
    with engine.begin() as connection:
        connection.execute(update(Location).where(Location.id == location_id).values(url=flip_one_byte(stored)))
    vault = api.app.registry["locquota.url_vault"]
    scrubber = Scrubber(
        unit_of_work_on(engine), registry_of(FakeFailingStore.at(store_root)), clock, POLICY,
        batch_size=10, pool_size=1, vault=vault,
    )  # fmt: skip

    report = scrubber.run_once()

    assert report.deleted == 0
    with engine.connect() as connection:
        attempts, error = connection.execute(
            select(Location.attempts, Location.last_error).where(Location.id == location_id)
        ).one()
    assert attempts == 1
    assert "cannot be opened" in error


# --- start-up -------------------------------------------------------------------------------------------


@pytest.fixture
def sealed_database(api, tenant, store_root) -> str:
    """A database holding one location sealed under NEW_KEY; its URL."""
    url = file_in_store(store_root, "seed")
    add_location(api, create(api, tenant)["id"], url, tenant)
    return url


def test_a_wrong_key_refuses_to_start_naming_the_setting(sealed_database, sealed_settings):
    wrong = {**sealed_settings, "locquota.location_encryption_keys": OLD_KEY}
    with pytest.raises(SettingsError, match="none of the configured keys opens") as caught:
        configure(wrong)
    assert OLD_KEY not in str(caught.value)


def test_no_key_with_sealed_rows_refuses_to_start(sealed_database, plain_settings):
    with pytest.raises(SettingsError, match="no key is configured"):
        configure(plain_settings)


def test_a_ring_holding_the_old_key_starts(sealed_database, sealed_settings, tenant):
    ring = {**sealed_settings, "locquota.location_encryption_keys": f"{OLD_KEY} {NEW_KEY}"}
    configure(ring).make_wsgi_app().registry["locquota.engine"].dispose()


# --- the CLI: encrypt an existing database, rotate the key --------------------------------------------------


def seed_plaintext_rows(engine: Engine, count: int, store_root: Path) -> list[str]:
    """count images with one plaintext location each (as a deployment before encryption has them)."""
    owner, urls = "tenant-a", []
    images, locations = [], []
    for n in range(count):
        image_id = uuid.uuid4()
        url = f"swift://glance:s3cret-{n}@swift.example.com/v1/AUTH_a/glance/{image_id}"
        urls.append(url)
        images.append(
            {"id": image_id, "name": f"img-{n}", "status": ImageStatus.ACTIVE, "visibility": Visibility.SHARED,
             "owner": owner, "size": 4, "min_disk": 0, "min_ram": 0, "protected": False, "os_hidden": False,
             "created_at": T0, "updated_at": T0}
        )  # fmt: skip
        locations.append(
            {"image_id": image_id, "url": url, "data_key_hash": data_key_digest(url), "store": "file",
             "location_metadata": {}, "status": LocationStatus.ACTIVE, "size_bytes": 4, "created_at": T0,
             "updated_at": T0, "attempts": 0}
        )  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(Image), images)
        connection.execute(insert(Location), locations)
    return urls


def ini_of(tmp_path: Path, settings: dict[str, str]) -> Path:
    return write_ini(tmp_path / "locquota.ini", settings)


def run_cli(ini: Path, keys: str, *args: str):
    return CliRunner().invoke(cli, ["--config", str(ini), *args], env={"LOCQUOTA_LOCATION_ENCRYPTION_KEYS": keys})


def whole_table_dump(engine: Engine) -> str:
    """What a pg_dump of the table would hold: every column of every row, as text."""
    with engine.connect() as connection:
        return "\n".join(repr(tuple(row)) for row in connection.execute(text("SELECT * FROM locations")))


def test_encrypt_seals_thousands_of_existing_rows_leaving_no_plaintext(
    make_app, plain_settings, tmp_path, store_root, database_url
):
    plain_api = make_app(plain_settings)
    engine = plain_api.app.registry["locquota.engine"]
    urls = seed_plaintext_rows(engine, MANY_ROWS, store_root)
    engine.dispose()

    result = run_cli(ini_of(tmp_path, plain_settings), NEW_KEY, "locations", "encrypt", "--batch-size", "300")

    assert result.exit_code == 0, result.output
    assert f"encrypted {MANY_ROWS} location URLs" in result.output
    vault = UrlVault([NEW_KEY.encode()])
    rows = stored_rows(engine)
    assert all(stored.startswith("enc:") for _id, stored, _hash in rows)
    assert [vault.open(stored) for _id, stored, _hash in rows] == urls
    assert [data_key_hash for _id, _stored, data_key_hash in rows] == [vault.digest(url) for url in urls]
    dump = whole_table_dump(engine)
    assert "s3cret" not in dump
    assert "swift.example.com" not in dump
    engine.dispose()
    if database_url.startswith("sqlite"):
        database = Path(database_url.removeprefix("sqlite:///"))
        files = [path for path in database.parent.iterdir() if path.name.startswith(database.name)]
        assert not any(b"s3cret" in path.read_bytes() for path in files)


def test_encrypt_again_is_a_no_op(make_app, sealed_settings, tmp_path, store_root):
    engine = make_app(sealed_settings).app.registry["locquota.engine"]
    seed_plaintext_rows(engine, 5, store_root)
    ini = ini_of(tmp_path, {k: v for k, v in sealed_settings.items() if "encryption" not in k})
    assert run_cli(ini, NEW_KEY, "locations", "encrypt").exit_code == 0
    before = stored_rows(engine)

    result = run_cli(ini, NEW_KEY, "locations", "encrypt")

    assert result.exit_code == 0
    assert "encrypted 0 location URLs" in result.output
    assert stored_rows(engine) == before


def test_encrypt_without_a_key_fails_clearly(make_app, plain_settings, tmp_path):
    make_app(plain_settings)
    result = CliRunner().invoke(cli, ["--config", str(ini_of(tmp_path, plain_settings)), "locations", "encrypt"])
    assert result.exit_code == 1
    assert "no location encryption key is configured" in result.output


def test_rotation_while_requests_run_never_errs_and_every_url_stays_right(
    make_app, plain_settings, tmp_path, store_root, tenant
):
    old_api = make_app({**plain_settings, "locquota.location_encryption_keys": OLD_KEY})
    engine = old_api.app.registry["locquota.engine"]
    seed_plaintext_rows(engine, 120, store_root)
    ini = ini_of(tmp_path, plain_settings)
    assert run_cli(ini, OLD_KEY, "locations", "encrypt").exit_code == 0
    ring = f"{NEW_KEY},{OLD_KEY}"
    reader = make_app({**plain_settings, "locquota.location_encryption_keys": ring})
    admin = identity("tenant-a", "admin")
    expected = {
        image["id"]: image["locations"] for image in reader.get("/v2/images?limit=1000", headers=admin).json["images"]
    }
    assert len(expected) == 120
    stop, failures, reads = threading.Event(), [], [0]

    def read_continuously() -> None:
        while not stop.is_set():
            res = reader.get("/v2/images?limit=1000", headers=admin, expect_errors=True)
            if res.status_int != 200:
                failures.append(res.status)
                continue
            seen = {image["id"]: image["locations"] for image in res.json["images"]}
            if seen != expected:
                failures.append("a URL changed or went missing")
            reads[0] += 1

    thread = threading.Thread(target=read_continuously)
    thread.start()
    try:
        result = run_cli(ini, ring, "locations", "rotate-key", "--batch-size", "7")
    finally:
        stop.set()
        thread.join(60)

    assert result.exit_code == 0, result.output
    assert "re-sealed 120 location URLs" in result.output
    assert failures == []
    assert reads[0] > 0
    primary_only = UrlVault([NEW_KEY.encode()])
    rows = stored_rows(engine)
    assert all(primary_only.digest(primary_only.open(stored)) == data_key_hash for _id, stored, data_key_hash in rows)
    new_only = make_app({**plain_settings, "locquota.location_encryption_keys": NEW_KEY})
    assert {
        image["id"]: image["locations"] for image in new_only.get("/v2/images?limit=1000", headers=admin).json["images"]
    } == expected


def test_key_file_with_loose_permissions_refuses_to_start(plain_settings, tmp_path):
    path = tmp_path / "keys"
    path.write_text(NEW_KEY + "\n")
    os.chmod(path, 0o640)
    with pytest.raises(SettingsError, match="location_encryption_key_file"):
        configure({**plain_settings, "locquota.location_encryption_key_file": str(path)})
