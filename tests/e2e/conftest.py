"""Real HTTP servers on 127.0.0.1 and tokens issued by the real `locquota tokens create`.

The clients under test (python-glanceclient, openstacksdk, the `glance` CLI) talk HTTP to these servers
exactly as they would to Glance; nothing between them is faked. The waitress server records what reached
the app (method, path, token present or not, status) so tests can check the conversation a client held.
"""

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import waitress
from click.testing import CliRunner
from waitress import wasyncore

from locquota.app import configure
from locquota.cli import cli
from tests.ceph import ceph_fixture  # noqa: F401  (the session's real Ceph: mon, memstore OSD, radosgw)
from tests.keystone import keystone_fixture  # noqa: F401  (the session's real Keystone, `keystone`)
from tests.swift import swift_fixture  # noqa: F401  (the session's real Swift, behind that Keystone)

LOCAL_HOSTS = "127.0.0.1,localhost"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
SHUTDOWN_SECONDS = 10
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the app received it, and the status it answered."""

    method: str
    path: str
    query: str
    has_token: bool
    content_length: str | None
    status: list[int] = field(default_factory=list)


class RequestLog:
    """WSGI middleware that records every request the app receives; appends are atomic across threads."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.seen: list[Seen] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entry = Seen(
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO", ""),
            query=environ.get("QUERY_STRING", ""),
            has_token="HTTP_X_AUTH_TOKEN" in environ,
            content_length=environ.get("CONTENT_LENGTH") or None,
        )
        self.seen.append(entry)

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            entry.status.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start_response)

    def requests(self, method: str, path: str) -> list[Seen]:
        """The recorded requests with this method and path, in arrival order."""
        return [entry for entry in self.seen if entry.method == method and entry.path == path]


@dataclass(frozen=True, slots=True)
class LiveServer:
    """A running server: its base URL (no trailing slash) and what reached the app.

    expected_unavailable: paths of requests a test makes fail on purpose with a 503 (a store it stopped);
    any other 5xx fails the test.
    """

    url: str
    log: RequestLog
    expected_unavailable: set[str] = field(default_factory=set)


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every client (and every subprocess, which inherits os.environ) off proxies and OS_* cloud settings."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith("OS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", LOCAL_HOSTS)
    monkeypatch.setenv("no_proxy", LOCAL_HOSTS)


@pytest.fixture
def live_settings(settings: dict[str, str]) -> dict[str, str]:
    """The suite's settings with identity from locquota's own API tokens."""
    return {**settings, "locquota.auth_strategy": "tokens"}


@pytest.fixture
def live_server(live_settings: dict[str, str]) -> Iterator[LiveServer]:
    """The app under waitress in a daemon thread; create_server binds before returning, so no wait is needed."""
    app = configure(live_settings).make_wsgi_app()
    log = RequestLog(app)
    server = waitress.create_server(log, host="127.0.0.1", port=0, threads=4, inbuf_overflow=1048576)
    thread = threading.Thread(target=server.run, name="waitress-e2e", daemon=True)
    thread.start()
    try:
        live = LiveServer(f"http://127.0.0.1:{server.effective_port}", log)
        yield live
    finally:
        # close_all runs inside the server's loop thread (a trigger thunk): the loop ends once its map is empty.
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
        except OSError:
            # The trigger's pipe is already closed (seen about once in a dozen runs): the loop has nothing
            # left to wake, so close what remains from here.
            wasyncore.close_all(server._map, ignore_all=True)
        thread.join(SHUTDOWN_SECONDS)
        server.task_dispatcher.shutdown()
        app.registry["locquota.engine"].dispose()
    assert not thread.is_alive(), "the waitress loop did not stop"
    # No client conversation may end in a server error; the app logged the traceback of any 5xx.
    # A test that stops a store on purpose names the requests it expects a 503 for.
    expected = {(503, path) for path in live.expected_unavailable}
    failed = [
        entry
        for entry in log.seen
        if not entry.status or (entry.status[0] >= 500 and (entry.status[0], entry.path) not in expected)
    ]
    assert not failed, f"requests that failed on the server: {failed}"


@pytest.fixture
def live_url(live_server: LiveServer) -> str:
    return live_server.url


def _ini_value(value: str) -> str:
    return value.replace("%", "%%")


@pytest.fixture
def deployment_ini(live_settings: dict[str, str], tmp_path: Path) -> Path:
    """A PasteDeploy .ini shaped like development.ini, for the test database, Redis and store.

    No [loggers] sections: logging.config.fileConfig would replace pytest's own log handlers.
    """
    lines = ["[app:main]", "use = egg:locquota", "pyramid.default_locale_name = en"]
    lines += [f"{key} = {_ini_value(value)}" for key, value in sorted(live_settings.items())]
    lines += [
        "",
        "[server:main]",
        "use = egg:waitress#main",
        "listen = 127.0.0.1:9292",
        "inbuf_overflow = 1048576",
        "max_request_body_size = 1099511627776",
        "",
    ]
    path = tmp_path / "e2e.ini"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def issue_token(deployment_ini: Path) -> Callable[..., str]:
    """Run `locquota --config <ini> tokens create --project <p>` and return the token it prints."""

    def issue(project: str = "p1", roles: str = "member") -> str:
        result = CliRunner().invoke(
            cli, ["--config", str(deployment_ini), "tokens", "create", "--project", project, "--roles", roles]
        )
        assert result.exit_code == 0, (result.output, result.exception)
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, result.stdout
        token = lines[0].strip()
        assert len(token) >= 40, token
        return token

    return issue


@pytest.fixture
def token(issue_token: Callable[..., str]) -> str:
    """A member token of project p1."""
    return issue_token("p1")


@pytest.fixture
def other_token(issue_token: Callable[..., str]) -> str:
    """A member token of another project, p2."""
    return issue_token("p2")


@contextmanager
def gunicorn(
    deployment_ini: Path, workdir: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """gunicorn --paste deployment_ini [options] on a socket bound here; yields its (host, port).

    The test binds and listens first and hands gunicorn the socket (fd://): connections queue in the
    backlog until a worker accepts them, so no readiness polling is needed. The log goes to stderr at the end.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    log_path = workdir / "gunicorn.log"
    command = [str(VENV_BIN / "gunicorn"), "--paste", str(deployment_ini), "--bind", f"fd://{listener.fileno()}"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, *options],
            cwd=workdir,
            env=env,
            pass_fds=(listener.fileno(),),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield "127.0.0.1", listener.getsockname()[1]
    finally:
        process.terminate()
        try:
            process.wait(SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SHUTDOWN_SECONDS)
        listener.close()
        sys.stderr.write(log_path.read_text(errors="replace"))


@pytest.fixture
def gunicorn_url(deployment_ini: Path, tmp_path: Path) -> Iterator[str]:
    """The app under gunicorn (the production server), which passes chunked bodies through un-buffered."""
    with gunicorn(deployment_ini, tmp_path, "--workers", "1", "--timeout", "30") as (host, port):
        yield f"http://{host}:{port}"
