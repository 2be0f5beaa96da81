"""A real single-node OpenStack Swift for the end-to-end tests, from Debian's packages, behind the suite's Keystone.

Debian's swift, swift-proxy, swift-account, swift-container, swift-object, python3-keystonemiddleware and memcached
(scripts/bootstrap --test installs them). Everything lives in one temp dir and listens on free ports of 127.0.0.1:
a memcached of the cluster's own (never the machine's), rings made by swift-ring-builder's main() (part power 6,
one replica, one device), the account, container and object servers and the proxy, each a single process
(`workers = 0`) under Debian's /usr/bin/python3 (the only Python that imports Debian's swift module).

The proxy authenticates through the suite's real Keystone (tests/keystone.py), as a cloud runs it:

    catch_errors proxy-logging cache authtoken keystoneauth proxy-logging proxy-server

Registered in that Keystone by the fixture (and removed again at the end):

    service swift (object-store)  public endpoint <proxy>/v1/AUTH_%(project_id)s
    swift         service on project service      the proxy's auth_token validates tokens as this user
    glance-swift  member on project service       glance_store's single-tenant store logs in as this user, so
                                                  its images live in the account AUTH_<id of project service>

keystoneauth lets in tokens with admin or member on the account's project (`operator_roles`); anyone else is a
403, and a request without a token a 401.

Each server reads swift.conf (hash prefix and storage policies) from the cluster's own swift_dir, not from
/etc/swift (a small launcher sets it before run_wsgi), and logs to its own file, not to syslog.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import port_for
import pytest
import requests
import swiftclient
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3

from tests.keystone import DOMAIN, REGION, KeystoneServer
from tests.servers import log_tail

# Debian's interpreter and tools: another python3 may be first on PATH, and only this one imports Debian's swift.
SWIFT_PYTHON = "/usr/bin/python3"
SWIFT_RING_BUILDER = "/usr/bin/swift-ring-builder"
MEMCACHED = "/usr/bin/memcached"
INSTALL_HINT = (
    "apt-get install swift swift-proxy swift-account swift-container swift-object python3-keystonemiddleware "
    "memcached (scripts/bootstrap --test)"
)
# Bounds on waits; reaching one is a failure, never a synchronisation.
RING_DEADLINE = 60
START_DEADLINE = 30
STOP_DEADLINE = 10
REQUEST_TIMEOUT = 10

BACKENDS = ("account", "container", "object")
SERVERS = ("memcached", *BACKENDS, "proxy")  # in start order
PART_POWER = 6
DEVICE = "d1"
PROJECT = "service"
SWIFT_USER = "swift"  # the proxy's auth_token user
GLANCE_USER = "glance-swift"  # the user glance_store logs in as
CONTAINER = "glance"
PROXY_LOCAL_HOSTS = "127.0.0.1,localhost"

SWIFT_CONF = """\
[swift-hash]
swift_hash_path_prefix = locquota-tests
swift_hash_path_suffix = locquota-tests

[storage-policy:0]
name = Policy-0
default = yes
"""

COMMON_CONF = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {workdir}
devices = {workdir}/devices
mount_check = false
log_name = {server}-server
log_level = INFO
"""

BACKEND_CONF = """\

[pipeline:main]
pipeline = {server}-server

[app:{server}-server]
use = egg:swift#{server}
"""

PROXY_CONF = """\

[pipeline:main]
pipeline = catch_errors proxy-logging cache authtoken keystoneauth slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
# A client that stops sending mid-body (glance_store 5.7.0 does, see tests/e2e/test_swift_server.py) gets its
# 408 after this many seconds rather than the default 60.
client_timeout = 10

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = {keystone_base_url}
auth_url = {keystone_base_url}
auth_type = password
username = {swift_user}
password = {swift_password}
user_domain_id = default
project_name = {project}
project_domain_id = default
interface = public
delay_auth_decision = True
cache = swift.cache
include_service_catalog = False
service_token_roles_required = True

[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
reseller_prefix = AUTH_

# Static and dynamic large objects, as every stock proxy pipeline has them: locquota's swift store writes
# images above one segment as a Static Large Object, glance_store as a Dynamic one.
[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""

# run_wsgi reads /etc/swift/swift.conf unless told otherwise, and logs to /dev/log (else UDP syslog on
# localhost:514): this cluster's swift.conf, and its log only on stderr (verbose), which goes to a file.
LAUNCHER = """\
import logging
import sys

from swift.common import storage_policy, utils
from swift.common.wsgi import run_wsgi


class NoSyslog(logging.NullHandler):
    def __init__(self, *args, **kwargs):
        super().__init__()


swift_dir, server, conf_file = sys.argv[1:]
utils.ThreadSafeSysLogHandler = NoSyslog
utils.set_swift_dir(swift_dir)
storage_policy.reload_storage_policies()
sys.exit(run_wsgi(conf_file, server, verbose=True))
"""


# Each swift-ring-builder run spends most of its second importing Swift: its main() once per command, in one
# interpreter, makes the three rings in a fraction of the time (the same code as /usr/bin/swift-ring-builder).
RING_BUILDER = """\
import sys

from swift.cli.ringbuilder import main

workdir, part_power, device, *rings = sys.argv[1:]
for ring in rings:
    name, port = ring.split(":")
    builder = f"{workdir}/{name}.builder"
    device_options = ["--region", "1", "--zone", "1", "--ip", "127.0.0.1", "--port", port, "--device", device]
    for command in (["create", part_power, "1", "1"], ["add", *device_options, "--weight", "100"], ["rebalance"]):
        try:
            main(["swift-ring-builder", builder, *command])
        except SystemExit as exit:
            if exit.code not in (None, 0):
                sys.exit(f"swift-ring-builder {builder} {command[0]}: exit status {exit.code}")
"""


def _password(user: str) -> str:
    return f"{user}-secret"


def _http() -> requests.Session:
    """A requests session that ignores proxy variables: every server here is on 127.0.0.1."""
    http = requests.Session()
    http.trust_env = False
    return http


def _free_ports(count: int) -> list[int]:
    """Distinct free ports on this machine (port_for may pick one twice)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := port_for.select_random()) not in ports:
            ports.append(port)
    return ports


def check_installed() -> None:
    """Fail (never skip) when Debian's Swift, keystonemiddleware or memcached is missing."""
    tools = [SWIFT_PYTHON, SWIFT_RING_BUILDER, MEMCACHED]
    tools += [f"/usr/bin/swift-{server}-server" for server in (*BACKENDS, "proxy")]
    missing = [path for path in tools if not os.access(path, os.X_OK)]
    probe = subprocess.run(
        [SWIFT_PYTHON, "-c", "import swift, keystonemiddleware"],
        check=False,
        capture_output=True,
        text=True,
        env=_server_env(),
    )
    if probe.returncode != 0:
        missing.append(f"modules of {SWIFT_PYTHON} ({probe.stderr.strip().splitlines()[-1:]})")
    if missing:
        pytest.fail(f"Swift cannot run here, missing: {', '.join(missing)}: {INSTALL_HINT}")


def _server_env() -> dict[str, str]:
    """The environment of the Swift processes: no PYTHON* or OS_* settings of the test run, no HTTP proxy."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "OS_")) and name.lower() not in proxies
    }
    # Swift and keystonemiddleware import eventlet, whose deprecation warnings would fill the log tails.
    return {**env, "NO_PROXY": PROXY_LOCAL_HOSTS, "no_proxy": PROXY_LOCAL_HOSTS, "PYTHONWARNINGS": "ignore"}


class SwiftCluster:
    """A throwaway Swift behind the given Keystone: set up, stop_proxy()/start_proxy() for an outage, remove()."""

    def __init__(self, keystone: KeystoneServer) -> None:
        self.keystone = keystone
        self.workdir = Path(tempfile.mkdtemp(prefix="locquota-swift-"))
        ports = _free_ports(2 + len(BACKENDS))
        self.memcached_port, self.proxy_port = ports[:2]
        self.backend_ports = dict(zip(BACKENDS, ports[2:], strict=True))
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.project_id = ""
        # The storage URL of the glance user's account, as Keystone's catalog gives it.
        self.account_url = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._env = _server_env()
        self._http = _http()
        self._registered: list[str] = []  # Keystone paths to DELETE at the end, newest first

    # Lifecycle -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Write the configuration, build the rings, register Swift in Keystone, start everything; fail if not."""
        check_installed()
        self._configure()
        self._build_rings()
        for server in SERVERS:
            self._start(server)
        self._register()  # while the servers start: the proxy asks Keystone only once requests come
        for server in SERVERS:
            self._wait(server)
        self._check_login()

    def start_proxy(self) -> None:
        """Start the proxy again on its port (unless it runs) and return once it answers."""
        if self.is_running("proxy"):
            return
        self._start("proxy")
        self._wait("proxy")

    def stop_proxy(self) -> None:
        """Stop the proxy and wait until it is gone: connections to proxy_url are refused from here on."""
        self._stop("proxy")

    def stop(self) -> None:
        """Stop every process of the cluster (the proxy first)."""
        for server in reversed(SERVERS):
            self._stop(server)

    def remove(self) -> None:
        """Stop, take Swift out of Keystone again and delete everything."""
        self.stop()
        try:
            for path in self._registered:
                self.keystone._admin_request("DELETE", path)
        finally:
            self._http.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "SwiftCluster":
        try:
            self.setup()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def is_running(self, server: str) -> bool:
        process = self.processes.get(server)
        return process is not None and process.poll() is None

    # Clients ---------------------------------------------------------------------------------------------------

    def password(self, user: str = GLANCE_USER) -> str:
        return _password(user)

    def token(self, user: str = GLANCE_USER) -> str:
        """A fresh Keystone token of a Swift user (the glance user by default), scoped to project service."""
        auth = v3.Password(
            auth_url=self.keystone.url,
            username=user,
            password=_password(user),
            user_domain_name=DOMAIN,
            project_name=PROJECT,
            project_domain_name=DOMAIN,
        )
        return ksa_session.Session(auth=auth, session=_http(), timeout=REQUEST_TIMEOUT).get_token()

    def connection(self, **options: object) -> swiftclient.Connection:
        """A python-swiftclient connection as the glance user: Keystone v3 login, storage URL from the catalog."""
        return swiftclient.Connection(
            authurl=self.keystone.url,
            user=GLANCE_USER,
            key=_password(GLANCE_USER),
            auth_version="3",
            os_options={
                "project_name": PROJECT,
                "project_domain_id": "default",
                "user_domain_id": "default",
                "endpoint_type": "public",
            },
            timeout=REQUEST_TIMEOUT,
            retries=0,
            **options,
        )

    def objects(self, container: str = CONTAINER) -> list[str]:
        """The names of the objects in a container of the glance user's account ([] when there is no container)."""
        with closing(self.connection()) as connection:
            try:
                _headers, listing = connection.get_container(container, full_listing=True)
            except swiftclient.ClientException as error:
                if error.http_status == 404:
                    return []
                raise
        return [entry["name"] for entry in listing]

    def glance_store_options(self, container: str = CONTAINER) -> dict[str, str]:
        """A glance_store swift backend section, single tenant, credentials in the section itself.

        glance_store 5.7.0 has no option for the domains here: it logs in with user and project in the domain
        of id `default`, the suite's Keystone's only domain. Its location URLs then carry the user and key.
        """
        return {
            "swift_store_auth_address": self.keystone.url,
            "swift_store_user": f"{PROJECT}:{GLANCE_USER}",
            "swift_store_key": _password(GLANCE_USER),
            "swift_store_auth_version": "3",
            "swift_store_container": container,
            "swift_store_create_container_on_put": "True",
        }

    def swift_store_reference(self) -> dict[str, str]:
        """One reference of a glance_store `swift_store_config_file` (its section is the reference's name).

        With a config file, location URLs are `swift+config://<reference>/<container>/<object>`: no credentials.
        """
        return {
            "auth_address": self.keystone.url,
            "user": f"{PROJECT}:{GLANCE_USER}",
            "key": _password(GLANCE_USER),
            "user_domain_id": "default",
            "project_domain_id": "default",
        }

    # Setting up ------------------------------------------------------------------------------------------------

    def _configure(self) -> None:
        (self.workdir / "swift.conf").write_text(SWIFT_CONF)
        (self.workdir / "launch_swift.py").write_text(LAUNCHER)
        (self.workdir / "build_rings.py").write_text(RING_BUILDER)
        (self.workdir / "devices" / DEVICE).mkdir(parents=True)
        user = pwd.getpwuid(os.geteuid()).pw_name
        for server, port in (*self.backend_ports.items(), ("proxy", self.proxy_port)):
            common = COMMON_CONF.format(port=port, user=user, workdir=self.workdir, server=server)
            if server == "proxy":
                body = PROXY_CONF.format(
                    memcached_port=self.memcached_port,
                    keystone_base_url=self.keystone.base_url,
                    swift_user=SWIFT_USER,
                    swift_password=_password(SWIFT_USER),
                    project=PROJECT,
                )
            else:
                body = BACKEND_CONF.format(server=server)
            (self.workdir / f"{server}-server.conf").write_text(common + body)

    def _build_rings(self) -> None:
        """One ring per backend, made by swift-ring-builder's own main(): create, add the device, rebalance."""
        log_path = self.workdir / "rings.log"
        rings = [f"{backend}:{port}" for backend, port in self.backend_ports.items()]
        with log_path.open("wb") as log:
            try:
                done = subprocess.run(
                    [SWIFT_PYTHON, str(self.workdir / "build_rings.py"), str(self.workdir), str(PART_POWER), DEVICE,
                     *rings],
                    check=False,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    timeout=RING_DEADLINE,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pytest.fail(f"swift-ring-builder did not finish within {RING_DEADLINE} s:\n{log_tail(log_path)}")
        if done.returncode != 0:
            pytest.fail(f"swift-ring-builder failed ({done.returncode}):\n{log_tail(log_path)}")

    def _register(self) -> None:
        """The swift service with its endpoint, the proxy's service user and the glance user, in Keystone."""
        keystone = self.keystone
        self.project_id = keystone.project_ids[PROJECT]
        for user, role in ((SWIFT_USER, "service"), (GLANCE_USER, "member")):
            body = {"name": user, "password": _password(user), "domain_id": "default"}
            user_id = keystone._admin_request("POST", "/users", json={"user": body})["user"]["id"]
            self._registered.insert(0, f"/users/{user_id}")
            keystone._admin_request(
                "PUT", f"/projects/{self.project_id}/users/{user_id}/roles/{keystone.role_ids[role]}"
            )
        service = {"name": "swift", "type": "object-store", "description": "Swift of the test suite"}
        service_id = keystone._admin_request("POST", "/services", json={"service": service})["service"]["id"]
        self._registered.insert(0, f"/services/{service_id}")
        endpoint = {
            "service_id": service_id,
            "interface": "public",
            "region_id": REGION,
            "url": f"{self.proxy_url}/v1/AUTH_%(project_id)s",
        }
        endpoint_id = keystone._admin_request("POST", "/endpoints", json={"endpoint": endpoint})["endpoint"]["id"]
        self._registered.insert(0, f"/endpoints/{endpoint_id}")
        self.account_url = f"{self.proxy_url}/v1/AUTH_{self.project_id}"

    # Processes -------------------------------------------------------------------------------------------------

    def _log(self, server: str) -> Path:
        return self.workdir / f"{server}.log"

    def _logs(self) -> list[Path]:
        return [self._log(server) for server in reversed(SERVERS)]

    def _command(self, server: str) -> list[str]:
        if server == "memcached":
            # memcached will not run as root unless told which user to be; Debian's package makes `memcache`.
            as_user = ["-u", "memcache"] if os.geteuid() == 0 else []
            return [MEMCACHED, "-l", "127.0.0.1", "-p", str(self.memcached_port), "-U", "0", "-m", "32", *as_user]
        conf = self.workdir / f"{server}-server.conf"
        return [SWIFT_PYTHON, str(self.workdir / "launch_swift.py"), str(self.workdir), f"{server}-server", str(conf)]

    def _start(self, server: str) -> None:
        with self._log(server).open("ab") as log:
            self.processes[server] = subprocess.Popen(
                self._command(server),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env,
            )

    def _port(self, server: str) -> int:
        if server == "memcached":
            return self.memcached_port
        return self.proxy_port if server == "proxy" else self.backend_ports[server]

    def _answers(self, server: str) -> bool:
        """Whether the server answers now: memcached its `version`, a backend any HTTP status, the proxy /info."""
        port = self._port(server)
        try:
            if server == "memcached":
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"version\r\n")
                    return connection.recv(64).startswith(b"VERSION")
            path = "/info" if server == "proxy" else "/"
            response = self._http.get(f"http://127.0.0.1:{port}{path}", timeout=1)
        except (OSError, requests.ConnectionError, requests.Timeout):
            return False
        return response.status_code == 200 if server == "proxy" else True

    def _wait(self, server: str) -> None:
        """Return once the server answers; fail with the logs if it exits or the deadline passes."""
        process = self.processes[server]
        deadline = time.monotonic() + START_DEADLINE
        while not self._answers(server):
            if process.poll() is not None:
                pytest.fail(f"Swift's {server} exited ({process.returncode}):\n{log_tail(*self._logs())}")
            if time.monotonic() > deadline:
                pytest.fail(f"Swift's {server} did not answer within {START_DEADLINE} s:\n{log_tail(*self._logs())}")
            time.sleep(0.05)  # polling an observed condition (a poll interval, not a synchronisation)

    def _check_login(self) -> None:
        """The glance user's token opens its account through the proxy (auth_token and keystoneauth at work)."""
        response = self._http.head(self.account_url, headers={"X-Auth-Token": self.token()}, timeout=REQUEST_TIMEOUT)
        if not 200 <= response.status_code < 300:
            pytest.fail(f"Swift refused the glance user's token ({response.status_code}):\n{log_tail(*self._logs())}")

    def _stop(self, server: str) -> None:
        process = self.processes.pop(server, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE)


@pytest.fixture(scope="session", name="swift")
def swift_fixture(keystone: KeystoneServer) -> Iterator[SwiftCluster]:
    """One real Swift for the test session, behind the session's Keystone.

    Register it with `from tests.swift import swift_fixture  # noqa: F401` in a conftest.py (once, beside
    keystone_fixture: each import into another module is another fixture definition, and a second cluster in the
    same Keystone fails, its users already there). A test that stops the proxy starts it again before it ends.
    """
    with SwiftCluster(keystone) as cluster:
        yield cluster
