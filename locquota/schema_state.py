"""Where a database's schema stands against this locquota's migrations, for the CLI's checks and reports.

A command run on a database that was never migrated, or that an older release left behind, stops with one
line saying to run `locquota db upgrade`, before any query could fail on a missing table.
"""

from dataclasses import dataclass

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from locquota.db import MIGRATIONS, make_engine, upgrade_to_head
from locquota.masking import mask_url

UPGRADE_HINT = "run `locquota db upgrade`"


class DatabaseNotReadyError(Exception):
    """The database cannot serve this locquota (unreachable, never migrated, behind); the message says which."""


@dataclass(frozen=True, slots=True)
class Revision:
    """One migration: its id, the first line of its description, and whether it is the newest."""

    id: str
    title: str
    is_head: bool


def migrations() -> list[Revision]:
    """Every migration of this locquota, newest first (as `alembic history` lists them)."""
    return [
        Revision(script.revision, next(iter((script.doc or "").strip().splitlines()), ""), script.is_head)
        for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()
    ]


def head_revision() -> str:
    """The newest revision this locquota knows."""
    return next(revision.id for revision in migrations() if revision.is_head)


def first_line(exc: DBAPIError) -> str:
    """The driver's own message, first line only (SQLAlchemy appends the statement and a link)."""
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def unreachable(database_url: str, exc: DBAPIError) -> DatabaseNotReadyError:
    """The one-line error for a database that did not answer."""
    return DatabaseNotReadyError(f"cannot reach the database at {mask_url(database_url)}: {first_line(exc)}")


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None if it was never migrated. DBAPIError if it cannot be reached."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def revision_at(database_url: str) -> str | None:
    """The revision of the database at this URL, on a connection of its own; DatabaseNotReadyError if unreachable."""
    engine = make_engine(database_url)
    try:
        return current_revision(engine)
    except DBAPIError as exc:
        raise unreachable(database_url, exc) from exc
    finally:
        engine.dispose()


def schema_problem(database_url: str, revision: str | None) -> str | None:
    """Why a database at this revision cannot serve commands, or None: never migrated, or behind the newest.

    A revision this locquota does not know (a newer release migrated the database) is let through: newer
    migrations add to the schema, and an older node must keep working during a rolling upgrade.
    """
    where = mask_url(database_url)
    if revision is None:
        return f"the database at {where} has no locquota schema: {UPGRADE_HINT}"
    head = head_revision()
    if revision != head and revision in {known.id for known in migrations()}:
        return f"the database at {where} is at revision {revision}, older than this locquota's {head}: {UPGRADE_HINT}"
    return None


def require_schema(database_url: str) -> None:
    """Raise DatabaseNotReadyError, with one line, unless the database answers and is at the newest revision."""
    problem = schema_problem(database_url, revision_at(database_url))
    if problem:
        raise DatabaseNotReadyError(problem)


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Migrate to the newest revision; the revisions before and after, so the caller can say what was done."""
    before = current_revision(engine)
    upgrade_to_head(engine)
    return before, current_revision(engine)
