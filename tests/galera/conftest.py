"""The Galera cluster of these tests: three nodes started once per session, one database migrated once through
node 1 (its DDL replicates as total-order isolation), emptied before each test, and whole again before each test
(a node a test killed rejoins)."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest
from sqlalchemy import Engine
from webtest import TestApp

from locquota.app import configure
from locquota.db import make_engine, upgrade_to_head
from tests.conftest import empty_mariadb
from tests.galera.cluster import GaleraCluster, galera_cluster, synced_reads

DATABASE = "locquota_test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "galera: runs on a three-node MariaDB Galera cluster (tests/galera/cluster.py)")


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """The cluster, Synced, with locquota's schema at head on every node."""
    started = time.monotonic()
    with galera_cluster() as cluster:
        synced = time.monotonic()
        connection = pymysql.connect(host="127.0.0.1", port=cluster.nodes[0].sql_port, user="root")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            connection.close()
        engine = make_engine(cluster.database_urls(DATABASE)[0])
        try:
            upgrade_to_head(engine)
        finally:
            engine.dispose()
        print(f"galera: 3 nodes Synced in {synced - started:.1f} s, migrated in {time.monotonic() - synced:.1f} s")
        yield cluster


@pytest.fixture
def galera_urls(galera: GaleraCluster) -> list[str]:
    """Node 1's, 2's and 3's URL of the migrated database: every node running and Synced, every table empty."""
    galera.heal()
    urls = galera.database_urls(DATABASE)
    empty_mariadb(urls[0])
    return urls


@pytest.fixture
def node_engine(galera_urls: list[str]) -> Iterator[Callable[[int], Engine]]:
    """An engine on node n (0, 1 or 2) for arranging rows and checking what the workers on every node committed;
    one per node, disposed afterwards."""
    engines: dict[int, Engine] = {}

    def engine(node: int) -> Engine:
        if node not in engines:
            engines[node] = make_engine(synced_reads(galera_urls[node]))
        return engines[node]

    yield engine
    for built in engines.values():
        built.dispose()


@pytest.fixture
def galera_engine(node_engine: Callable[[int], Engine]) -> Engine:
    """Node 1's engine (node_engine(0))."""
    return node_engine(0)


@pytest.fixture
def node_settings(galera_urls: list[str], redis_url: str, store_root: Path) -> Callable[[int], dict[str, str]]:
    """The settings of an API node attached to Galera node n (0, 1 or 2): the suite's deployment, on that node,
    all of them sharing one file store and one Redis."""

    def settings(node: int) -> dict[str, str]:
        return {
            "locquota.database_url": galera_urls[node],
            "locquota.redis_url": redis_url,
            "locquota.auth_strategy": "noauth",
            "locquota.allow_insecure_noauth": "true",
            "locquota.enabled_stores": "file",
            "locquota.default_store": "file",
            "locquota.store.file.datadir": str(store_root),
            "locquota.upload_chunk_bytes": "4096",
        }

    return settings


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """The one file store every API node and scrubber shares (made, and resolved: the scrubbers' aliases need it)."""
    root = tmp_path / "store"
    root.mkdir()
    return root.resolve()


@pytest.fixture
def node_app(node_settings: Callable[[int], dict[str, str]]) -> Iterator[Callable[[int], TestApp]]:
    """A WebTest app attached to node n, to arrange and read through the API; its engine disposed afterwards."""
    built = []

    def app(node: int) -> TestApp:
        built.append(configure(node_settings(node)).make_wsgi_app())
        return TestApp(built[-1])

    yield app
    for wsgi in built:
        wsgi.registry["locquota.engine"].dispose()
