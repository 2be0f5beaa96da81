"""A real single-node Ceph for the test suite: one mon, one OSD on memstore and radosgw (S3), on 127.0.0.1.

The daemons are Debian's (ceph-mon, ceph-osd, radosgw, ceph-common: scripts/bootstrap --test installs them).
They run in the foreground as children of the test process, all in one temp dir (configuration, keyrings,
mon store, logs, admin sockets), with cephx, without systemd, a mgr or anything under /etc/ceph or
/var/lib/ceph. The OSD keeps its data in memory (memstore, capped at 2 GiB); pools have one replica.

Who is who (one keyring file each, `<workdir>/<name>.keyring`, as `keyring = $name.keyring` finds them):

    client.admin    everything (the fixture's own mon commands, radosgw-admin)
    client.glance   `profile rbd` on pool `images`: what Glance's rbd store runs as (`rbd_store_user = glance`)
    client.rgw.gw   the radosgw daemon; its S3 user `locquota` owns bucket `locquota-images`

The rados and rbd Python modules are Debian's too (python3-rados, python3-rbd; not on PyPI): they are
imported only once scripts/ceph-python-modules has linked them into the venv (see ensure_ceph_python()).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import port_for
import pytest
import requests

from tests.servers import log_tail

REPOSITORY = Path(__file__).resolve().parent.parent
CEPH_PYTHON_SCRIPT = REPOSITORY / "scripts" / "ceph-python-modules"
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph-authtool", "monmaptool")
# Bounds on waits; reaching one is a failure, never a synchronisation.
COMMAND_DEADLINE = 60
START_DEADLINE = 60
STOP_DEADLINE = 15
POLL_INTERVAL = 0.1
MEMSTORE_BYTES = 2 << 30
OSD_PORTS = range(6800, 7301)  # Ceph's ms_bind_port_min..ms_bind_port_max

POOL = "images"
PG_NUM = 8
GLANCE_USER = "glance"
RGW_NAME = "client.rgw.gw"
S3_USER = "locquota"
BUCKET = "locquota-images"

CEPH_CONF = """\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {workdir}/$name.keyring
run dir = {workdir}/run
admin socket = {workdir}/run/$name.asok
log file = {workdir}/log/$name.log
mon cluster log file = {workdir}/log/cluster.log
crash dir = {workdir}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = {pg_num}
osd pool default pgp num = {pg_num}
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# All clients are new: no reclaim of global ids (and no health warning about it).
auth allow insecure global id reclaim = false
# The temp dir's disk may be fuller than a production mon wants (it stops at 5 % free).
mon data avail warn = 2
mon data avail crit = 1
# Commit map changes (pool creations: radosgw makes six) at once, not after a second each.
paxos propose interval = 0.05
paxos min wait = 0.01

[client]
# Several clients of one name (the test process, radosgw-admin, the ceph CLI) may run at once.
admin socket = {workdir}/run/$name.$pid.$cctid.asok

[mon]
mon data = {workdir}/mon.$id

[osd]
osd data = {workdir}/osd.$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}

[{rgw_name}]
rgw data = {workdir}/rgw
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw thread pool size = 32
admin socket = {workdir}/run/$name.asok
"""

# Capabilities as Ceph's own deployment tools grant them.
CAPS = {
    "mon.": {"mon": "allow *"},
    "client.admin": {"mon": "allow *", "osd": "allow *", "mds": "allow *", "mgr": "allow *"},
    "osd.0": {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"},
    f"client.{GLANCE_USER}": {"mon": "profile rbd", "osd": f"profile rbd pool={POOL}"},
    RGW_NAME: {"mon": "allow rw", "osd": "allow rwx"},
}


def ensure_ceph_python() -> tuple[ModuleType, ModuleType]:
    """Debian's rados and rbd modules, importable in this venv (scripts/ceph-python-modules); fail the run if not.

    The script puts <venv>/debian-ceph on the venv's sys.path with a .pth file, for every later python of the
    venv; this process, started before that may have been done, gets the directory appended here.
    """
    try:
        done = subprocess.run(
            [str(CEPH_PYTHON_SCRIPT), sys.prefix], check=False, capture_output=True, text=True, timeout=COMMAND_DEADLINE
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.fail(f"scripts/ceph-python-modules failed: {error}")
    if done.returncode != 0:
        pytest.fail(f"scripts/ceph-python-modules failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    modules = str(Path(sys.prefix) / "debian-ceph")
    if modules not in sys.path:
        sys.path.append(modules)
    import rados  # noqa: PLC0415  (only importable from here on)
    import rbd  # noqa: PLC0415

    return rados, rbd


def _free_ports(count: int) -> list[int]:
    """Distinct free ports outside the range the OSD binds its own in (it takes the first free ones there)."""
    ports: list[int] = []
    while len(ports) < count:
        port = port_for.select_random()
        if port not in ports and port not in OSD_PORTS:
            ports.append(port)
    return ports


def _http() -> requests.Session:
    """A requests session that ignores proxy variables: radosgw is on 127.0.0.1."""
    http = requests.Session()
    http.trust_env = False
    return http


class CephCluster:
    """A throwaway Ceph: made in a temp dir, started, given pool `images` and an S3 user and bucket; stop() it."""

    def __init__(self) -> None:
        missing = [name for name in BINARIES if shutil.which(name) is None]
        if missing:
            pytest.fail(f"Ceph binaries not found: {', '.join(missing)} (scripts/bootstrap --test installs them)")
        self.rados, self.rbd = ensure_ceph_python()
        self.workdir = Path(tempfile.mkdtemp(prefix="locquota-ceph-"))
        self.fsid = str(uuid.uuid4())
        self.mon_port, self.rgw_port = _free_ports(2)
        self.conf_path = self.workdir / "ceph.conf"
        self.pool = POOL
        self.user = GLANCE_USER
        self.bucket = BUCKET
        self.rgw_url = f"http://127.0.0.1:{self.rgw_port}"
        self.s3_access_key = uuid.uuid4().hex[:20].upper()
        self.s3_secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.startup_seconds = 0.0
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._admin: Any = None
        self._http = _http()
        self._env = {
            **{name: value for name, value in os.environ.items() if not name.startswith("CEPH_")},
            "CEPH_CONF": str(self.conf_path),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    # Paths -----------------------------------------------------------------------------------------------------

    def keyring(self, name: str) -> Path:
        """The keyring file of a Ceph entity (client.glance, client.admin, osd.0, ...)."""
        return self.workdir / f"{name}.keyring"

    @property
    def keyring_path(self) -> Path:
        """client.glance's keyring: what Glance's rbd store reads (via `keyring` in ceph.conf)."""
        return self.keyring(f"client.{self.user}")

    @property
    def admin_keyring_path(self) -> Path:
        return self.keyring("client.admin")

    def _logs(self) -> tuple[Path, ...]:
        logs = [self.workdir / "log" / f"{name}.log" for name in ("mon.a", "osd.0", RGW_NAME, "cluster")]
        return (*logs, *sorted(self.workdir.glob("*.out")))

    # Lifecycle -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Make and start the cluster; return once pool `images` takes writes and radosgw serves the bucket."""
        started = time.monotonic()
        for name in ("run", "log", "crash", "rgw", "osd.0"):
            (self.workdir / name).mkdir()
        self.conf_path.write_text(
            CEPH_CONF.format(
                fsid=self.fsid, mon_port=self.mon_port, workdir=self.workdir, pg_num=PG_NUM,
                memstore_bytes=MEMSTORE_BYTES, rgw_name=RGW_NAME, rgw_port=self.rgw_port,
            )
        )  # fmt: skip
        self._make_keyrings()
        monmap = self.workdir / "monmap"
        self._run("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
                  str(monmap))  # fmt: skip
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(self.keyring("mon.")))
        osd_uuid = str(uuid.uuid4())
        # The OSD's store needs no monitor (its identity is in the keyring and the conf).
        self._run("ceph-osd", "--mkfs", "-i", "0", "--osd-uuid", osd_uuid, "--no-mon-config",
                  "--keyring", str(self.keyring("osd.0")))  # fmt: skip
        self._start("mon.a", ["ceph-mon", "-f", "-i", "a"])
        self._admin = self._connect("client.admin")
        self._mon_command({"prefix": "osd new", "uuid": osd_uuid, "id": 0})
        self._start("osd.0", ["ceph-osd", "-f", "-i", "0"])
        self._mon_command({"prefix": "osd pool create", "pool": self.pool, "pg_num": PG_NUM, "pgp_num": PG_NUM})
        self._mon_command({"prefix": "osd pool application enable", "pool": self.pool, "app": "rbd"})
        self._wait_until("the OSD is up and in", self._osd_is_up)
        self._wait_for_writes()
        self.start_rgw()
        self._run("radosgw-admin", "user", "create", f"--uid={S3_USER}", f"--display-name={S3_USER}",
                  f"--access-key={self.s3_access_key}", f"--secret={self.s3_secret_key}")  # fmt: skip
        self.s3_client().create_bucket(Bucket=self.bucket)
        self.startup_seconds = time.monotonic() - started

    def _make_keyrings(self) -> None:
        """One keyring per entity; the mon's holds them all, so the cluster knows every key from its mkfs on."""
        for name, caps in CAPS.items():
            command = ["ceph-authtool", "--create-keyring", str(self.keyring(name)), "--gen-key", "-n", name]
            for service, cap in caps.items():
                command += ["--cap", service, cap]
            self._run(*command)
            if name != "mon.":
                self._run("ceph-authtool", str(self.keyring("mon.")), "--import-keyring", str(self.keyring(name)))

    def _run(self, *command: str) -> str:
        """Run a Ceph tool on this cluster's conf; fail with its output (and the logs) if it fails."""
        try:
            done = subprocess.run(
                [command[0], "--conf", str(self.conf_path), *command[1:]],
                check=False,
                capture_output=True,
                text=True,
                env=self._env,
                timeout=COMMAND_DEADLINE,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command)} did not finish within {COMMAND_DEADLINE} s:\n{log_tail(*self._logs())}")
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def _start(self, name: str, command: list[str]) -> None:
        """Start a daemon in the foreground (-f: logs to its log file, no fork), a child of this process."""
        with (self.workdir / f"{name}.out").open("ab") as output:
            self._processes[name] = subprocess.Popen(
                [*command, "--conf", str(self.conf_path)], stdout=output, stderr=subprocess.STDOUT, env=self._env
            )

    def _check_running(self) -> None:
        for name, process in self._processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}):\n{log_tail(*self._logs())}")

    def _wait_until(self, what: str, condition: Any, deadline: float = START_DEADLINE) -> None:
        """Poll a condition of the cluster until it holds; fail with the logs if a daemon dies or time runs out."""
        end = time.monotonic() + deadline
        while not condition():
            self._check_running()
            if time.monotonic() > end:
                pytest.fail(f"Ceph: {what} not within {deadline} s:\n{log_tail(*self._logs())}")
            time.sleep(POLL_INTERVAL)  # polling an observed condition (a poll interval, not a synchronisation)

    @contextlib.contextmanager
    def client(self, name: str = f"client.{GLANCE_USER}") -> Iterator[Any]:
        """A connected rados.Rados as this entity (client.glance unless told), shut down afterwards."""
        cluster = self._connect(name)
        try:
            yield cluster
        finally:
            cluster.shutdown()

    def _connect(self, name: str) -> Any:
        """A connected rados.Rados as this entity, its keyring found through the conf (`keyring = $name.keyring`).

        Every operation is bounded: a monitor or OSD that does not answer is an error, not a hang.
        """
        cluster = self.rados.Rados(conffile=str(self.conf_path), name=name)
        cluster.conf_set("rados_mon_op_timeout", str(COMMAND_DEADLINE))
        cluster.conf_set("rados_osd_op_timeout", str(COMMAND_DEADLINE))
        try:
            # librados keeps trying the monitor until the timeout: the mon may still be starting.
            cluster.connect(timeout=START_DEADLINE)
        except self.rados.Error as error:
            cluster.shutdown()
            self._check_running()
            pytest.fail(f"Ceph: {name} could not connect: {error}\n{log_tail(*self._logs())}")
        return cluster

    def _mon_command(self, command: dict[str, Any]) -> Any:
        """A monitor command as client.admin; its JSON answer (None when it prints nothing)."""
        ret, out, status = self._admin.mon_command(json.dumps({**command, "format": "json"}), b"")
        if ret != 0:
            pytest.fail(f"Ceph: {command['prefix']} failed ({ret}): {status}\n{log_tail(*self._logs())}")
        return json.loads(out) if out else None

    def _osd_is_up(self) -> bool:
        stat = self._mon_command({"prefix": "osd stat"})
        return stat["num_up_osds"] == 1 and stat["num_in_osds"] == 1

    def _wait_for_writes(self) -> None:
        """Return once the pool takes a write: the OSD blocks it until the placement group is active.

        Without a mgr nobody reports PG states (`ceph -s` shows none), so a write bounded by
        rados_osd_op_timeout is the readiness check.
        """
        with self.ioctx(self._admin) as ioctx:
            ioctx.write_full("locquota-ready", b"ready")
            ioctx.remove_object("locquota-ready")

    @contextlib.contextmanager
    def ioctx(self, cluster: Any) -> Iterator[Any]:
        """An I/O context on pool `images` for a connected rados.Rados."""
        ioctx = cluster.open_ioctx(self.pool)
        try:
            yield ioctx
        finally:
            ioctx.close()

    def rgw_is_running(self) -> bool:
        process = self._processes.get(RGW_NAME)
        return process is not None and process.poll() is None

    def _rgw_answers(self) -> bool:
        try:
            return self._http.get(self.rgw_url, timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False

    def start_rgw(self) -> None:
        """Start radosgw (unless it runs) and return once it answers HTTP on its port."""
        if self.rgw_is_running():
            return
        self._start(RGW_NAME, ["radosgw", "-f", "-n", RGW_NAME])
        self._wait_until("radosgw answers", self._rgw_answers)

    def stop_rgw(self) -> None:
        """Stop radosgw and wait until it is gone: its port refuses connections from here on (a store down)."""
        self._stop(RGW_NAME)

    def _stop(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_DEADLINE)

    def stop(self) -> None:
        """Stop every daemon (radosgw, OSD, then mon) and delete the temp dir."""
        if self._admin is not None:
            self._admin.shutdown()
            self._admin = None
        for name in (RGW_NAME, "osd.0", "mon.a"):
            self._stop(name)
        self._http.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "CephCluster":
        try:
            self.setup()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # What the tests look at ------------------------------------------------------------------------------------

    def rbd_images(self) -> list[str]:
        """The names of the RBD images in pool `images` (python rbd, as client.admin)."""
        with self.ioctx(self._admin) as ioctx:
            return sorted(self.rbd.RBD().list(ioctx))

    def s3_client(self) -> Any:
        """A boto3 S3 client of the S3 user, path-style URLs (no bucket DNS names on 127.0.0.1)."""
        import boto3  # noqa: PLC0415  (only the Ceph tests need boto3)
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client(
            "s3",
            endpoint_url=self.rgw_url,
            aws_access_key_id=self.s3_access_key,
            aws_secret_access_key=self.s3_secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=5,
                          read_timeout=30, proxies={}),
        )  # fmt: skip

    def s3_objects(self, bucket: str | None = None) -> list[str]:
        """The keys of the objects in the bucket (boto3, as the S3 user)."""
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket or self.bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="session", name="ceph")
def ceph_fixture() -> Iterator[CephCluster]:
    """One real Ceph for the test session (tests that stop radosgw start it again).

    Register it with `from tests.ceph import ceph_fixture  # noqa: F401` in a conftest.py (once: each import into
    another module is another fixture definition, and so another cluster).
    """
    with CephCluster() as cluster:
        yield cluster
