"""The database: one declarative Base, the engine, and a session per request joined to its transaction."""

from pathlib import Path

import transaction
import zope.sqlalchemy
from alembic import command
from alembic.config import Config as AlembicConfig
from pyramid.config import Configurator
from pyramid.request import Request
from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Every model's base; constraint names are stable so migrations can refer to them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _tune_sqlite(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers proceed during a write; busy_timeout makes writers queue instead of failing at once.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    """An engine for PostgreSQL (psycopg 3) or SQLite, with SQLite tuned for several threads."""
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if url.get_backend_name() == "sqlite":
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
    config.registry["locquota.session_factory"] = sessionmaker(bind=engine, expire_on_commit=False)
    config.add_request_method(_request_session, "db", reify=True)


def _request_session(request: Request) -> Session:
    session = request.registry["locquota.session_factory"]()
    zope.sqlalchemy.register(session, transaction_manager=request.tm)
    request.add_finished_callback(lambda _request: session.close())
    return session


def commit_and_begin(manager: transaction.TransactionManager) -> None:
    """End the current unit of work and start the next one, for work that must show progress as it goes."""
    manager.commit()
    manager.begin()


def abort_and_begin(manager: transaction.TransactionManager) -> None:
    """Throw the current unit of work away and start the next one (after a failure mid-way)."""
    manager.abort()
    manager.begin()
