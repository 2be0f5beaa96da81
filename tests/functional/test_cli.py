"""The `locquota` command through click's CliRunner, on the real test database and a real .ini file."""

import hashlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session
from webtest import TestApp

import locations.models  # noqa: F401  (registers its tables on Base.metadata)
from locquota.app import configure
from locquota.cli import cli
from locquota.db import Base, make_engine
from locquota.tokens import Token
from tests.conftest import write_ini as write_ini_file

IMAGE = {"name": "cirros", "disk_format": "qcow2", "container_format": "bare"}

WriteIni = Callable[..., Path]


@pytest.fixture
def cli_settings(settings: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Like development.ini, on the test database and a temporary store, with the tokens strategy."""
    return {
        **settings,
        "locquota.auth_strategy": "tokens",
        "locquota.store.file.datadir": str(tmp_path / "cli-images"),
    }


@pytest.fixture
def write_ini(tmp_path: Path) -> WriteIni:
    def write(settings: dict[str, str], name: str = "locquota.ini") -> Path:
        return write_ini_file(tmp_path / name, settings)

    return write


@pytest.fixture
def ini(cli_settings: dict[str, str], write_ini: WriteIni) -> Path:
    return write_ini(cli_settings)


@pytest.fixture
def test_db(cli_settings: dict[str, str]) -> Iterator[Engine]:
    """The test database, to check what the CLI committed."""
    engine = make_engine(cli_settings["locquota.database_url"])
    yield engine
    engine.dispose()


@pytest.fixture
def tokens_app(cli_settings: dict[str, str]) -> Iterator[TestApp]:
    """The API on the same database, with the tokens strategy and the wall clock the CLI also uses."""
    wsgi_app = configure(cli_settings).make_wsgi_app()
    yield TestApp(wsgi_app)
    wsgi_app.registry["locquota.engine"].dispose()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def stored_tokens(engine: Engine) -> list[Token]:
    with Session(engine) as session:
        return list(session.scalars(select(Token)))


def test_tokens_create_prints_a_token_once(ini, test_db):
    result = run("--config", str(ini), "tokens", "create", "--project", "p", "--roles", "admin,member")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert len(lines[0]) >= 40
    [token] = stored_tokens(test_db)
    assert token.project_id == "p"
    assert token.roles == "admin,member"
    assert token.expires_at is None


def test_tokens_create_stores_only_the_sha256_hash(ini, test_db):
    result = run("--config", str(ini), "tokens", "create", "--project", "p", "--roles", "admin,member")
    plaintext = result.stdout.strip()

    [token] = stored_tokens(test_db)
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    with test_db.connect() as connection:
        for table in inspect(connection).get_table_names():
            quoted = connection.dialect.identifier_preparer.quote(table)
            for row in connection.execute(text(f"SELECT * FROM {quoted}")):  # noqa: S608  (reflected names)
                assert not any(plaintext in str(value) for value in row), table


def test_tokens_create_gives_different_tokens_each_time(ini, test_db):
    first = run("--config", str(ini), "tokens", "create", "--project", "p").stdout.strip()
    second = run("--config", str(ini), "tokens", "create", "--project", "p").stdout.strip()

    assert first != second
    assert len(stored_tokens(test_db)) == 2


def test_token_from_the_cli_works_on_the_api(ini, tokens_app):
    result = run("--config", str(ini), "tokens", "create", "--project", "p", "--roles", "admin,member")
    headers = {"X-Auth-Token": result.stdout.strip()}

    created = tokens_app.post_json("/v2/images", IMAGE, headers=headers, status=201).json
    listed = tokens_app.get("/v2/images", headers=headers, status=200).json

    assert created["owner"] == "p"
    assert [image["id"] for image in listed["images"]] == [created["id"]]


def test_admin_token_from_the_cli_sees_another_tenants_image(ini, tokens_app):
    owner = run("--config", str(ini), "tokens", "create", "--project", "q").stdout.strip()
    admin = run("--config", str(ini), "tokens", "create", "--project", "p", "--roles", "admin,member").stdout.strip()
    image = tokens_app.post_json("/v2/images", IMAGE, headers={"X-Auth-Token": owner}, status=201).json

    res = tokens_app.get(f"/v2/images/{image['id']}", headers={"X-Auth-Token": admin}, status=200)

    assert res.json["owner"] == "q"


def test_tokens_create_with_expiry_sets_expires_at(ini, test_db):
    result = run("--config", str(ini), "tokens", "create", "--project", "p", "--expires-in-days", "3")

    assert result.exit_code == 0, result.output
    [token] = stored_tokens(test_db)
    assert token.expires_at is not None
    # The CLI reads the clock for the expiry, then again for created_at: allow the moment between the two.
    assert timedelta(days=3, minutes=-1) < token.expires_at - token.created_at <= timedelta(days=3)


@pytest.mark.parametrize("days", ["0", "-1", "soon"])
def test_tokens_create_rejects_expiry_below_one_day(ini, test_db, days):
    result = run("--config", str(ini), "tokens", "create", "--project", "p", "--expires-in-days", days)

    assert result.exit_code == 2
    assert "--expires-in-days" in result.output
    assert stored_tokens(test_db) == []


@pytest.mark.parametrize("project", ["", "   ", "x" * 256])
def test_tokens_create_rejects_a_bad_project(ini, test_db, project):
    result = run("--config", str(ini), "tokens", "create", "--project", project)

    assert result.exit_code == 2
    assert "--project" in result.output
    assert stored_tokens(test_db) == []


def test_tokens_create_requires_a_project(ini, test_db):
    result = run("--config", str(ini), "tokens", "create")

    assert result.exit_code == 2
    assert "--project" in result.output
    assert stored_tokens(test_db) == []


@pytest.fixture
def fresh_ini(tmp_path: Path, write_ini: WriteIni) -> tuple[Path, Path]:
    """An .ini whose database is a SQLite file that does not exist yet."""
    database = tmp_path / "fresh" / "locquota.sqlite"
    path = write_ini(
        {
            "locquota.database_url": f"sqlite:///{database}",
            "locquota.redis_url": "",
            "locquota.store.file.datadir": str(tmp_path / "fresh-images"),
        },
        name="fresh.ini",
    )
    return path, database


def schema_of(database: Path) -> tuple[set[str], list[str]]:
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            revisions = list(connection.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()
    return tables, revisions


def test_db_upgrade_creates_the_tables_on_a_fresh_sqlite_file(fresh_ini):
    path, database = fresh_ini

    result = run("--config", str(path), "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert "newest revision" in result.stdout
    tables, revisions = schema_of(database)
    assert set(Base.metadata.tables) <= tables
    assert {"images", "locations", "tokens", "alembic_version"} <= tables
    assert len(revisions) == 1


def test_db_upgrade_twice_is_a_no_op(fresh_ini):
    path, database = fresh_ini
    first = run("--config", str(path), "db", "upgrade")
    schema_after_first = schema_of(database)
    created = run("--config", str(path), "tokens", "create", "--project", "p")

    second = run("--config", str(path), "db", "upgrade")

    assert (first.exit_code, created.exit_code, second.exit_code) == (0, 0, 0), second.output
    assert schema_of(database) == schema_after_first
    engine = make_engine(f"sqlite:///{database}")
    try:
        assert [token.project_id for token in stored_tokens(engine)] == ["p"]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("locquota.upload_chunk_bytes", "0", "locquota.upload_chunk_bytes"),
        ("locquota.auth_strategy", "ldap", "locquota.auth_strategy"),
        ("locquota.auto_migrate", "perhaps", "locquota.auto_migrate"),
        ("locquota.delayed_delet", "true", "locquota.delayed_delet"),
        ("locquota.default_store", "swift", "locquota.default_store"),
        ("locquota.store.file.bogus", "1", "locquota.store.file.bogus"),
        ("locquota.store.archive.datadir", "/srv/archive", "locquota.store.archive"),
    ],
)
def test_bad_setting_fails_the_command_naming_the_key(cli_settings, write_ini, test_db, key, value, named):
    path = write_ini({**cli_settings, key: value})

    result = run("--config", str(path), "tokens", "create", "--project", "p")

    assert result.exit_code == 1
    assert named in result.output
    assert "Traceback" not in result.output
    assert stored_tokens(test_db) == []


def test_bad_setting_fails_db_upgrade_naming_the_key(fresh_ini, write_ini):
    _, database = fresh_ini
    bad = write_ini({"locquota.database_url": f"sqlite:///{database}", "locquota.api_limit_max": "-3"}, "bad.ini")

    result = run("--config", str(bad), "db", "upgrade")

    assert result.exit_code == 1
    assert "locquota.api_limit_max" in result.output
    assert not database.exists()


def test_missing_config_file_fails_naming_it(tmp_path):
    missing = tmp_path / "nowhere.ini"

    result = run("--config", str(missing), "tokens", "create", "--project", "p")

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert str(missing) in result.output


@pytest.mark.parametrize(
    "args",
    [["--help"], ["tokens", "--help"], ["tokens", "create", "--help"], ["db", "--help"], ["db", "upgrade", "--help"]],
)
def test_help_works_without_any_config_file(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)  # no development.ini here
    monkeypatch.setenv("LOCQUOTA_CONFIG", str(tmp_path / "nowhere.ini"))

    result = run(*args)

    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert not (tmp_path / "nowhere.ini").exists()


def test_top_level_help_lists_the_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = run("--help")

    assert result.exit_code == 0
    assert "tokens" in result.output
    assert "db" in result.output
    assert "--config" in result.output


def test_scrub_metrics_port_refuses_multiprocess_mode(ini, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["--config", str(ini), "scrub", "--metrics-port", "9"])
    assert result.exit_code == 2
    assert "unset PROMETHEUS_MULTIPROC_DIR" in result.output


def test_tokens_list_shows_no_secret_and_revoke_ends_a_token(ini, tokens_app, test_db):
    kept = run("--config", str(ini), "tokens", "create", "--project", "p", "--description", "ci").stdout.strip()
    gone = run("--config", str(ini), "tokens", "create", "--project", "q", "--roles", "reader").stdout.strip()
    tokens_app.get("/v2/images", headers={"X-Auth-Token": gone}, status=200)

    listed = run("--config", str(ini), "tokens", "list")
    only_q = run("--config", str(ini), "tokens", "list", "--project", "q")

    assert listed.exit_code == 0, listed.output
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(row[1], row[2], row[3], row[4]) for row in rows] == [
        ("p", "member", "expires never", "ci"),
        ("q", "reader", "expires never", ""),
    ]
    stored = {token.project_id: token for token in stored_tokens(test_db)}
    for secret in (kept, gone, stored["p"].token_hash, stored["q"].token_hash):
        assert secret not in listed.stdout
    assert [line.split("\t")[1] for line in only_q.stdout.splitlines()] == ["q"]

    revoked = run("--config", str(ini), "tokens", "revoke", rows[1][0])

    assert revoked.exit_code == 0, revoked.output
    assert tokens_app.get("/v2/images", headers={"X-Auth-Token": gone}, status=401).json["error"]["code"] == (
        "unauthorized"
    )
    tokens_app.get("/v2/images", headers={"X-Auth-Token": kept}, status=200)


def test_tokens_revoke_of_an_unknown_id_fails_and_changes_nothing(ini, test_db):
    run("--config", str(ini), "tokens", "create", "--project", "p")

    result = run("--config", str(ini), "tokens", "revoke", "999")

    assert result.exit_code == 1
    assert "no token with id 999" in result.output
    assert len(stored_tokens(test_db)) == 1
