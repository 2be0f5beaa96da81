"""Barriers on the database server itself, for tests that release many processes at once (PostgreSQL, MariaDB).

A test holds a table locked, starts its processes, waits until the server shows each of them blocked on that
table (an observed condition, polled, never a timer), then releases the lock: they all go at once.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection

from locquota.db import make_engine

POLL_SECONDS = 0.02  # a poll interval of an observed condition, not a synchronisation


@contextmanager
def table_locked(database_url: str, table: str) -> Iterator[None]:
    """Hold `table` so that nobody else reads or writes it until the block ends.

    PostgreSQL: LOCK TABLE ... ACCESS EXCLUSIVE, to the end of the transaction. MariaDB: LOCK TABLES ... WRITE,
    to UNLOCK TABLES.
    """
    engine = make_engine(database_url)
    try:
        with engine.connect() as gate:
            on_postgresql = gate.dialect.name == "postgresql"
            lock = f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE" if on_postgresql else f"LOCK TABLES {table} WRITE"
            gate.exec_driver_sql(lock)
            try:
                yield
            finally:
                gate.rollback()
                if not on_postgresql:
                    gate.exec_driver_sql("UNLOCK TABLES")
    finally:
        engine.dispose()


def blocked_on(observer: Connection, table: str) -> int:
    """How many sessions of this database wait for a lock in a statement that names `table`."""
    named = f"%{table}%"
    if observer.dialect.name == "postgresql":
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND query ILIKE %(named)s"
        )
    else:
        waiting = (
            "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() AND command = 'Query'"
            " AND state LIKE 'Waiting for table%%' AND info LIKE %(named)s"
        )
    return observer.exec_driver_sql(waiting, {"named": named}).scalar_one()


def wait_until_blocked(database_url: str, table: str, count: int, deadline_seconds: float) -> None:
    """Return once `count` sessions wait for the lock on `table`; fail past the deadline."""
    engine = make_engine(database_url)
    deadline, waiting = time.monotonic() + deadline_seconds, 0
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as observer:
            while time.monotonic() < deadline:
                waiting = blocked_on(observer, table)
                if waiting >= count:
                    return
                time.sleep(POLL_SECONDS)
    finally:
        engine.dispose()
    pytest.fail(f"only {waiting} of {count} sessions reached the {table} table within {deadline_seconds} s")
