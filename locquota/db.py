"""The database: one declarative Base, the engine, and a session per request joined to its transaction."""

import logging
import re
import select
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import transaction
import zope.sqlalchemy
from alembic import command
from alembic.config import Config as AlembicConfig
from pyramid.config import Configurator
from pyramid.request import Request
from sqlalchemy import Connection, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import ExecutionContext, make_url
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

MIGRATIONS = Path(__file__).parent / "migrations"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

log = logging.getLogger(__name__)
# A factory of units of work: each `with` yields a session in a transaction that commits on exit.
UnitOfWork = Callable[[], AbstractContextManager[Session]]


class Base(DeclarativeBase):
    """Every model's base; constraint names are stable so migrations can refer to them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


@compiles(DateTime, "mysql")
@compiles(DateTime, "mariadb")
def _microsecond_datetime(_type: DateTime, _compiler: object, **_kw: object) -> str:
    """MariaDB's DATETIME keeps whole seconds unless told otherwise: keep microseconds, as PostgreSQL does.

    Listing order (created_at, id), lease expiry and scrub due times compare timestamps a request apart.
    """
    return "DATETIME(6)"


# MariaDB/MySQL sessions: READ COMMITTED as on PostgreSQL (each statement sees what was committed before it,
# so a read after waiting for a row lock sees the winner's write), and utf8mb4 on the wire.
MYSQL_ISOLATION = "READ COMMITTED"
MYSQL_CHARSET = "utf8mb4"


def _tune_sqlite(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers proceed during a write; busy_timeout makes writers queue instead of failing at once.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# TCP keepalives on PostgreSQL connections (libpq's parameters), unless the URL sets its own: a pooled
# connection whose server vanished without closing it (a host crash, a failover) then fails its probes
# within about a minute of idling, and the check at checkout sees the error instead of a request.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}
HUNG_UP = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


def server_hung_up(dbapi_connection: object) -> bool:
    """Whether an idle psycopg connection is dead, asked of the socket alone (no round trip).

    A server that stops or restarts (even killed) closes its connections: the socket of an idle one turns
    readable (a FATAL message, then EOF) or errs. An idle connection in the pool has nothing to read
    otherwise, so anything there means it must not be used; a spurious hit costs one reconnect.
    """
    if dbapi_connection.closed or dbapi_connection.broken:  # type: ignore[attr-defined]
        return True
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), HUNG_UP)  # type: ignore[attr-defined]
    return bool(poller.poll(0))


def _replace_dead_connection(
    dbapi_connection: object, _record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    # What pool_pre_ping protects against, without its round trip on every checkout: the pool drops every
    # connection older than now (a restarted server closed them all) and checks out a fresh one.
    if server_hung_up(dbapi_connection):
        raise InvalidatePoolError("the database server closed this pooled connection")


# An execution option (of a statement or a connection): never server-side prepared, so every run is planned
# for its own values, never on a generic plan. A read that ended in ROLLBACK never was (a ROLLBACK empties
# psycopg's prepared-statement cache); one in autocommit would be from its sixth run on a connection.
UNPREPARED = "locquota_unprepared"
# Reads that need no transaction run in autocommit: no BEGIN and no ROLLBACK round trip around them.
AUTOCOMMIT_READS = {"isolation_level": "AUTOCOMMIT"}


@contextmanager
def reading(session: Session) -> Iterator[Connection]:
    """A connection for statements that only read: outside any transaction unless the session has begun one.

    Each PostgreSQL statement sees its own snapshot at READ COMMITTED anyway, so reads outside a transaction
    see what they would have seen inside one. The connection goes back to the pool when the block ends, and
    the session never begins: no zope.sqlalchemy join, nothing for pyramid_tm to end. Once the session has
    begun (a token lookup, a write), its transaction is used as it is.
    """
    bind = session.get_bind()
    if session.in_transaction() or not isinstance(bind, Engine):
        yield session.connection()
        return
    with bind.connect() as connection:
        yield connection.execution_options(**AUTOCOMMIT_READS)


def _execute_unprepared(cursor: object, statement: str, parameters: object, context: ExecutionContext) -> bool:
    """SQLAlchemy's do_execute hook: run an UNPREPARED statement with psycopg's prepare=False."""
    if not context.execution_options.get(UNPREPARED):
        return False  # SQLAlchemy executes it as usual
    cursor.execute(statement, parameters, prepare=False)  # type: ignore[attr-defined]
    return True


# MySQL's "Incorrect <type> value" (ER_TRUNCATED_WRONG_VALUE), which strict mode makes an error; its message
# ends "for column `<schema>`.`<table>`.`<column>` at row N".
MYSQL_VALUE_REFUSED = 1292
REFUSED_COLUMN = re.compile(r"for column `[^`]*`\.`([^`]*)`\.`([^`]*)`")


def refused_column(exc: BaseException) -> str | None:
    """The "table.column" whose type refused a value it cannot hold (the request's fault, not an outage).

    MariaDB's UUID type (10.11.5 and later) refuses some well-formed UUIDs of versions 8 and up, which
    PostgreSQL and SQLite store: a client's chosen image id can be one. PyMySQL raises it as an
    OperationalError, which would otherwise read as "database unreachable". None for any other error.
    """
    if not isinstance(exc, DBAPIError):
        return None
    args = getattr(exc.orig, "args", ())
    if len(args) < 2 or args[0] != MYSQL_VALUE_REFUSED:
        return None
    found = REFUSED_COLUMN.search(str(args[1]))
    return f"{found[1]}.{found[2]}" if found else None


def make_engine(database_url: str) -> Engine:
    """An engine for PostgreSQL (psycopg 3), MariaDB/MySQL (PyMySQL) or SQLite, SQLite tuned for several threads.

    A pooled PostgreSQL connection is checked at checkout by looking at its socket (server_hung_up) rather
    than by pool_pre_ping, whose round trip was a quarter of a GET's database time. SQLite has no server to
    lose; MariaDB keeps pool_pre_ping. JSON columns and aggregates are decoded with orjson, every
    backend alike (a page of images decodes three per row).
    """
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername in ("mysql", "mariadb"):
        url = url.set(drivername=f"{url.drivername}+pymysql")  # OpenStack's driver, pure Python
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    if url.drivername == "postgresql+psycopg":
        keepalives = {name: value for name, value in KEEPALIVES.items() if name not in url.query}
        engine = create_engine(url, connect_args=keepalives, json_deserializer=orjson.loads)
        event.listen(engine, "checkout", _replace_dead_connection)
        event.listen(engine, "do_execute", _execute_unprepared)
    elif backend in ("mysql", "mariadb"):
        url = url.update_query_dict({"charset": MYSQL_CHARSET}) if "charset" not in url.query else url
        # pool_recycle: MariaDB closes a connection idle for wait_timeout (8 h by default) on its own.
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_recycle=3600,
            isolation_level=MYSQL_ISOLATION,
            json_deserializer=orjson.loads,
        )
    else:
        engine = create_engine(url, pool_pre_ping=backend != "sqlite", json_deserializer=orjson.loads)
    if backend == "sqlite":
        event.listen(engine, "connect", _tune_sqlite)
    return engine


def alembic_config(engine: Engine) -> AlembicConfig:
    """Alembic's config for our one migration tree, bound to this engine (no alembic.ini needed)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema to the newest revision; a no-op when it is there already."""
    command.upgrade(alembic_config(engine), "head")


def includeme(config: Configurator) -> None:
    """The engine (migrated first when auto_migrate is on) and request.db."""
    settings = config.registry["locquota.settings"]
    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        upgrade_to_head(engine)
    config.registry["locquota.engine"] = engine
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    join_request_transactions(factory)
    config.registry["locquota.session_factory"] = factory
    config.add_request_method(_request_session, "db", reify=True)


# session.info key: the zope.sqlalchemy events that join a request's session to the request's transaction.
REQUEST_TRANSACTION = "locquota.request_transaction"
# zope.sqlalchemy's session events, each with where its session is found among the event's arguments.
ZOPE_SESSION_EVENTS: dict[str, Callable[[Any], Session]] = {
    "after_begin": lambda session: session,
    "after_attach": lambda session: session,
    "after_flush": lambda session: session,
    "after_bulk_update": lambda context: context.session,
    "after_bulk_delete": lambda context: context.session,
    "before_commit": lambda session: session,
    "do_orm_execute": lambda state: state.session,
}


def join_request_transactions(factory: sessionmaker[Session]) -> None:
    """Listen for zope.sqlalchemy's events once, on the factory, for every request session it makes.

    zope.sqlalchemy.register(session) listens for seven events on each new session, which cost about a
    tenth of a GET; these listeners hand each event to its session's own ZopeTransactionEvents (bound to
    that request's transaction manager), and do nothing for a session made outside a request.
    """
    for name, session_of in ZOPE_SESSION_EVENTS.items():
        event.listen(factory, name, _forwarded(name, session_of))


def _forwarded(name: str, session_of: Callable[[Any], Session]) -> Callable[..., None]:
    def forward(first: object, *rest: object) -> None:
        events = session_of(first).info.get(REQUEST_TRANSACTION)
        if events is not None:
            getattr(events, name)(first, *rest)

    return forward


def _request_session(request: Request) -> Session:
    events = zope.sqlalchemy.ZopeTransactionEvents(transaction_manager=request.tm)
    session = request.registry["locquota.session_factory"](info={REQUEST_TRANSACTION: events})
    request.add_finished_callback(lambda _request: session.close())
    return session


def commit_and_begin(manager: transaction.TransactionManager) -> None:
    """End the current unit of work and start the next one, for work that must show progress as it goes."""
    manager.commit()
    manager.begin()


def abort_and_begin(manager: transaction.TransactionManager) -> None:
    """Throw the current unit of work away and start the next one (after a failure mid-way).

    A ROLLBACK that fails has nothing left to keep: on Galera, the ROLLBACK of a transaction that another
    node's write already aborted raises the deadlock error itself. It is logged, and the next unit begins.
    """
    try:
        manager.abort()
    except Exception:  # the transaction manager is free again either way (transaction.abort)
        log.warning("a rollback failed; the unit was thrown away anyway", exc_info=True)
    manager.begin()
