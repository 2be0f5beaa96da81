"""Real PostgreSQL, MariaDB and Redis servers for the test suite, started on free ports in temporary directories.

pytest-postgresql cannot be used as is here: PostgreSQL refuses to run as root, and CI runs as root.
So this starts `initdb`/`pg_ctl` from the PostgreSQL packages itself, as the `postgres` system user
when the suite runs as root. MariaDB (for Glance databases to import) is started the same way, from
Debian's mariadb-server binaries, as the `mysql` system user when root; never the machine's own servers.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import port_for
import pymysql
import pytest
import redis

REDIS_SERVER = "/usr/bin/redis-server"
MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"
# Bounds for waits on a server process; reaching one is a failure, never a synchronisation.
START_DEADLINE = 10
STOP_DEADLINE = 10


def log_tail(*paths: Path, chars: int = 3000) -> str:
    """The end of each log that exists, for a failure message."""
    return "\n".join(
        f"--- {path.name}:\n{path.read_text(errors='replace')[-chars:]}" for path in paths if path.exists()
    )


def _pg_bindir() -> Path:
    """The server binaries: pg_config's bindir, else the newest /usr/lib/postgresql/N/bin."""
    if pg_config := shutil.which("pg_config"):
        bindir = Path(subprocess.check_output([pg_config, "--bindir"], text=True).strip())
        if (bindir / "pg_ctl").exists():
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (see .ci/run)")
    return Path(candidates[-1]).parent


def _as_server_user() -> tuple[list[str], str | None]:
    """A command prefix that drops root, and the user it drops to (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return [], None
    pwd.getpwnam("postgres")  # created by Debian's postgresql package
    return ["runuser", "-u", "postgres", "--"], "postgres"


class PostgresqlServer:
    """A throwaway PostgreSQL on 127.0.0.1 that a test may stop and start again (an outage, for real).

    Tests run it without fsync (speed, nothing to keep); durable=True keeps fsync, synchronous_commit and
    full_page_writes on, as production runs it, for benchmarks of writes.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self._durable = durable
        self._bindir = _pg_bindir()
        self._prefix, user = _as_server_user()
        self.workdir = Path(tempfile.mkdtemp(prefix="locquota-pg-"))
        self._datadir = self.workdir / "data"
        if user:
            shutil.chown(self.workdir, user)
        self.port = port_for.select_random()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"
        subprocess.run(
            [*self._prefix, str(self._bindir / "initdb"), "-D", str(self._datadir), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def is_running(self) -> bool:
        """Whether the server runs now (pg_ctl status)."""
        status = subprocess.run(
            [*self._prefix, str(self._bindir / "pg_ctl"), "-D", str(self._datadir), "status"],
            check=False,
            capture_output=True,
        )
        return status.returncode == 0

    def start(self) -> None:
        """Start the server (unless it runs) and return once it accepts connections (pg_ctl -w)."""
        if self.is_running():
            return
        options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -c max_connections=200"
        if not self._durable:
            options += " -F -c full_page_writes=off"
        subprocess.run(
            [*self._prefix, str(self._bindir / "pg_ctl"), "-D", str(self._datadir), "-o", options, "-l",
             str(self.workdir / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop at once, as a crash would (immediate mode: no checkpoint, clients cut off)."""
        subprocess.run(
            [*self._prefix, str(self._bindir / "pg_ctl"), "-D", str(self._datadir), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )

    def remove(self) -> None:
        """Stop and delete everything."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def postgresql_server(*, durable: bool = False) -> Iterator[str]:
    """Run a throwaway PostgreSQL on 127.0.0.1 and yield its admin URL; stop and remove it afterwards."""
    server = PostgresqlServer(durable=durable)
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


def mariadb_binary(name: str, default: str) -> str:
    """A MariaDB server binary: on PATH, else where Debian's mariadb-server puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which(name) or (default if os.access(default, os.X_OK) else None)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install mariadb-server (scripts/bootstrap --test)")
    return found


@contextmanager
def mariadb_server(*, durable: bool = False) -> Iterator[str]:
    """Run a throwaway MariaDB on 127.0.0.1 and yield its URL (root, no grant tables); stop and remove it afterwards.

    Tests run it without flushing the redo log at each commit (speed, nothing to keep); durable=True flushes
    it, as production runs it, for benchmarks of writes.
    """
    mariadbd = mariadb_binary("mariadbd", MARIADBD)
    install_db = mariadb_binary("mariadb-install-db", MARIADB_INSTALL_DB)
    workdir = Path(tempfile.mkdtemp(prefix="locquota-mariadb-"))
    # As root, mariadbd must be told which user to become (it refuses to run as root otherwise).
    as_user = []
    if os.geteuid() == 0:
        pwd.getpwnam("mysql")  # created by Debian's mariadb-server package
        shutil.chown(workdir, "mysql")
        as_user = ["--user=mysql"]
    datadir = workdir / "data"
    installed = subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}", *as_user, "--auth-root-authentication-method=normal",
         "--skip-test-db", "--skip-name-resolve"],
        check=False,
        capture_output=True,
        text=True,
    )  # fmt: skip
    if installed.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        output = (installed.stdout + installed.stderr)[-3000:]
        pytest.fail(f"mariadb-install-db failed ({installed.returncode}): {output}")
    port = port_for.select_random()
    command = [
        mariadbd, "--no-defaults", f"--datadir={datadir}", f"--socket={workdir / 'mariadb.sock'}",
        f"--pid-file={workdir / 'mariadb.pid'}", f"--port={port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
        "--skip-grant-tables", "--innodb-buffer-pool-size=64M", "--max-connections=300", *as_user,
    ]  # fmt: skip
    if not durable:
        command += ["--innodb-flush-log-at-trx-commit=0", "--skip-innodb-doublewrite", "--skip-sync-frm"]
    log_path = workdir / "mariadbd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_mariadb(process, port, log_path)
        yield f"mysql+pymysql://root@127.0.0.1:{port}"
        if process.poll() is not None:  # died under the tests: say why, before its directory goes
            pytest.fail(f"mariadbd died ({process.returncode}): {log_path.read_text(errors='replace')[-3000:]}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_mariadb(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Return once the server accepts a connection; fail if it exits or the deadline passes."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if process.poll() is not None:
            pytest.fail(f"mariadbd exited ({process.returncode}): {log_path.read_text(errors='replace')[-2000:]}")
        try:
            pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=1).close()
            return
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)  # polling an observed condition (a poll interval, not a synchronisation)


class RedisServer:
    """A redis-server process of this test's own, restartable on the same port."""

    def __init__(self, workdir: Path, *, is_persistent: bool = False) -> None:
        self.workdir, self.port, self.is_persistent = workdir, port_for.select_random(), is_persistent
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        # Without persistence a restart comes back empty, as a crashed cache does; with it, with what it held.
        persistence = ["yes", "--appendfsync", "always"] if self.is_persistent else ["no"]
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        command += ["--save", "", "--appendonly", *persistence]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_DEADLINE
        with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"redis-server exited ({self.process.returncode}): {self.process.stdout.read()!r}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.01)  # polling an observed condition (a poll interval, not a synchronisation)

    def stop(self) -> None:
        """Terminate the server and wait until it is gone: its port is closed from here on."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=STOP_DEADLINE)
        self.process.stdout.close()
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
