"""INSERT ... ON CONFLICT in the dialect of the session's database: PostgreSQL, SQLite or MariaDB/MySQL.

PostgreSQL and SQLite say ON CONFLICT (key) and name the new row `excluded`; MariaDB says ON DUPLICATE KEY
UPDATE (any unique key: callers use tables whose only unique key is the one they name) and names it
`inserted` (VALUES(column) underneath). One spelling here, so services need not know which they run on.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Insert, Table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnClause

# What an upsert writes when the key exists, from the row that was to be inserted ("excluded").
Changes = Callable[[Any], Mapping[str, ColumnClause[Any] | object]]


def insert_for(db: Session, table: Table) -> Insert:
    """An INSERT that can take upsert_of/ignore_existing, in the dialect of the session's database."""
    name = db.get_bind().dialect.name
    dialect = postgresql if name == "postgresql" else mysql if name in ("mysql", "mariadb") else sqlite
    return dialect.insert(table)


def upsert_of(insert: Insert, key: Sequence[str], changes: Changes) -> Insert:
    """The insert, or where a row with its key exists, that row updated by changes(new row)."""
    if isinstance(insert, mysql.Insert):
        return insert.on_duplicate_key_update(dict(changes(insert.inserted)))
    return insert.on_conflict_do_update(index_elements=list(key), set_=dict(changes(insert.excluded)))  # type: ignore[attr-defined]


def ignore_existing(insert: Insert, key: Sequence[str]) -> Insert:
    """The insert, doing nothing where a row with its key exists (no error, the existing row kept as it is)."""
    if isinstance(insert, mysql.Insert):
        # A no-op update rather than INSERT IGNORE, which would also swallow errors other than the duplicate.
        first = key[0]
        return insert.on_duplicate_key_update({first: insert.table.c[first]})
    return insert.on_conflict_do_nothing(index_elements=list(key))  # type: ignore[attr-defined]
