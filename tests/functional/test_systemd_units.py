"""deploy/systemd's units, checked against this checkout: systemd's own verifier, then every flag and path.

The units name the layout of docs/deployment.md: a checkout of the release in /opt/locquota with its
virtual environment in /opt/locquota/.venv. Here that is this repository and the venv running the tests,
so `systemd-analyze verify` (which refuses a unit whose executable does not exist) checks copies of the
units with those paths put in. It works offline, without systemd as PID 1; where it cannot run, those two
tests skip and the rest still parse the units: every ExecStart flag is parsed by the program's own parser
(gunicorn's argparse, locquota's click commands), so a flag that does not exist fails here.
"""

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from gunicorn.config import Config

from locquota.cli import cli
from locquota.settings import Settings, check_environment

REPOSITORY = Path(__file__).resolve().parents[2]
UNITS = REPOSITORY / "deploy" / "systemd"
API, SCRUBBER = UNITS / "locquota-api.service", UNITS / "locquota-scrubber.service"
ENVIRONMENT_EXAMPLE = UNITS / "locquota.env.example"
INSTALL_ROOT, INSTALL_VENV_BIN = "/opt/locquota/", "/opt/locquota/.venv/bin/"
VENV_BIN = Path(sys.executable).parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
VERIFY_TIMEOUT = 60
# What loads deploy/gunicorn.conf.py as gunicorn does (every module-level name that is a setting), in a child:
# the file sets PROMETHEUS_MULTIPROC_DIR and makes a directory as it is read.
GRACEFUL_TIMEOUT_OF = """
import runpy, sys
from gunicorn.config import Config
config = Config()
for key, value in runpy.run_path(sys.argv[1]).items():
    if key in config.settings:
        config.set(key, value)
print(config.graceful_timeout)
"""

Unit = dict[str, list[tuple[str, str]]]


def read_unit(text: str) -> Unit:
    """A unit file's sections and their assignments, in order (systemd allows a key several times)."""
    sections: Unit = {}
    current: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, separator, value = line.partition("=")
        assert separator, f"not an assignment: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, key: str, section: str = "Service") -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def value(unit: Unit, key: str, section: str = "Service") -> str:
    found = values(unit, key, section)
    assert found, f"[{section}] {key}= is not set"
    return found[-1]


def seconds(span: str) -> int:
    """A systemd time span as these units write it: 45, 45s, 5min."""
    for suffix, factor in (("min", 60), ("s", 1)):
        if span.endswith(suffix):
            return int(span.removesuffix(suffix)) * factor
    return int(span)


def local_path(installed: str) -> Path:
    """Where an installed path of docs/deployment.md's layout is in this checkout."""
    if installed.startswith(INSTALL_VENV_BIN):
        return VENV_BIN / installed.removeprefix(INSTALL_VENV_BIN)
    assert installed.startswith(INSTALL_ROOT), f"{installed} is not in the layout of docs/deployment.md"
    return REPOSITORY / installed.removeprefix(INSTALL_ROOT)


def is_under(path: str, directory: str) -> bool:
    return Path(path) == Path(directory) or Path(directory) in Path(path).parents


def environment_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as systemd's EnvironmentFile= reads these (comments and blank lines skipped)."""
    variables = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, assigned = line.partition("=")
            variables[key.strip()] = assigned.strip()
    return variables


def production_settings() -> dict[str, str]:
    """production.ini's app section, as the units' /etc/locquota/locquota.ini starts out."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPOSITORY / "production.ini")
    return dict(parser["app:locquota"])


def unit_settings() -> Settings:
    """The settings the units run with: production.ini's, and the sample environment file's variables over them."""
    return Settings.from_ini(production_settings(), environment_file(ENVIRONMENT_EXAMPLE))


def check_gunicorn_command(argv: list[str]) -> Config:
    """gunicorn's own parser over the arguments (SystemExit on an unknown flag); the settings they give."""
    config = Config()
    arguments = config.parser().parse_args(argv)
    for name, given in vars(arguments).items():
        if given is not None and name in config.settings:
            config.set(name, given)
    assert arguments.paste, "gunicorn must serve the .ini with --paste"
    assert local_path(arguments.config).is_file(), arguments.config
    return config


def check_locquota_command(argv: list[str]) -> click.Context:
    """locquota's click group and the command named, over the arguments (click.UsageError on a bad flag)."""
    split = next((n for n, token in enumerate(argv) if token in cli.commands), None)
    assert split is not None, f"no locquota command in {argv}"
    parent = cli.make_context("locquota", argv[:split])
    return cli.commands[argv[split]].make_context(argv[split], argv[split + 1 :], parent=parent)


def check_exec(line: str) -> tuple[str, Config | click.Context | None]:
    """An Exec*= line: its program exists here and accepts every argument; which program, and what it parsed."""
    argv = shlex.split(line.lstrip("-@+!:"))
    program = argv[0]
    if program.startswith(INSTALL_ROOT):
        binary = local_path(program)
        assert binary.is_file(), f"{program}: no {binary}"
        assert os.access(binary, os.X_OK), binary
    else:
        assert Path(program).is_absolute(), program
        assert os.access(program, os.X_OK), program
    name = Path(program).name
    if name == "gunicorn":
        return name, check_gunicorn_command(argv[1:])
    if name == "locquota":
        return name, check_locquota_command(argv[1:])
    return name, None


def test_the_api_unit_starts_gunicorn_on_the_ini_and_reloads_it_with_hup():
    unit = read_unit(API.read_text())

    program, config = check_exec(value(unit, "ExecStart"))

    assert program == "gunicorn"
    assert config.paste == "/etc/locquota/locquota.ini"
    assert value(unit, "Type") == "notify"  # gunicorn's master sends READY=1 once it listens
    assert shlex.split(value(unit, "ExecReload")) == ["/bin/kill", "-s", "HUP", "$MAINPID"]
    assert os.access("/bin/kill", os.X_OK)


def test_the_scrubber_unit_runs_the_daemon_with_its_own_metrics_port():
    unit = read_unit(SCRUBBER.read_text())

    program, context = check_exec(value(unit, "ExecStart"))

    assert program == "locquota"
    assert context.info_name == "scrub"
    assert context.params["daemon"] is True
    assert context.params["metrics_port"] is not None
    assert context.parent.params["config_uri"] == "/etc/locquota/locquota.ini"


@pytest.mark.parametrize(
    ("unit", "wrong", "right"),
    [
        (API, "--paste", "--pastes"),
        (API, "--config", "--configure"),
        (SCRUBBER, "--daemon", "--deamon"),
        (SCRUBBER, "--metrics-port", "--metric-port"),
        (SCRUBBER, "scrub", "scrubb"),
    ],
)
def test_a_unit_naming_a_flag_that_does_not_exist_is_refused(unit, wrong, right):
    line = value(read_unit(unit.read_text()), "ExecStart")
    assert wrong in shlex.split(line)
    misspelt = shlex.join(right if token == wrong else token for token in shlex.split(line))

    with pytest.raises((SystemExit, click.UsageError, AssertionError)):
        check_exec(misspelt)


@pytest.mark.parametrize("path", [API, SCRUBBER], ids=["api", "scrubber"])
def test_a_unit_runs_unprivileged_hardened_and_restarts_on_failure(path):
    unit = read_unit(path.read_text())

    assert value(unit, "User") not in {"", "root", "0"}
    assert value(unit, "Group") not in {"", "root", "0"}
    assert value(unit, "Restart") == "on-failure"
    assert value(unit, "NoNewPrivileges") == "yes"
    assert value(unit, "ProtectSystem") == "strict"
    assert value(unit, "PrivateTmp") == "yes"
    assert value(unit, "CapabilityBoundingSet") == ""
    # SIGTERM to the main process alone: gunicorn's master and the scrubber each end their own work.
    assert (value(unit, "KillSignal"), value(unit, "KillMode")) == ("SIGTERM", "mixed")
    # Its own empty working directory: a folder named `metrics` there would shadow the package.
    assert value(unit, "WorkingDirectory") == f"/var/lib/{value(unit, 'StateDirectory')}"
    assert value(unit, "EnvironmentFile") == "/etc/locquota/locquota.env"
    assert value(unit, "WantedBy", "Install") == "multi-user.target"


def test_the_api_stop_timeout_outlasts_gunicorns_graceful_timeout(tmp_path):
    unit = read_unit(API.read_text())
    _, command_line = check_exec(value(unit, "ExecStart"))
    environment = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    loaded = subprocess.run(
        [sys.executable, "-c", GRACEFUL_TIMEOUT_OF, str(REPOSITORY / "deploy" / "gunicorn.conf.py")],
        env={**environment, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    graceful_seconds = int(loaded.stdout)
    if "--graceful-timeout" in value(unit, "ExecStart"):
        graceful_seconds = command_line.graceful_timeout

    # The master needs graceful_timeout for its workers, then a moment to kill the late ones and exit.
    assert seconds(value(unit, "TimeoutStopSec")) > graceful_seconds


def test_the_scrubber_stop_timeout_lets_a_batch_run_to_its_lease():
    lease_seconds = unit_settings().scrub_lease_seconds

    assert seconds(value(read_unit(SCRUBBER.read_text()), "TimeoutStopSec")) >= lease_seconds


def writable_paths(unit: Unit) -> list[str]:
    """Where the unit may write: ReadWritePaths, and its runtime and state directories."""
    paths = [path.lstrip("-") for line in values(unit, "ReadWritePaths") for path in line.split()]
    paths += [f"/run/{name}" for line in values(unit, "RuntimeDirectory") for name in line.split()]
    return paths + [f"/var/lib/{name}" for line in values(unit, "StateDirectory") for name in line.split()]


def written_paths() -> list[str]:
    """The directories locquota writes in, as the sample environment file and production.ini name them."""
    settings = unit_settings()
    datadirs = [
        options.get("filesystem_store_datadir") or options["datadir"]
        for options in settings.store_options.values()
        if "datadir" in options or "filesystem_store_datadir" in options
    ]
    assert datadirs, "production.ini names no file store directory"
    assert settings.node_staging_uri.startswith("file://"), settings.node_staging_uri
    return [*datadirs, settings.node_staging_uri.removeprefix("file://")]


@pytest.mark.parametrize("path", [API, SCRUBBER], ids=["api", "scrubber"])
def test_every_path_the_deployment_writes_is_writable_under_protect_system_strict(path):
    unit = read_unit(path.read_text())
    writable = writable_paths(unit)
    environment = dict(line.split("=", 1) for line in values(unit, "Environment"))
    needed = written_paths()
    if path == API:
        needed.append(environment["PROMETHEUS_MULTIPROC_DIR"])
        _, config = check_exec(value(unit, "ExecStart"))
        needed.append(config.control_socket)

    assert [directory for directory in needed if not any(is_under(directory, w) for w in writable)] == []


def test_the_environment_file_holds_only_what_locquota_accepts():
    variables = environment_file(ENVIRONMENT_EXAMPLE)

    check_environment(variables)  # every LOCQUOTA_* variable is one locquota reads
    settings = Settings.from_ini(production_settings(), variables)  # and every value parses
    assert settings.redis_sentinels
    # The scrubber's --metrics-port refuses multiprocess mode: only the API unit may name the directory.
    assert "PROMETHEUS_MULTIPROC_DIR" not in variables
    assert not [line for line in values(read_unit(SCRUBBER.read_text()), "Environment") if "PROMETHEUS" in line]


def verify(directory: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--recursive-errors=no", *names],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=False,
    )


@pytest.fixture
def verifier(tmp_path: Path) -> Path:
    """A directory for units to verify, once systemd-analyze is known to work here (else the test skips)."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    (tmp_path / "probe.service").write_text("[Service]\nExecStart=/bin/true\n")
    probe = verify(tmp_path, "probe.service")
    if probe.returncode != 0 or probe.stdout or probe.stderr:
        pytest.skip(f"systemd-analyze verify does not work here: {probe.stdout}{probe.stderr}")
    return tmp_path


def local_copy(unit: Path, directory: Path, replace: tuple[str, str] | None = None) -> str:
    """The unit with this checkout's paths for the layout's, written into directory; its name."""
    text = unit.read_text()
    if replace is not None:
        text = text.replace(*replace)
    text = text.replace(INSTALL_VENV_BIN, f"{VENV_BIN}/").replace(INSTALL_ROOT, f"{REPOSITORY}/")
    (directory / unit.name).write_text(text)
    return unit.name


def test_systemd_analyze_verifies_both_units(verifier):
    names = [local_copy(unit, verifier) for unit in (API, SCRUBBER)]

    verified = verify(verifier, *names)

    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


@pytest.mark.parametrize(
    ("replace", "reported"),
    [
        (("Restart=on-failure", "Restart=sometimes"), "sometimes"),
        (("ProtectSystem=strict", "ProtectSytem=strict"), "ProtectSytem"),
        ((f"{INSTALL_VENV_BIN}gunicorn", f"{INSTALL_VENV_BIN}gunicron"), "gunicron"),
    ],
    ids=["bad value", "misspelt key", "missing program"],
)
def test_systemd_analyze_reports_a_unit_it_cannot_use(verifier, replace, reported):
    name = local_copy(API, verifier, replace)

    verified = verify(verifier, name)

    assert verified.returncode != 0
    assert reported in verified.stderr
