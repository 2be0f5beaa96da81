"""Write conflicts: the errors that mean "run this unit of work again", and running it again.

A Galera cluster certifies a transaction's writes against the other nodes' only at COMMIT: every
statement succeeded, then the loser of two nodes' writes to one row gets MySQL's deadlock error (1213).
InnoDB gives the same error for a local deadlock and 1205 when a lock wait times out; PostgreSQL gives
SQLSTATE class 40 (serialization failure, deadlock). None of these is a wrong request or a database that
is down, and in each the database has already rolled the work back (1205 only the statement: the caller
aborts the rest): the same unit, run again from its start, sees the winner's write and usually succeeds.

Every guarded write in locquota re-checks its condition when it runs, so running a unit again is safe:
an admission is re-admitted against the usage the winner left, a scrubber's record writes only the
claims it still holds.
"""

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import transaction
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from locquota.db import UnitOfWork, abort_and_begin, commit_and_begin

T = TypeVar("T")
log = logging.getLogger(__name__)

MYSQL_CONFLICTS = {
    1213: "deadlock, or a Galera certification failure at commit",
    1205: "lock wait timeout",
}
# A unit outside a request (a scrubber's batch, a reaper's take-over, an upload's landing): with the waits
# below, 20 attempts span several seconds, enough for three Galera writers on one tenant's row to take turns.
UNIT_ATTEMPTS = 20
REQUEST_ATTEMPTS = 10  # pyramid_retry's retry.attempts, unless the .ini sets it
BACKOFF_BASE_SECONDS = 0.01
BACKOFF_CAP_SECONDS = 1.0


def is_write_conflict(exc: BaseException) -> bool:
    """Whether exc is a database's "the concurrent writer won: try again" (never an outage or a bug)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL: (code, message); 1205's SQLSTATE is HY000
        return args[0] in MYSQL_CONFLICTS
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    return isinstance(sqlstate, str) and sqlstate.startswith("40")


def backoff_seconds(attempt: int, unit_seconds: float = 0.0) -> float:
    """A random wait ("full jitter") below the unit's own duration (10 ms at least) doubled per attempt, 1 s at most.

    Sized to the unit: writers that collided then rarely start their next attempts at the same moment again.
    """
    ceiling = min(BACKOFF_CAP_SECONDS, max(BACKOFF_BASE_SECONDS, unit_seconds) * 2**attempt)
    return random.uniform(0, ceiling)  # noqa: S311 - spreading retries, not a secret


def run_unit(unit_of_work: UnitOfWork, work: Callable[[Session], T], *, attempts: int = UNIT_ATTEMPTS) -> T:
    """work(db) in a unit of work that commits, run again from its start after a write conflict."""
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            with unit_of_work() as db:
                return work(db)
        except DBAPIError as exc:
            _wait_or_raise(exc, attempt, attempts, time.monotonic() - started)
    raise AssertionError("unreachable: the last attempt returns or raises")


def run_and_commit(
    manager: transaction.TransactionManager, work: Callable[[], T], *, attempts: int = UNIT_ATTEMPTS
) -> T:
    """work() then a commit on the running transaction of manager; after a write conflict, both again.

    For a unit inside a longer job (an upload's landing, after its bytes are stored): the unit is
    aborted and work starts again on a fresh transaction; the caller's objects stay usable
    (expire_on_commit is off).
    """
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            result = work()
            commit_and_begin(manager)
            return result
        except DBAPIError as exc:
            abort_and_begin(manager)
            _wait_or_raise(exc, attempt, attempts, time.monotonic() - started)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _wait_or_raise(exc: DBAPIError, attempt: int, attempts: int, unit_seconds: float) -> None:
    if attempt == attempts - 1 or not is_write_conflict(exc):
        raise exc
    log.info("write conflict (%s), attempt %s of %s: running the unit again", exc.orig, attempt + 1, attempts)
    time.sleep(backoff_seconds(attempt, unit_seconds))
