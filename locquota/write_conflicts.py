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

from locquota.db import abort_and_begin, commit_and_begin
from locquota.scripting import UnitOfWork

T = TypeVar("T")
log = logging.getLogger(__name__)

MYSQL_CONFLICTS = {
    1213: "deadlock, or a Galera certification failure at commit",
    1205: "lock wait timeout",
}
UNIT_ATTEMPTS = 8  # a unit outside a request: a scrubber's batch, a reaper's take-over, an upload's landing
BACKOFF_BASE_SECONDS = 0.005


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


def backoff_seconds(attempt: int) -> float:
    """A random wait below 5 ms doubled per attempt ("full jitter"), so that writers that collided spread out."""
    return random.uniform(0, BACKOFF_BASE_SECONDS * 2**attempt)  # noqa: S311 - spreading retries, not a secret


def run_unit(unit_of_work: UnitOfWork, work: Callable[[Session], T], *, attempts: int = UNIT_ATTEMPTS) -> T:
    """work(db) in a unit of work that commits, run again from its start after a write conflict."""
    for attempt in range(attempts):
        try:
            with unit_of_work() as db:
                return work(db)
        except DBAPIError as exc:
            _wait_or_raise(exc, attempt, attempts)
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
        try:
            result = work()
            commit_and_begin(manager)
            return result
        except DBAPIError as exc:
            abort_and_begin(manager)
            _wait_or_raise(exc, attempt, attempts)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _wait_or_raise(exc: DBAPIError, attempt: int, attempts: int) -> None:
    if attempt == attempts - 1 or not is_write_conflict(exc):
        raise exc
    log.info("write conflict (%s), attempt %s of %s: running the unit again", exc.orig, attempt + 1, attempts)
    time.sleep(backoff_seconds(attempt))
