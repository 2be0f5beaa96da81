"""A PostgreSQL server of one test module's own, which its tests may stop and start (an outage, a restart).

Import both fixtures into the module (`from tests.stoppable_postgresql import database_url, own_postgresql`):
`database_url` then overrides conftest's, so the app under test runs on the server the module stops.
"""

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from locquota.db import make_engine, upgrade_to_head
from tests.servers import PostgresqlServer


@pytest.fixture(scope="module")
def own_postgresql() -> Iterator[PostgresqlServer]:
    server = PostgresqlServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def database_url(own_postgresql: PostgresqlServer) -> str:
    """A fresh, migrated database on this module's server (running again if a previous test stopped it)."""
    own_postgresql.start()
    name = f"stoppable_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(own_postgresql.url + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    url = f"{own_postgresql.url}/{name}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    return url
