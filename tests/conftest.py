"""Servers, settings, the app, a database session and identity headers for every test.

The suite starts its own PostgreSQL, MariaDB and Redis on free ports on 127.0.0.1. Database tests run on
PostgreSQL, MariaDB and SQLite (`database_url` is parametrized); `@pytest.mark.postgresql` and
`@pytest.mark.mariadb` keep a test to those servers. Each test gets an empty, migrated database, and the app
commits for real.
"""

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import port_for
import psycopg
import pymysql
import pytest
import redis
import sqlalchemy
from pymysql.constants.CLIENT import MULTI_STATEMENTS
from pyramid.router import Router
from pytest_redis import factories as redis_factories
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from webtest import TestApp

from locquota.app import configure
from locquota.clock import Clock, FrozenClock
from locquota.db import make_engine, upgrade_to_head
from tests.servers import mariadb_server, postgresql_server

T0 = datetime(2026, 1, 1, 12, 0, 0)
TABLES = (
    "locations",
    "image_properties",
    "image_tags",
    "images",
    "tokens",
    "tenant_usage",
    "store_usage",
    "tenant_limits",
    "usage_drift",
    "reconcile_runs",
    "data_key_collisions",
    "uploads",
    "audit_runs",
    "staged_data",
    "task_copies",
    "tasks",
)

# A test marked with one or both runs on those database servers only (not on SQLite).
SERVER_MARKERS = ("postgresql", "mariadb")
# Every table on MariaDB, which has no TRUNCATE ... CASCADE (image_members goes with images on PostgreSQL).
MARIADB_TABLES = (*TABLES, "image_members")

redis_proc = redis_factories.redis_proc(host="127.0.0.1", port=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: runs on PostgreSQL (row locks, SKIP LOCKED, concurrency)")
    config.addinivalue_line("markers", "mariadb: runs on MariaDB (with postgresql: on both, not on SQLite)")
    config.addinivalue_line("markers", "engines(*names): runs on these databases only (postgresql, mariadb, sqlite)")
    config.addinivalue_line("markers", "glance_dump: imports a Glance dump from a PostgreSQL or MariaDB it starts")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the database variants a test is marked for (postgresql, mariadb), when it is marked."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        engine = params.params.get("database_url") if params is not None else None
        wanted = {name for name in SERVER_MARKERS if item.get_closest_marker(name)}
        if (only := item.get_closest_marker("engines")) is not None:
            wanted = set(only.args)
        (dropped if engine is not None and wanted and engine not in wanted else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def no_locquota_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCQUOTA_* variables override settings: one exported in a developer's shell must not reach a test."""
    for name in [name for name in os.environ if name.startswith("LOCQUOTA_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgresql_admin_url() -> Iterator[str]:
    with postgresql_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgresql_migrated_url(postgresql_admin_url: str) -> str:
    with psycopg.connect(postgresql_admin_url + "/postgres", autocommit=True) as connection:
        connection.execute("CREATE DATABASE locquota_test")
    url = postgresql_admin_url + "/locquota_test"
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def mariadb_admin_url() -> Iterator[str]:
    with mariadb_server() as url:
        yield url


@pytest.fixture(scope="session")
def mariadb_migrated_url(mariadb_admin_url: str) -> str:
    with sqlalchemy.create_engine(mariadb_admin_url).connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE locquota_test")
    url = mariadb_admin_url + "/locquota_test"
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    return url


def empty_mariadb(url: str) -> None:
    """Delete every row of every table and start ids at 1 again, as TRUNCATE ... RESTART IDENTITY CASCADE does
    on PostgreSQL; only the tables whose ids moved are altered (an ALTER costs a few ms, a DELETE far less)."""
    connection = pymysql.connect(**_pymysql_arguments(url), autocommit=True, client_flag=MULTI_STATEMENTS)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = DATABASE() AND auto_increment > 1"
            )
            moved = [name for (name,) in cursor.fetchall()]
            statements = [
                "SET FOREIGN_KEY_CHECKS = 0",
                *(f"DELETE FROM {table}" for table in MARIADB_TABLES),  # noqa: S608  (our own table names)
                *(f"ALTER TABLE {table} AUTO_INCREMENT = 1" for table in moved),
            ]
            cursor.execute("; ".join(statements))
            while cursor.nextset():
                pass
    finally:
        connection.close()


def _pymysql_arguments(url: str) -> dict[str, object]:
    parsed = sqlalchemy.make_url(url)
    return {"host": parsed.host, "port": parsed.port, "user": parsed.username, "database": parsed.database}


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "locquota.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_to_head(engine)
    engine.dispose()
    return path


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database of the parametrized kind."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgresql_migrated_url")
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        return url
    if request.param == "mariadb":
        url = request.getfixturevalue("mariadb_migrated_url")
        empty_mariadb(url)
        return url
    path = tmp_path / "locquota.sqlite"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def redis_url(redis_proc: object) -> str:
    client_url = f"redis://{redis_proc.host}:{redis_proc.port}/0"  # type: ignore[attr-defined]
    redis.Redis.from_url(client_url).flushall()
    return client_url


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def settings(database_url: str, redis_url: str, store_root: Path) -> dict[str, str]:
    """The .ini settings of a test deployment: identity from headers shaped as keystonemiddleware sets them.

    noauth trusts those headers (development only); the keystone strategy trusts only what a real
    auth_token filter left in the environ, which tests/e2e/test_keystone*.py run against a real Keystone.
    """
    return {
        "locquota.database_url": database_url,
        "locquota.redis_url": redis_url,
        "locquota.auth_strategy": "noauth",
        "locquota.allow_insecure_noauth": "true",
        "locquota.enabled_stores": "file",
        "locquota.default_store": "file",
        "locquota.store.file.datadir": str(store_root),
        "locquota.upload_chunk_bytes": "4096",
    }


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def build_wsgi_app(clock: FrozenClock) -> Iterator[Callable[[dict[str, str]], Router]]:
    """Build the app from whole settings, with the frozen clock; every engine built is disposed afterwards."""
    built: list[Router] = []

    def build(app_settings: dict[str, str]) -> Router:
        config = configure(app_settings)
        config.register_service(clock, iface=Clock)
        built.append(config.make_wsgi_app())
        return built[-1]

    yield build
    for wsgi in built:
        wsgi.registry["locquota.engine"].dispose()


@pytest.fixture
def make_app(build_wsgi_app: Callable[[dict[str, str]], Router]) -> Callable[[dict[str, str]], TestApp]:
    """A WebTest app for a deployment with other settings (pass the whole settings dict)."""
    return lambda app_settings: TestApp(build_wsgi_app(app_settings))


@pytest.fixture
def wsgi_app(settings: dict[str, str], build_wsgi_app: Callable[[dict[str, str]], Router]) -> Router:
    return build_wsgi_app(settings)


@pytest.fixture
def app(wsgi_app: Router) -> TestApp:
    return TestApp(wsgi_app)


@pytest.fixture
def engine(wsgi_app: object) -> Engine:
    return wsgi_app.registry["locquota.engine"]  # type: ignore[attr-defined]


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session on the test database, to arrange rows and to check what the app committed."""
    with Session(engine) as session:
        yield session


def write_ini(path: Path, settings: dict[str, str]) -> Path:
    """A PasteDeploy .ini of these settings, for the `locquota` command (CliRunner or a real process)."""
    lines = ["[app:main]", "use = egg:locquota", *(f"{key} = {value}" for key, value in settings.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ini(settings: dict[str, str], tmp_path: Path) -> Path:
    """The test deployment as an .ini: the same database and store the app fixture uses."""
    return write_ini(tmp_path / "locquota.ini", settings)


def multi_store(
    settings: dict[str, str], default: str, stores: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, str]:
    """The suite's settings with Glance's multi-store configuration in place of its one file store.

    stores: name -> (type, options with glance_store's names); default: the store uploads go to.
    """
    single_store = ("locquota.enabled_stores", "locquota.default_store")
    kept = {key: value for key, value in settings.items() if not key.startswith("locquota.store.")}
    return {
        **{key: value for key, value in kept.items() if key not in single_store},
        "locquota.enabled_backends": ", ".join(f"{name}:{kind}" for name, (kind, _) in stores.items()),
        "locquota.default_backend": default,
        **{
            f"locquota.store.{name}.{key}": value
            for name, (_, section) in stores.items()
            for key, value in section.items()
        },
    }


def identity(tenant: str, *roles: str) -> dict[str, str]:
    """The headers keystonemiddleware's auth_token filter sets for an authenticated caller (noauth reads them)."""
    return {"X-Identity-Status": "Confirmed", "X-Project-Id": tenant, "X-Roles": ",".join(roles or ("member",))}


@pytest.fixture
def tenant() -> dict[str, str]:
    return identity("tenant-a")


@pytest.fixture
def other_tenant() -> dict[str, str]:
    return identity("tenant-b")


@pytest.fixture
def admin() -> dict[str, str]:
    return identity("operators", "admin")


@pytest.fixture
def new_image(app: TestApp, tenant: dict[str, str]):
    """Create an image through the API as `tenant` and return its JSON."""

    def create(headers: dict[str, str] | None = None, **attributes: object) -> dict[str, object]:
        body = {"name": "cirros", "disk_format": "qcow2", "container_format": "bare", **attributes}
        return app.post_json("/v2/images", body, headers=headers or tenant, status=201).json

    return create


@pytest.fixture
def upload(app: TestApp, tenant: dict[str, str]):
    """Upload bytes to an image through the API."""

    def put(image_id: str, data: bytes, headers: dict[str, str] | None = None, status: int | str = 204) -> object:
        return app.put(
            f"/v2/images/{image_id}/file",
            data,
            headers={**(headers or tenant), "Content-Type": "application/octet-stream"},
            status=status,
        )

    return put


def random_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def usage_of(engine: Engine) -> Callable[[str], dict[str, object]]:
    """What the database holds for a tenant: its totals and its space by store and state (for "changed nothing")."""
    from quota.models import TENANT_RESOURCES, StoreUsage, TenantUsage  # noqa: PLC0415

    def read(tenant_id: str) -> dict[str, object]:
        with Session(engine) as session:
            row = session.get(TenantUsage, tenant_id)
            totals = {resource.value: getattr(row, resource.value) if row else 0 for resource in TENANT_RESOURCES}
            space = {
                (usage.store, usage.state): (usage.size_bytes, usage.locations)
                for usage in session.query(StoreUsage).filter_by(tenant_id=tenant_id)
                if usage.size_bytes or usage.locations
            }
        return {"totals": totals, "space": space}

    return read


def closed_port_url(scheme_and_user: str, path: str) -> str:
    """A URL on 127.0.0.1 at a free port nothing listens on: connections are refused at once."""
    return f"{scheme_and_user}127.0.0.1:{port_for.select_random()}/{path}"


@pytest.fixture
def database_down_settings(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """A deployment whose PostgreSQL is unreachable; no auto_migrate, so the app still builds."""
    return {
        "locquota.database_url": closed_port_url("postgresql://postgres@", "locquota"),
        "locquota.auto_migrate": "false",
        "locquota.redis_url": redis_url,
        "locquota.auth_strategy": "noauth",
        "locquota.allow_insecure_noauth": "true",
        "locquota.enabled_stores": "file",
        "locquota.default_store": "file",
        "locquota.store.file.datadir": str(tmp_path / "images"),
    }
