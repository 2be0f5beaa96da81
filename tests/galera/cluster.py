"""A throwaway three-node MariaDB Galera cluster on 127.0.0.1, from Debian's mariadb-server and galera-4.

Each node is a mariadbd process of its own, with its own temporary data directory, defaults file and four
free ports: SQL, the Galera group (gcomm), IST and SST. Node 1 bootstraps the cluster (--wsrep-new-cluster)
from a datadir made by mariadb-install-db; nodes 2 and 3 start empty and receive node 1's state by rsync SST
(Debian's wsrep_sst_rsync, which needs rsync, ss or lsof, and ps on PATH). As root, every node runs as the
mysql user, as tests/servers.py runs the single MariaDB. Waits poll what the nodes report, within deadlines
that fail the start with the logs' tails; nothing sleeps to synchronise.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import port_for
import pymysql
import pytest

from tests.servers import MARIADB_INSTALL_DB, MARIADBD, mariadb_binary

GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
NODES = 3
# Bounds on waits for the cluster; reaching one is a failure, never a synchronisation.
START_DEADLINE = 60
STOP_DEADLINE = 10
POLL_SECONDS = 0.05  # a poll interval of an observed condition, not a synchronisation
# Failure detection: a killed node is suspected after 2 s of silence and evicted within 4 s, so the others
# form a Primary component of two soon after (Galera's defaults, 5 s and 15 s, would stall the writers longer).
# keepalive <= inactive_check <= suspect <= inactive, as Galera requires.
FAILURE_DETECTION = (
    "evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;evs.suspect_timeout=PT2S;"
    "evs.inactive_timeout=PT4S;evs.install_timeout=PT4S"
)


class GaleraNode:
    """One mariadbd of the cluster: its directory, ports and process; startable, killable and removable."""

    def __init__(self, index: int, workdir: Path, as_user: list[str], ports: list[int]) -> None:
        self.index, self.workdir, self._as_user = index, workdir, as_user
        self.datadir = workdir / "data"
        self.sql_port, self.group_port, self.ist_port, self.sst_port = ports
        self.log_path = workdir / "mariadbd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def gcomm(self) -> str:
        return f"127.0.0.1:{self.group_port}"

    @property
    def url(self) -> str:
        """The server's SQLAlchemy URL (root, no grant tables), without a database."""
        return f"mysql+pymysql://root@127.0.0.1:{self.sql_port}"

    def write_defaults(self, cluster_address: str, mariadbd_options: dict[str, str]) -> Path:
        """The node's defaults file: mariadbd reads it, and so does wsrep_sst_rsync (through my_print_defaults)."""
        provider_options = (
            f"base_host=127.0.0.1;base_port={self.group_port};gmcast.listen_addr=tcp://127.0.0.1:{self.group_port};"
            f"ist.recv_addr=127.0.0.1:{self.ist_port};gcache.size=64M;{FAILURE_DETECTION}"
        )
        options = {
            "datadir": str(self.datadir),
            "socket": str(self.workdir / "mariadb.sock"),
            "pid-file": str(self.workdir / "mariadb.pid"),
            "port": str(self.sql_port),
            "bind-address": "127.0.0.1",
            **mariadbd_options,
            "wsrep_on": "ON",
            "wsrep_provider": GALERA_PROVIDER,
            "wsrep_provider_options": provider_options,
            "wsrep_cluster_name": "locquota-test",
            "wsrep_cluster_address": cluster_address,
            "wsrep_node_name": f"node{self.index}",
            "wsrep_node_address": "127.0.0.1",
            "wsrep_node_incoming_address": f"127.0.0.1:{self.sql_port}",
            "wsrep_sst_method": "rsync",
            "wsrep_sst_receive_address": f"127.0.0.1:{self.sst_port}",
            # Galera certifies row events: every write replicates as ROW, and auto-increment locks stay off.
            "binlog_format": "ROW",
            "default_storage_engine": "InnoDB",
            "innodb_autoinc_lock_mode": "2",
        }
        path = self.workdir / "my.cnf"
        path.write_text("[mysqld]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()))
        return path

    def start(self, defaults: Path, *, bootstrap: bool) -> None:
        """Start mariadbd in a process group of its own (its SST script and rsync daemon go with it)."""
        command = [mariadb_binary("mariadbd", MARIADBD), f"--defaults-file={defaults}", *self._as_user]
        if bootstrap:
            command.append("--wsrep-new-cluster")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server, as a crash of its host would end it, and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE)

    def status(self) -> dict[str, str]:
        """The node's wsrep status variables (raises pymysql's OperationalError while it does not answer)."""
        connection = pymysql.connect(host="127.0.0.1", port=self.sql_port, user="root", connect_timeout=1)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SHOW GLOBAL STATUS LIKE 'wsrep\\_%%'")
                return dict(cursor.fetchall())
        finally:
            connection.close()

    def stop(self) -> None:
        """End the server and everything it started (its process group), then reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_DEADLINE)
        with contextlib.suppress(ProcessLookupError):  # an SST script or rsync daemon left behind
            os.killpg(self.process.pid, signal.SIGKILL)


def synced_reads(url: str) -> str:
    """A database URL whose sessions' reads wait until their node has applied all the cluster committed before them.

    For a test's own checks: Galera applies another node's commit a little after certifying it, and
    wsrep_sync_wait makes a read on any node see every write the cluster committed before it.
    """
    return url + "&init_command=SET%20SESSION%20wsrep_sync_wait%20%3D%201"


def free_ports(count: int) -> list[int]:
    """`count` different free ports on 127.0.0.1 (port_for picks each at random: two picks may coincide)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := port_for.select_random()) not in ports:
            ports.append(port)
    return ports


def is_synced(status: dict[str, str], size: int) -> bool:
    """Whether a node serves the Primary component of `size` nodes with its state in sync."""
    return (
        status.get("wsrep_local_state_comment") == "Synced"
        and status.get("wsrep_cluster_status") == "Primary"
        and status.get("wsrep_ready") == "ON"
        and status.get("wsrep_cluster_size") == str(size)
    )


class GaleraCluster:
    """Three nodes in one temporary directory; `urls` are each node's server URL, in node order."""

    def __init__(self, *, durable: bool = False, size: int = NODES) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="locquota-galera-"))
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # mariadbd refuses to run as root unless told which user to become
            shutil.chown(self.workdir, "mysql")
            self._as_user = ["--user=mysql"]
        self.nodes = []
        ports = free_ports(4 * size)  # each node's SQL, group (gcomm), IST and SST port
        for index in range(1, size + 1):
            workdir = self.workdir / f"node{index}"
            (workdir / "data").mkdir(parents=True)
            if self._as_user:
                shutil.chown(workdir, "mysql")
                shutil.chown(workdir / "data", "mysql")
            self.nodes.append(GaleraNode(index, workdir, self._as_user, ports[4 * (index - 1) : 4 * index]))
        address = "gcomm://" + ",".join(node.gcomm for node in self.nodes)
        self._defaults = [node.write_defaults(address, self._mariadbd_options(durable)) for node in self.nodes]

    @staticmethod
    def _mariadbd_options(durable: bool) -> dict[str, str]:
        options = {
            "skip-name-resolve": "ON",
            "skip-grant-tables": "ON",
            "innodb_buffer_pool_size": "64M",
            "innodb_log_file_size": "32M",
            "max_connections": "300",
        }
        if not durable:  # as tests/servers.py's mariadb_server(durable=False): nothing here is kept
            options |= {"innodb_flush_log_at_trx_commit": "0", "innodb_doublewrite": "OFF", "sync_frm": "OFF"}
        return options

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def database_urls(self, database: str) -> list[str]:
        """Each node's SQLAlchemy URL of one database, in node order (utf8mb4, as locquota connects)."""
        return [f"{node.url}/{database}?charset=utf8mb4" for node in self.nodes]

    def start(self) -> None:
        """Bootstrap node 1, then let the others join it (rsync SST); return once all are Synced in one cluster."""
        first = self.nodes[0]
        installed = subprocess.run(
            [mariadb_binary("mariadb-install-db", MARIADB_INSTALL_DB), "--no-defaults", f"--datadir={first.datadir}",
             *self._as_user, "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
             "--innodb-log-file-size=32M"],
            check=False,
            capture_output=True,
            text=True,
        )  # fmt: skip
        if installed.returncode != 0:
            pytest.fail(
                f"mariadb-install-db failed ({installed.returncode}): {(installed.stdout + installed.stderr)[-3000:]}"
            )
        first.start(self._defaults[0], bootstrap=True)
        self.wait_until_synced([first], size=1)
        for node, defaults in zip(self.nodes[1:], self._defaults[1:], strict=True):
            node.start(defaults, bootstrap=False)
        self.wait_until_synced(self.nodes, size=len(self.nodes))

    def wait_until_synced(
        self, nodes: list[GaleraNode], *, size: int, deadline_seconds: float = START_DEADLINE
    ) -> None:
        """Return once every node in `nodes` is Synced in a Primary component of `size`; fail with the logs past
        the deadline or if one of them exits."""
        deadline, waiting = time.monotonic() + deadline_seconds, list(nodes)
        last: dict[int, object] = {}
        while waiting:
            for node in list(waiting):
                if not node.is_running():
                    pytest.fail(f"galera node {node.index} exited: {self.logs()}")
                try:
                    last[node.index] = status = node.status()
                except pymysql.err.OperationalError as error:
                    last[node.index] = error
                    continue
                if is_synced(status, size):
                    waiting.remove(node)
            if waiting and time.monotonic() > deadline:
                states = {
                    index: state if isinstance(state, Exception) else state.get("wsrep_local_state_comment")
                    for index, state in last.items()
                }
                pytest.fail(f"galera nodes {[n.index for n in waiting]} not Synced in {size} within "
                            f"{deadline_seconds} s ({states}): {self.logs()}")  # fmt: skip
            if waiting:
                time.sleep(POLL_SECONDS)

    def conflicts(self) -> int:
        """Transactions the running nodes aborted for another node's write so far (failed certification at
        commit, or brute-force aborted by a replicated write): how often the cluster made a writer run again."""
        statuses = [node.status() for node in self.nodes if node.is_running()]
        return sum(int(s["wsrep_local_cert_failures"]) + int(s["wsrep_local_bf_aborts"]) for s in statuses)

    def wait_until_applied(self, deadline_seconds: float = START_DEADLINE) -> None:
        """Return once every running node has applied every transaction the cluster committed so far.

        Galera certifies a commit on every node at once but applies it on the others a little later: a test
        that arranged rows through one node waits here before processes on the other nodes read them.
        """
        running = [node for node in self.nodes if node.is_running()]
        target = max(int(node.status()["wsrep_last_committed"]) for node in running)
        deadline = time.monotonic() + deadline_seconds
        while min(int(node.status()["wsrep_last_committed"]) for node in running) < target:
            if time.monotonic() > deadline:
                pytest.fail(f"the galera nodes did not apply seqno {target} within {deadline_seconds} s")
            time.sleep(POLL_SECONDS)

    def heal(self) -> None:
        """Start again every node that is not running (one a test killed): it rejoins by IST or SST, and this
        returns once the cluster is whole and Synced again."""
        dead = [node for node in self.nodes if not node.is_running()]
        for node in dead:
            node.start(self._defaults[node.index - 1], bootstrap=False)
        if dead:
            self.wait_until_synced(self.nodes, size=len(self.nodes))

    def logs(self, chars: int = 3000) -> str:
        """Each node's log tail, for a failure message."""
        return "\n".join(
            f"--- node {node.index}:\n{node.log_path.read_text(errors='replace')[-chars:]}"
            for node in self.nodes
            if node.log_path.exists()
        )

    def remove(self) -> None:
        """Stop every node and delete every directory."""
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def galera_cluster(*, durable: bool = False) -> Iterator[GaleraCluster]:
    """Run a three-node Galera cluster on 127.0.0.1 and yield it, all nodes Synced; stop and remove it afterwards."""
    cluster = GaleraCluster(durable=durable)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
