"""A real Keystone for the end-to-end tests: PyPI's keystone, on SQLite, under gunicorn on 127.0.0.1.

Keystone pins its own dependencies, so it lives in a virtual environment of its own, `.venv-keystone`
(made by scripts/keystone-venv, which the fixture runs: it returns at once when the venv is there).
The test process only talks HTTP to it, with keystoneauth1, as python-glanceclient and openstacksdk do.

Who is who (Keystone's default roles, as `keystone-manage bootstrap` creates them; admin implies member,
member implies reader):

    p1-member     member on p1                      p1-reader    reader on p1
    p2-member     member on p2                      cloud-admin  admin on p1 and on the system
    p1-norole     no role anywhere: Keystone gives it only unscoped tokens (a p1 token is a 401)
    nova          service on project service        locquota     service on project service and reader
                                                                 on the system (oslo.limit reads limits so)

Registered limits of the `glance` service (type image), Glance's resource names, sizes in MiB as Glance
counts them: image_size_total 1000, image_count_total 100, image_count_uploading 10, image_stage_total 1000;
p2 has project limits image_size_total 5 and image_count_total 3.
"""

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import port_for
import pytest
import requests
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3

from tests.servers import log_tail

REPOSITORY = Path(__file__).resolve().parent.parent
KEYSTONE_VENV = REPOSITORY / ".venv-keystone"
KEYSTONE_VENV_SCRIPT = REPOSITORY / "scripts" / "keystone-venv"
# Bounds on waits; reaching one is a failure, never a synchronisation.
VENV_DEADLINE = 600
MANAGE_DEADLINE = 120
START_DEADLINE = 30
STOP_DEADLINE = 10
REQUEST_TIMEOUT = 10

REGION = "RegionOne"
DOMAIN = "Default"
GLANCE_URL = "http://127.0.0.1:9292"
PROJECTS = ("p1", "p2", "service")
REGISTERED_LIMITS = {
    "image_size_total": 1000,
    "image_count_total": 100,
    "image_count_uploading": 10,
    "image_stage_total": 1000,
}
PROJECT_LIMITS = {"p2": {"image_size_total": 5, "image_count_total": 3}}


@dataclass(frozen=True, slots=True)
class User:
    """A user of the test cloud: its home project (the token scope when none is asked) and its roles."""

    name: str
    project: str | None
    project_roles: tuple[tuple[str, str], ...] = ()
    system_roles: tuple[str, ...] = ()

    @property
    def password(self) -> str:
        return f"{self.name}-secret"


USERS = {
    user.name: user
    for user in (
        User("p1-member", "p1", (("p1", "member"),)),
        User("p1-reader", "p1", (("p1", "reader"),)),
        User("p1-norole", None),
        User("p2-member", "p2", (("p2", "member"),)),
        User("cloud-admin", "p1", (("p1", "admin"),), ("admin",)),
        User("nova", "service", (("service", "service"),)),
        User("locquota", "service", (("service", "service"),), ("reader",)),
    )
}
# Made by `keystone-manage bootstrap`: admin on project admin and on the system.
ADMIN = User("admin", "admin", (("admin", "admin"),), ("admin",))

KEYSTONE_CONF = """\
[DEFAULT]
log_file = {workdir}/keystone.log
use_stderr = false

[database]
connection = sqlite:///{workdir}/keystone.sqlite
sqlite_synchronous = false

[fernet_tokens]
key_repository = {workdir}/fernet-keys

[fernet_receipts]
key_repository = {workdir}/fernet-keys

[credential]
key_repository = {workdir}/credential-keys

[identity]
password_hash_rounds = 4

[token]
expiration = 86400

[cache]
enabled = true
backend = dogpile.cache.memory
"""

# gunicorn's arguments are in sys.argv when the app loads, and Keystone parses sys.argv with oslo.config.
WSGI_WRAPPER = """\
import sys

sys.argv = sys.argv[:1]

from keystone.server import wsgi  # noqa: E402

application = wsgi.initialize_public_application()
"""


def _user(name: str) -> User:
    return ADMIN if name == ADMIN.name else USERS[name]


def ensure_keystone_venv() -> None:
    """Create (or check) .venv-keystone with scripts/keystone-venv; fail the test run if that cannot be done."""
    try:
        done = subprocess.run(
            [str(KEYSTONE_VENV_SCRIPT)], check=False, capture_output=True, text=True, timeout=VENV_DEADLINE
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.fail(f"scripts/keystone-venv could not make {KEYSTONE_VENV}: {error}")
    if done.returncode != 0:
        pytest.fail(f"scripts/keystone-venv failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def _http() -> requests.Session:
    """A requests session that ignores proxy variables: Keystone is on 127.0.0.1."""
    http = requests.Session()
    http.trust_env = False
    return http


class KeystoneServer:
    """A throwaway Keystone: set up in a temp dir, served on a free port, populated; stop() and start() again."""

    def __init__(self, glance_url: str = GLANCE_URL) -> None:
        self.glance_url = glance_url
        self.workdir = Path(tempfile.mkdtemp(prefix="locquota-keystone-"))
        self.port = port_for.select_random()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/v3"
        self.project_ids: dict[str, str] = {}
        self.user_ids: dict[str, str] = {}
        self.role_ids: dict[str, str] = {}
        self.glance_service_id = ""
        self.glance_endpoint_id = ""
        self.registered_limit_ids: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._http = _http()
        self._admin: ksa_session.Session | None = None
        self._env = {
            **{name: value for name, value in os.environ.items() if not name.startswith("OS_")},
            "OS_KEYSTONE_CONFIG_DIR": str(self.workdir),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            # Keystone imports eventlet, whose deprecation warning would fill the log tails a failure shows.
            "PYTHONWARNINGS": "ignore",
        }
        self._logs = (self.workdir / "manage.log", self.workdir / "keystone.log", self.workdir / "gunicorn.log")

    # Lifecycle -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Make the database and keys, start the server and create the test cloud's projects, users and limits."""
        (self.workdir / "keystone.conf").write_text(KEYSTONE_CONF.format(workdir=self.workdir))
        (self.workdir / "keystone_wsgi.py").write_text(WSGI_WRAPPER)
        # As root, keystone-manage requires the owner of the key repositories: whoever serves Keystone (us).
        owner = ["--keystone-user", pwd.getpwuid(os.geteuid()).pw_name]
        owner += ["--keystone-group", grp.getgrgid(os.getegid()).gr_name]
        # The key repositories do not touch the database: made while db_sync runs. Each keystone-manage spends
        # about 2 s importing Keystone, so gunicorn's worker loads it while bootstrap fills the database.
        self._finish([self._manage(["db_sync"]), self._manage(["fernet_setup", *owner]),
                      self._manage(["credential_setup", *owner])])  # fmt: skip
        bootstrap = self._manage(
            [
                "bootstrap", "--bootstrap-username", ADMIN.name, "--bootstrap-password", ADMIN.password,
                "--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin",
                "--bootstrap-region-id", REGION, "--bootstrap-public-url", self.base_url,
            ]
        )  # fmt: skip
        try:
            self.start()
        finally:
            self._finish([bootstrap])
        self._populate()

    def _manage(self, command: list[str]) -> subprocess.Popen[bytes]:
        """Start `keystone-manage <command>` on this server's configuration, its output to manage.log."""
        manage = [str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(self.workdir / "keystone.conf")]
        with (self.workdir / "manage.log").open("ab") as log:
            return subprocess.Popen([*manage, *command], stdout=log, stderr=subprocess.STDOUT, env=self._env)

    def _finish(self, running: list[subprocess.Popen[bytes]]) -> None:
        """Wait for keystone-manage commands; fail with their output if one fails."""
        failed = []
        for process in running:
            try:
                process.wait(timeout=MANAGE_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode != 0:
                failed.append(f"{process.args[3]} ({process.returncode})")
        if failed:
            pytest.fail(f"keystone-manage failed: {', '.join(failed)}\n{log_tail(*self._logs)}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Serve Keystone (unless it runs) and return once GET /v3 answers; fail with the logs otherwise."""
        if self.is_running():
            return
        command = [
            str(KEYSTONE_VENV / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
            "--worker-class", "gthread", "--threads", "4", "--graceful-timeout", "5", "--chdir", str(self.workdir),
            "--pythonpath", str(self.workdir), "--access-logfile", str(self.workdir / "access.log"),
            "--no-control-socket", "keystone_wsgi:application",
        ]  # fmt: skip
        # gunicorn 27 opens a control socket at ~/.gunicorn/gunicorn.ctl by default: one path for every gunicorn.
        with (self.workdir / "gunicorn.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._env)
        deadline = time.monotonic() + START_DEADLINE
        while not self._answers():
            if self.process.poll() is not None:
                pytest.fail(f"Keystone's gunicorn exited ({self.process.returncode}):\n{log_tail(*self._logs)}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Keystone did not answer GET /v3 within {START_DEADLINE} s:\n{log_tail(*self._logs)}")
            time.sleep(0.05)  # polling an observed condition (a poll interval, not a synchronisation)

    def _answers(self) -> bool:
        try:
            response = self._http.get(self.url, timeout=1)
        except (requests.ConnectionError, requests.Timeout):
            # gunicorn listens before its worker has loaded Keystone: a connection may wait (or be refused).
            return False
        return response.status_code == 200 and response.json()["version"]["id"].startswith("v3")

    def stop(self) -> None:
        """Stop at once (gunicorn's quick shutdown) and wait until it is gone: the port is closed from here on."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_DEADLINE)
        self.process = None

    def remove(self) -> None:
        """Stop and delete everything."""
        self.stop()
        self._http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "KeystoneServer":
        try:
            self.setup()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # Tokens and client options ---------------------------------------------------------------------------------

    def password(self, user: str) -> str:
        return _user(user).password

    def session(self, user: str, project: str | None = None, *, system: bool = False) -> ksa_session.Session:
        """A keystoneauth1 session for a user: system scope, the project given, else the user's home project.

        p1-norole has no home project: its session holds an unscoped token.
        """
        scope: dict[str, str] = {}
        if system:
            scope["system_scope"] = "all"
        elif project := project or _user(user).project:
            scope = {"project_name": project, "project_domain_name": DOMAIN}
        auth = v3.Password(
            auth_url=self.url, username=user, password=self.password(user), user_domain_name=DOMAIN, **scope
        )
        return ksa_session.Session(auth=auth, session=_http(), timeout=REQUEST_TIMEOUT)

    def token(self, user: str, project: str | None = None, *, system: bool = False) -> str:
        """A fresh token by password authentication (keystoneauth1 raises Unauthorized when Keystone refuses)."""
        return self.session(user, project, system=system).get_token()

    def validate(self, token: str) -> dict[str, Any]:
        """The token as Keystone sees it (GET /v3/auth/tokens): roles, project or system, user, expiry."""
        return self._admin_get("/auth/tokens", headers={"X-Subject-Token": token})["token"]

    def auth_options(self, user: str, project: str | None = None) -> dict[str, str]:
        """What a client needs to log in as this user (openstacksdk's auth dict; glanceclient's --os-* options).

        The project is the one given, else the user's home project (p1 for p1-norole, which Keystone refuses).
        """
        return {
            "auth_url": self.url,
            "username": user,
            "password": self.password(user),
            "project_name": project or _user(user).project or "p1",
            "user_domain_name": DOMAIN,
            "project_domain_name": DOMAIN,
        }

    def oslo_limit_options(self) -> dict[str, str]:
        """[oslo_limit] options for locquota's service user: system-scoped reader, limits of the glance endpoint."""
        return {
            "auth_type": "password",
            "auth_url": self.url,
            "username": "locquota",
            "password": self.password("locquota"),
            "user_domain_name": DOMAIN,
            "system_scope": "all",
            "endpoint_id": self.glance_endpoint_id,
        }

    def authtoken_options(self) -> dict[str, str]:
        """[filter:authtoken] options for keystonemiddleware's auth_token, as locquota's service user.

        `interface = public`: this Keystone has only a public identity endpoint (auth_token asks for internal).
        """
        return {
            "www_authenticate_uri": self.base_url,
            "auth_url": self.base_url,
            "auth_type": "password",
            "username": "locquota",
            "password": self.password("locquota"),
            "user_domain_name": DOMAIN,
            "project_name": "service",
            "project_domain_name": DOMAIN,
            "interface": "public",
        }

    def set_glance_url(self, url: str) -> None:
        """Point the catalog's image endpoint at a server of the test's own (tokens issued after this see it)."""
        self._admin_request("PATCH", f"/endpoints/{self.glance_endpoint_id}", json={"endpoint": {"url": url}})
        self.glance_url = url

    # Limits ----------------------------------------------------------------------------------------------------

    def project_limits(self, project: str) -> dict[str, dict[str, Any]]:
        """The project limits of one project for the glance service, by resource name."""
        limits = self._admin_get(f"/limits?service_id={self.glance_service_id}&project_id={self.project_ids[project]}")
        return {limit["resource_name"]: limit for limit in limits["limits"]}

    def set_project_limit(self, project: str, resource: str, value: int | None) -> None:
        """Give a project its own limit for a resource (None: back to the registered default)."""
        current = self.project_limits(project).get(resource)
        if current is not None and value is None:
            self._admin_request("DELETE", f"/limits/{current['id']}")
        elif current is not None:
            self._admin_request("PATCH", f"/limits/{current['id']}", json={"limit": {"resource_limit": value}})
        elif value is not None:
            self._create_limits({project: {resource: value}})

    def set_registered_limit(self, resource: str, value: int) -> None:
        """Change the default limit of a resource for every project without a limit of its own.

        Keystone refuses (403) while any project has a limit of its own for the resource: remove those first
        (set_project_limit(project, resource, None)).
        """
        self._admin_request(
            "PATCH",
            f"/registered_limits/{self.registered_limit_ids[resource]}",
            json={"registered_limit": {"default_limit": value}},
        )

    def reset_limits(self) -> None:
        """Back to the limits this server started with (for tests that change them)."""
        registered = self._admin_get(f"/registered_limits?service_id={self.glance_service_id}")["registered_limits"]
        stale = {
            limit["resource_name"]
            for limit in registered
            if limit["default_limit"] != REGISTERED_LIMITS[limit["resource_name"]]
        }
        # Project limits of a stale registered limit go too: Keystone changes no registered limit they refer to.
        for project in PROJECTS:
            wanted = PROJECT_LIMITS.get(project, {})
            for resource, limit in self.project_limits(project).items():
                if resource in stale or wanted.get(resource) != limit["resource_limit"]:
                    self._admin_request("DELETE", f"/limits/{limit['id']}")
        for resource in stale:
            self.set_registered_limit(resource, REGISTERED_LIMITS[resource])
        for project, wanted in PROJECT_LIMITS.items():
            current = self.project_limits(project)
            self._create_limits({project: {name: value for name, value in wanted.items() if name not in current}})

    # Populating ------------------------------------------------------------------------------------------------

    def _admin_session(self) -> ksa_session.Session:
        if self._admin is None:
            self._admin = self.session(ADMIN.name, system=True)
        return self._admin

    def _admin_request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._admin_session().request(f"{self.url}{path}", method, **kwargs)
        return response.json() if response.content else None

    def _admin_get(self, path: str, **kwargs: Any) -> Any:
        return self._admin_request("GET", path, **kwargs)

    def _create_limits(self, limits: dict[str, dict[str, int]]) -> None:
        body = [
            {
                "service_id": self.glance_service_id,
                "region_id": REGION,
                "project_id": self.project_ids[project],
                "resource_name": resource,
                "resource_limit": value,
            }
            for project, values in limits.items()
            for resource, value in values.items()
        ]
        if body:
            self._admin_request("POST", "/limits", json={"limits": body})

    def _populate(self) -> None:
        """The test cloud: projects, users with their roles, the glance service and its limits."""
        self.role_ids = {role["name"]: role["id"] for role in self._admin_get("/roles")["roles"]}
        for name in PROJECTS:
            project = self._admin_request("POST", "/projects", json={"project": {"name": name, "domain_id": "default"}})
            self.project_ids[name] = project["project"]["id"]
        for user in USERS.values():
            body = {"name": user.name, "password": user.password, "domain_id": "default"}
            user_id = self._admin_request("POST", "/users", json={"user": body})["user"]["id"]
            self.user_ids[user.name] = user_id
            for project, role in user.project_roles:
                self._admin_request(
                    "PUT", f"/projects/{self.project_ids[project]}/users/{user_id}/roles/{self.role_ids[role]}"
                )
            for role in user.system_roles:
                self._admin_request("PUT", f"/system/users/{user_id}/roles/{self.role_ids[role]}")
        service = self._admin_request("POST", "/services", json={"service": {"name": "glance", "type": "image"}})
        self.glance_service_id = service["service"]["id"]
        endpoint = {"service_id": self.glance_service_id, "interface": "public", "url": self.glance_url}
        endpoint["region_id"] = REGION
        self.glance_endpoint_id = self._admin_request("POST", "/endpoints", json={"endpoint": endpoint})["endpoint"][
            "id"
        ]
        registered = [
            {"service_id": self.glance_service_id, "region_id": REGION, "resource_name": name, "default_limit": value}
            for name, value in REGISTERED_LIMITS.items()
        ]
        created = self._admin_request("POST", "/registered_limits", json={"registered_limits": registered})
        self.registered_limit_ids = {limit["resource_name"]: limit["id"] for limit in created["registered_limits"]}
        self._create_limits(PROJECT_LIMITS)


@pytest.fixture(scope="session", name="keystone")
def keystone_fixture() -> Iterator[KeystoneServer]:
    """One real Keystone for the test session (tests that change limits call reset_limits() after).

    Register it with `from tests.keystone import keystone_fixture  # noqa: F401` in a conftest.py (once: each
    import into another module is another fixture definition, and so another Keystone).
    """
    ensure_keystone_venv()
    with KeystoneServer() as server:
        yield server
