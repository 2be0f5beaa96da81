"""The CLI on a database that is not ready: never migrated, behind, or unreachable; and `db upgrade|current|history`.

Real databases: an empty SQLite file, and an empty database created on the suite's PostgreSQL and MariaDB.
Every failure is one line naming the database (its password masked) and what to do.
"""

import importlib.metadata
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from alembic import command
from click.testing import CliRunner, Result
from sqlalchemy import inspect

from locquota.cli import cli
from locquota.db import MIGRATIONS, alembic_config, make_engine
from locquota.schema_state import current_revision, head_revision
from tests.conftest import closed_port_url, write_ini

HEAD = head_revision()
OLD_REVISION = "0003"
# Commands of every package, each of which needs the schema.
COMMANDS = [
    ("tokens", "list"),
    ("limits", "show", "tenant-a"),
    ("scrub",),
    ("reap",),
    ("reconcile",),
    ("reconcile", "--check"),
    ("audit",),
    ("locations", "rekey"),
    ("db", "current"),
]


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database that exists (or, for SQLite, a file that does not yet) and was never migrated."""
    name = f"locquota_empty_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty' / 'locquota.sqlite'}"
        return
    if request.param == "postgresql":
        admin_url = request.getfixturevalue("postgresql_admin_url")
        with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        yield f"{admin_url}/{name}"
        with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name} WITH (FORCE)")
        return
    admin_url = request.getfixturevalue("mariadb_admin_url")
    admin = sqlalchemy.create_engine(admin_url)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    yield f"{admin_url}/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {name}")
    admin.dispose()


def ini_for(tmp_path: Path, database_url: str, **settings: str) -> Path:
    return write_ini(
        tmp_path / "locquota.ini",
        {
            "locquota.database_url": database_url,
            "locquota.redis_url": "",
            "locquota.store.file.datadir": str(tmp_path / "images"),
            **settings,
        },
    )


def run(ini: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(ini), *args])


def revision_of(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def tables_of(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def migrate_to(database_url: str, revision: str) -> None:
    engine = make_engine(database_url)
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        engine.dispose()


def output_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


# --- never migrated, behind, unreachable ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_command_on_a_database_never_migrated_says_to_run_db_upgrade_in_one_line(
    empty_database_url, tmp_path, command
):
    ini = ini_for(tmp_path, empty_database_url)

    result = run(ini, *command)

    assert result.exit_code == 1, result.output
    assert output_lines(result) == [
        f"Error: the database at {empty_database_url} has no locquota schema: run `locquota db upgrade`"
    ]
    assert "Traceback" not in result.output
    assert tables_of(empty_database_url) <= {"alembic_version"}  # nothing was created behind the message


def test_a_command_on_a_database_an_older_release_left_names_both_revisions(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    migrate_to(database_url, OLD_REVISION)
    ini = ini_for(tmp_path, database_url)

    result = run(ini, "tokens", "list")

    assert result.exit_code == 1
    assert output_lines(result) == [
        f"Error: the database at {database_url} is at revision {OLD_REVISION}, older than this locquota's {HEAD}: "
        "run `locquota db upgrade`"
    ]


@pytest.mark.parametrize("command", [("tokens", "list"), ("db", "upgrade"), ("db", "current")], ids=" ".join)
@pytest.mark.parametrize("auto_migrate", ["false", "true"])
def test_an_unreachable_database_is_one_line_with_its_password_masked(tmp_path, command, auto_migrate):
    database_url = closed_port_url("postgresql://locquota:s3cret-pw@", "locquota")
    ini = ini_for(tmp_path, database_url, **{"locquota.auto_migrate": auto_migrate})

    result = run(ini, *command)

    assert result.exit_code == 1
    [line] = output_lines(result)
    masked = database_url.replace("s3cret-pw", "***")
    assert line.startswith(f"Error: cannot reach the database at {masked}: ")
    assert "Connection refused" in line
    assert "s3cret-pw" not in result.output


def test_auto_migrate_lets_a_command_run_on_a_database_never_migrated(empty_database_url, tmp_path):
    ini = ini_for(tmp_path, empty_database_url, **{"locquota.auto_migrate": "true"})

    result = run(ini, "tokens", "list")

    assert result.exit_code == 0, result.output
    assert revision_of(empty_database_url) == HEAD


# --- db upgrade ---------------------------------------------------------------------------------------------------


def test_db_upgrade_on_an_empty_database_says_it_upgraded_from_nothing(empty_database_url, tmp_path):
    ini = ini_for(tmp_path, empty_database_url)

    result = run(ini, "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"upgraded the database from nothing to {HEAD}, the newest revision"
    assert revision_of(empty_database_url) == HEAD


def test_db_upgrade_at_the_newest_revision_says_so_and_changes_nothing(empty_database_url, tmp_path):
    ini = ini_for(tmp_path, empty_database_url)
    run(ini, "db", "upgrade")

    result = run(ini, "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"the database is already at the newest revision, {HEAD}"


def test_db_upgrade_from_an_older_revision_names_both(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    migrate_to(database_url, OLD_REVISION)
    ini = ini_for(tmp_path, database_url)

    result = run(ini, "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"upgraded the database from {OLD_REVISION} to {HEAD}, the newest revision"


# --- db current, db history, --version --------------------------------------------------------------------------


def test_db_current_at_the_newest_revision(empty_database_url, tmp_path):
    ini = ini_for(tmp_path, empty_database_url)
    run(ini, "db", "upgrade")

    result = run(ini, "db", "current")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{HEAD} (the newest revision)\n"


def test_db_current_behind_says_to_upgrade(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    migrate_to(database_url, OLD_REVISION)
    ini = ini_for(tmp_path, database_url)

    result = run(ini, "db", "current")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{OLD_REVISION} (the newest is {HEAD}: run `locquota db upgrade`)\n"


def test_db_history_lists_every_migration_newest_first_without_any_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no development.ini here, and none is needed
    files = sorted(path.name for path in (MIGRATIONS / "versions").glob("[0-9]*.py"))

    result = CliRunner().invoke(cli, ["db", "history"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(files)
    assert [line.split("\t")[0] for line in lines] == [name.split("_")[0] for name in reversed(files)]
    assert lines[0].endswith("(newest)")
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)


def test_version_comes_from_the_installed_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(cli, ["--version"])

    assert result.exit_code == 0
    assert result.stdout == f"locquota {importlib.metadata.version('locquota')}\n"
