"""Configuration that fails loudly and briefly: LOCQUOTA_* variables, pserve and gunicorn on a bad .ini,
`locquota config check` and `locquota config show`.

The servers are real processes (pserve, gunicorn --paste) on real .ini files; the checks reach the suite's
real databases and Redis, and closed ports on 127.0.0.1 stand for the ones that are down.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet

from locquota.app import configure
from locquota.cli import cli
from locquota.environment import unknown_variables
from locquota.schema_state import head_revision
from locquota.settings import PARSERS, PREFIX, SettingsError
from tests.conftest import closed_port_url, write_ini

REPOSITORY = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HEAD = head_revision()
SERVER = "\n[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:0\n"
# Where the deployment itself reads LOCQUOTA_* variables (tests are left out: they spell wrong names on purpose).
READERS = ("deploy", "scripts", "benchmarks", "locquota", "locations", "quota", "metrics")
VARIABLE = re.compile(r"(?<![A-Za-z0-9_])(?:ENV_)?(LOCQUOTA_[A-Z0-9_]*[A-Z0-9])(?![A-Za-z0-9_])")
PYTHON_NAME = re.compile(r"^\s*(LOCQUOTA_\w+)\s*[:=]", re.MULTILINE)  # a constant (LOCQUOTA_USES), not a variable


def run(ini: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--config", str(ini), *args], env=env)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> dict[str, str]:
    """A deployment on a SQLite file, migrated on first use, without Redis: for failures before any database."""
    return {
        "locquota.database_url": f"sqlite:///{tmp_path / 'locquota.sqlite'}",
        "locquota.auto_migrate": "true",
        "locquota.redis_url": "",
        "locquota.store.file.datadir": str(tmp_path / "images"),
    }


@pytest.fixture
def sqlite_ini(sqlite_settings: dict[str, str], tmp_path: Path) -> Path:
    return write_ini(tmp_path / "sqlite.ini", sqlite_settings)


# --- LOCQUOTA_* variables -----------------------------------------------------------------------------------------


def test_a_misspelt_variable_fails_a_command_in_one_line_naming_the_one_meant(sqlite_ini):
    result = run(sqlite_ini, "tokens", "list", env={"LOCQUOTA_DATABSE_URL": "sqlite:///elsewhere.sqlite"})

    assert result.exit_code == 1
    [line] = lines_of(result.output)
    assert "unknown environment variable LOCQUOTA_DATABSE_URL (did you mean LOCQUOTA_DATABASE_URL?)" in line


def test_a_variable_like_no_known_one_is_named_alone(sqlite_ini):
    result = run(sqlite_ini, "tokens", "list", env={"LOCQUOTA_FROBNICATE": "1"})

    assert result.exit_code == 1
    [line] = lines_of(result.output)
    assert "unknown environment variable LOCQUOTA_FROBNICATE;" in line
    assert "did you mean" not in line


def test_the_app_factory_refuses_an_unknown_variable(sqlite_settings, monkeypatch):
    monkeypatch.setenv("LOCQUOTA_SCRUB_TIEM", "60")

    with pytest.raises(SettingsError, match=r"LOCQUOTA_SCRUB_TIEM \(did you mean LOCQUOTA_SCRUB_TIME\?\)"):
        configure(sqlite_settings)


def test_variables_read_by_the_deployment_are_known_and_commands_run_with_them(sqlite_ini):
    found = set()
    paths = [*REPOSITORY.glob("*.ini"), *(path for top in READERS for path in (REPOSITORY / top).rglob("*"))]
    for path in paths:
        if path.is_file() and path.suffix in {".py", ".ini", ""} and "__pycache__" not in path.parts:
            text = path.read_text(errors="replace")
            found |= set(VARIABLE.findall(text)) - set(PYTHON_NAME.findall(text))
    assert {"LOCQUOTA_WORKERS", "LOCQUOTA_DATABASE_URL"} <= found  # the scan sees both kinds

    assert unknown_variables(dict.fromkeys(found, ""), PARSERS) is None
    others = {"LOCQUOTA_CONFIG": str(sqlite_ini), "LOCQUOTA_WORKERS": "2", "LOCQUOTA_BIND": "127.0.0.1:1"}
    assert run(sqlite_ini, "tokens", "list", env=others).exit_code == 0


# --- pserve and gunicorn on a bad configuration ---------------------------------------------------------------------

BAD_CONFIGURATIONS = [
    pytest.param({"locquota.delayed_delete": "maybe"}, {}, "locquota.delayed_delete = 'maybe'", id="bad-value"),
    pytest.param({"locquota.delayed_delet": "true"}, {}, "locquota.delayed_delet: unknown setting", id="unknown-key"),
    pytest.param({}, {"LOCQUOTA_SCRUB_TIEM": "60"}, "LOCQUOTA_SCRUB_TIEM", id="unknown-variable"),
    pytest.param({"locquota.store.file.bogus": "1"}, {}, "locquota.store.file.bogus", id="bad-store-option"),
]


def server_ini(tmp_path: Path, settings: dict[str, str]) -> Path:
    path = write_ini(tmp_path / "bad.ini", settings)
    path.write_text(path.read_text() + SERVER)
    return path


@pytest.mark.parametrize(("changes", "variables", "named"), BAD_CONFIGURATIONS)
def test_pserve_on_a_bad_configuration_prints_one_line_and_exits_non_zero(
    sqlite_settings, tmp_path, changes, variables, named
):
    ini = server_ini(tmp_path, {**sqlite_settings, **changes})

    finished = subprocess.run(
        [str(VENV_BIN / "pserve"), str(ini)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, **variables},
    )

    assert finished.returncode != 0
    assert lines_of(finished.stdout + finished.stderr) == [finished.stderr.strip()]
    assert finished.stderr.startswith(f"locquota: {ini}: ")
    assert named in finished.stderr


def test_pserve_on_an_unreachable_database_with_auto_migrate_prints_one_line(sqlite_settings, tmp_path):
    database_url = closed_port_url("postgresql://locquota:db-s3cret@", "locquota")
    ini = server_ini(tmp_path, {**sqlite_settings, "locquota.database_url": database_url})

    finished = subprocess.run(
        [str(VENV_BIN / "pserve"), str(ini)], check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )

    assert finished.returncode != 0
    [line] = lines_of(finished.stdout + finished.stderr)
    assert line.startswith(f"locquota: {ini}: the database failed while the app was built: connection failed")
    assert "s3cret" not in line


def test_gunicorn_on_a_bad_setting_stops_with_one_line_of_error(sqlite_settings, tmp_path):
    ini = server_ini(tmp_path, {**sqlite_settings, "locquota.delayed_delete": "maybe"})

    finished = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "--paste", str(ini), "--bind", "127.0.0.1:0", "--workers", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert finished.returncode == 3  # the master stopped (WORKER_BOOT_ERROR), rather than start workers forever
    output = finished.stdout + finished.stderr
    assert [line for line in lines_of(output) if "delayed_delete" in line] == [
        f"locquota: {ini}: locquota.delayed_delete = 'maybe': expected true or false"
    ]
    assert "Traceback" not in output


# --- config check -------------------------------------------------------------------------------------------------


@pytest.fixture
def check_ini(settings: dict[str, str], tmp_path: Path) -> Path:
    return write_ini(tmp_path / "check.ini", {**settings, "locquota.auth_strategy": "tokens"})


def test_config_check_passes_on_a_good_deployment_in_one_line(check_ini, settings):
    result = run(check_ini, "config", "check")

    assert result.exit_code == 0, result.output
    [line] = lines_of(result.output)
    assert line.startswith(f"configuration ok: {check_ini}; ")
    assert f"is at the newest revision, {HEAD}" in line
    assert f"Redis at {settings['locquota.redis_url']} answers" in line


def test_config_check_reports_each_problem_on_its_own_line_secrets_masked(sqlite_settings, tmp_path):
    database_url = closed_port_url("postgresql://locquota:db-s3cret@", "locquota")
    redis_url = closed_port_url("redis://:redis-s3cret@", "0")
    ini = write_ini(
        tmp_path / "broken.ini",
        {
            **sqlite_settings,
            "locquota.database_url": database_url,
            "locquota.redis_url": redis_url,
            "locquota.store.file.bogus": "1",
        },
    )

    result = run(ini, "config", "check")

    assert result.exit_code == 1
    database_line, store_line, redis_line = lines_of(result.output)
    assert database_line.startswith(f"cannot reach the database at {database_url.replace('db-s3cret', '***')}: ")
    assert "locquota.store.file.bogus" in store_line
    assert redis_line.startswith(f"cannot reach Redis at {redis_url.replace('redis-s3cret', '***')}: ")
    assert "s3cret" not in result.output


def test_config_check_on_a_database_never_migrated_says_so_and_leaves_it_unmigrated(sqlite_settings, tmp_path):
    ini = write_ini(tmp_path / "fresh.ini", {**sqlite_settings, "locquota.auto_migrate": "false"})
    database_url = sqlite_settings["locquota.database_url"]

    result = run(ini, "config", "check")

    assert result.exit_code == 1
    assert lines_of(result.output) == [
        f"the database at {database_url} has no locquota schema: run `locquota db upgrade`"
    ]
    assert run(ini, "tokens", "list").exit_code == 1  # still never migrated


@pytest.mark.parametrize("through", ["ini", "variable"])
def test_config_check_with_auto_migrate_notes_the_upgrade_to_come_and_never_migrates(
    sqlite_settings, tmp_path, through
):
    auto_migrate = "true" if through == "ini" else "false"
    ini = write_ini(tmp_path / "fresh.ini", {**sqlite_settings, "locquota.auto_migrate": auto_migrate})
    variables = {"LOCQUOTA_AUTO_MIGRATE": "true"} if through == "variable" else {}

    result = run(ini, "config", "check", env=variables)

    assert result.exit_code == 0, result.output
    [line] = lines_of(result.output)
    assert "is at no revision: auto_migrate upgrades it at start" in line
    plain = write_ini(tmp_path / "plain.ini", {**sqlite_settings, "locquota.auto_migrate": "false"})
    assert "has no locquota schema" in run(plain, "tokens", "list").output
    assert os.environ.get("LOCQUOTA_AUTO_MIGRATE") is None  # the variable was given back as it was


@pytest.mark.parametrize(
    ("changes", "variables", "named"),
    [
        ({"locquota.api_limit_max": "-3"}, {}, "locquota.api_limit_max"),
        ({}, {"LOCQUOTA_REDIS_ULR": "redis://127.0.0.1:1/0"}, "LOCQUOTA_REDIS_ULR (did you mean LOCQUOTA_REDIS_URL?)"),
    ],
    ids=["bad-value", "unknown-variable"],
)
def test_config_check_on_bad_settings_is_one_line(sqlite_settings, tmp_path, changes, variables, named):
    ini = write_ini(tmp_path / "bad.ini", {**sqlite_settings, **changes})

    result = run(ini, "config", "check", env=variables)

    assert result.exit_code == 1
    [line] = lines_of(result.output)
    assert named in line


# --- config show --------------------------------------------------------------------------------------------------


def shown(result: Result) -> dict[str, tuple[str, str]]:
    """key -> (value, source) from `config show`'s `key = value  (source)` lines."""
    pairs = {}
    for line in result.stdout.splitlines():
        key, _, rest = line.partition(" = ")
        value, _, source = rest.rpartition("  (")
        assert key not in pairs, key
        pairs[key] = (value, source.removesuffix(")"))
    return pairs


def test_config_show_lists_every_setting_once_with_its_source(sqlite_settings, tmp_path):
    ini = write_ini(tmp_path / "show.ini", {**sqlite_settings, "locquota.delayed_delete": "yes"})

    result = run(ini, "config", "show", env={"LOCQUOTA_SCRUB_TIME": "7", "LOCQUOTA_WORKERS": "2"})

    assert result.exit_code == 0, result.output
    settings = shown(result)
    assert {key for key in settings if not key.startswith(("locquota.quota.", "locquota.store."))} == {
        PREFIX + name for name in PARSERS
    }
    assert settings["locquota.scrub_time"] == ("7", "LOCQUOTA_SCRUB_TIME")
    assert settings["locquota.delayed_delete"] == ("true", ".ini")
    assert settings["locquota.wakeup_time"] == ("300", "default")
    assert settings["locquota.redis_timeout_seconds"] == ("0.25", "default")
    assert settings["locquota.import_allowed_ports"] == ("80, 443", "default")
    assert settings["locquota.quota.locations_per_image"] == ("10", "default")
    assert settings["locquota.store.file.datadir"] == (sqlite_settings["locquota.store.file.datadir"], ".ini")


def test_config_show_masks_every_secret(sqlite_settings, tmp_path):
    key = Fernet.generate_key().decode()
    ini = write_ini(
        tmp_path / "secrets.ini",
        {
            **sqlite_settings,
            "locquota.database_url": "postgresql://locquota:db-s3cret@db.example/locquota?sslpassword=ssl-s3cret",
            "locquota.redis_url": "redis://:redis-s3cret@cache.example:6379/0",
            "locquota.enabled_backends": "local:file, cloud:s3",
            "locquota.default_backend": "local",
            "locquota.store.local.filesystem_store_datadir": str(tmp_path / "images"),
            "locquota.store.cloud.s3_store_host": "https://s3.example",
            "locquota.store.cloud.s3_store_access_key": "access-s3cret",
            "locquota.store.cloud.s3_store_secret_key": "secret-s3cret",
        },
    )

    result = run(ini, "config", "show", env={"LOCQUOTA_LOCATION_ENCRYPTION_KEYS": key})

    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert key not in result.output
    settings = shown(result)
    assert settings["locquota.database_url"][0] == "postgresql://locquota:***@db.example/locquota?sslpassword=***"
    assert settings["locquota.redis_url"][0] == "redis://:***@cache.example:6379/0"
    assert settings["locquota.location_encryption_keys"] == ("***", "LOCQUOTA_LOCATION_ENCRYPTION_KEYS")
    assert settings["locquota.store.cloud.s3_store_secret_key"] == ("***", ".ini")
    assert settings["locquota.store.cloud.s3_store_host"] == ("https://s3.example", ".ini")
    assert settings["locquota.enabled_backends"] == ("local:file, cloud:s3", ".ini")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("garbage line\n", "File contains no section headers"),
        ("[server:main]\nuse = egg:waitress#main\n", "No section"),
    ],
    ids=["not-an-ini", "no-app-section"],
)
@pytest.mark.parametrize("command", [("config", "check"), ("config", "show"), ("tokens", "list")], ids=" ".join)
def test_a_file_that_is_no_deployment_is_one_line(tmp_path, text, named, command):
    ini = tmp_path / "wrong.ini"
    ini.write_text(text)

    result = run(ini, *command)

    assert result.exit_code == 1
    [line] = lines_of(result.output)
    assert named in line
