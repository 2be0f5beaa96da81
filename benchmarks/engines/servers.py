"""The engines part's database servers: its PostgreSQL database, a MariaDB server and a three-node Galera cluster.

The MariaDB server and the cluster are the test suite's own (tests.servers.mariadb_server,
tests.galera.cluster), started durable: each commit flushes InnoDB's redo log
(innodb_flush_log_at_trx_commit = 1, MariaDB's default, which durable=True leaves alone), as production runs
them. Each server holds one database of this part, migrated with `upgrade_to_head` (on Galera through node 1:
its DDL replicates to the others). What each server reports about its durability is read back, not assumed.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql
from sqlalchemy import make_url

from benchmarks import cpu
from benchmarks.deployment import fresh_database
from locquota.db import make_engine, upgrade_to_head
from tests.galera.cluster import GaleraCluster, galera_cluster, synced_reads
from tests.servers import mariadb_server

DATABASE = "locquota_engines_bench"
POSTGRESQL, MARIADB, GALERA = "postgresql", "mariadb", "galera"
MARIADB_DURABILITY = ("innodb_flush_log_at_trx_commit", "innodb_doublewrite", "sync_binlog", "log_bin")


@dataclass
class Server:
    """One engine: the database URL of each node (one but on Galera), the server processes' pids, and its facts."""

    engine: str
    urls: list[str]
    pids: list[int] = field(default_factory=list)  # whose CPU time counts as the database's
    version: str = ""
    durability: str = ""
    cluster: GaleraCluster | None = None

    @property
    def check_url(self) -> str:
        """Where the benchmark reads what the runs committed: on Galera, node 1 waiting for the cluster's writes."""
        return synced_reads(self.urls[0]) if self.cluster is not None else self.urls[0]

    def conflicts(self) -> int | None:
        """Transactions Galera aborted for another node's write so far, summed over nodes (None off Galera)."""
        return self.cluster.conflicts() if self.cluster is not None else None

    def wait_until_applied(self) -> None:
        """On Galera, return once every node applied what the cluster committed (rows loaded through node 1)."""
        if self.cluster is not None:
            self.cluster.wait_until_applied()


@contextmanager
def engine_servers(admin_url: str, *, durable: bool) -> Iterator[list[Server]]:
    """PostgreSQL (the benchmark's server at admin_url), MariaDB and Galera, each with a migrated database."""
    with ExitStack() as stack:
        postgresql = Server(POSTGRESQL, [fresh_database(admin_url, DATABASE)])
        postmaster = cpu.postmaster_pid(admin_url)
        postgresql.pids = [postmaster] if postmaster is not None else []
        postgresql.version, postgresql.durability = _postgresql_facts(admin_url)
        mariadb_url = stack.enter_context(mariadb_server(durable=durable))
        mariadb = Server(MARIADB, [_fresh_mariadb_database(mariadb_url)])
        cluster = stack.enter_context(galera_cluster(durable=durable))
        _fresh_mariadb_database(cluster.urls[0])
        galera = Server(GALERA, cluster.database_urls(DATABASE), cluster=cluster)
        for server in (mariadb, galera):
            server.pids, server.version, server.durability = _mariadb_facts(server.urls)
        servers = [postgresql, mariadb, galera]
        for server in servers:
            engine = make_engine(server.urls[0])
            try:
                upgrade_to_head(engine)
            finally:
                engine.dispose()
        galera.wait_until_applied()
        yield servers


def _fresh_mariadb_database(server_url: str) -> str:
    """An empty database of this part on a MariaDB server (on Galera, node 1's; the DDL replicates); its URL."""
    url = make_url(server_url)
    connection = pymysql.connect(host=url.host, port=url.port, user=url.username, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
            cursor.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
    finally:
        connection.close()
    return f"{server_url}/{DATABASE}?charset=utf8mb4"


def _postgresql_facts(admin_url: str) -> tuple[str, str]:
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as connection:
        version = str(connection.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        shown = [
            f"{name} {connection.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        ]
    return version, ", ".join(shown)


def _mariadb_facts(urls: list[str]) -> tuple[list[int], str, str]:
    """Every node's mariadbd pid (from its pid file), the version and the durability settings (the same on each)."""
    pids, facts = [], []
    for server_url in urls:
        url = make_url(server_url)
        connection = pymysql.connect(host=url.host, port=url.port, user=url.username)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT @@pid_file")
                pids.append(int(Path(cursor.fetchone()[0]).read_text().split()[0]))
                cursor.execute("SELECT VERSION(), " + ", ".join(f"@@{name}" for name in MARIADB_DURABILITY))
                version, *values = cursor.fetchone()
                cursor.execute("SHOW GLOBAL STATUS LIKE 'wsrep_provider_version'")
                provider = (cursor.fetchone() or ("", ""))[1]
                facts.append((version + (f", galera {provider}" if provider else ""), tuple(values)))
        finally:
            connection.close()
    if len(set(facts)) > 1:
        raise RuntimeError(f"the nodes differ in version or durability: {facts}")
    version, values = facts[0]
    durability = ", ".join(f"{name} {value}" for name, value in zip(MARIADB_DURABILITY, values, strict=True))
    if len(urls) > 1:
        durability += f" on each of the {len(urls)} nodes; a commit returns once its write set reached them all"
    return pids, version, durability
