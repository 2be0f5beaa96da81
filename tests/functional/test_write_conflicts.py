"""Write conflicts (deadlocks, lock wait timeouts; on Galera, certification failures) are run again, not failed.

Each conflict here is a real one, made on the real server by two transactions that lock two rows in
opposite orders: the server picks the victim, and the retrying side must finish anyway.
"""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from webtest import TestApp

from locquota.db import make_engine
from locquota.write_conflicts import is_write_conflict, run_unit
from tests.conftest import identity
from tests.database_gates import POLL_SECONDS

pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]

ROWS = ("conflict-a", "conflict-b")
DEADLINE_SECONDS = 20


@pytest.fixture
def server(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        for tenant in ROWS:
            connection.execute(
                text(
                    "INSERT INTO tenant_usage (tenant_id, image_size_total, image_count_total, image_count_uploading,"
                    " image_stage_total, version, updated_at) VALUES (:tenant, 0, 0, 0, 0, 0, CURRENT_TIMESTAMP)"
                ),
                {"tenant": tenant},
            )
    yield engine
    engine.dispose()


def bump(connection: Connection | Session, tenant: str) -> None:
    connection.execute(text("UPDATE tenant_usage SET version = version + 1 WHERE tenant_id = :t"), {"t": tenant})


def waits_for_a_lock(observer: Connection) -> int:
    """Sessions of this database waiting for a row lock right now."""
    if observer.dialect.name == "postgresql":
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    else:
        query = "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
    return observer.exec_driver_sql(query).scalar_one()


# InnoDB refreshes its information_schema transaction tables only when they were last read over 0.1 s ago.
INNODB_TRX_IDLE_SECONDS = 0.15


def wait_for_a_waiter(engine: Engine) -> None:
    poll = POLL_SECONDS if engine.dialect.name == "postgresql" else INNODB_TRX_IDLE_SECONDS
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as observer:
        for _ in range(int(DEADLINE_SECONDS / poll)):
            if waits_for_a_lock(observer):
                return
            threading.Event().wait(poll)
    pytest.fail("no session waited for the row lock")


HOLDER_WRITES = 5


@contextmanager
def holding(engine: Engine, tenant: str) -> Iterator[Connection]:
    """A transaction that holds one usage row locked until the block ends, made the one the server keeps.

    PostgreSQL: the other side's deadlock check runs first (this one waits 10 s before checking). InnoDB rolls
    back the transaction that wrote less: this one writes its row several times.
    """
    with engine.connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL deadlock_timeout = '10s'")
        for _ in range(HOLDER_WRITES):
            bump(connection, tenant)
        yield connection


def make_a_deadlock(engine: Engine, victim: Callable[[], None]) -> None:
    """Hold row a, let victim lock b and wait for a, then ask for b: a cycle the server breaks by ending victim's."""
    with ThreadPoolExecutor(1) as pool:
        with holding(engine, ROWS[0]) as holder:
            done = pool.submit(victim)
            wait_for_a_waiter(engine)
            bump(holder, ROWS[1])  # waits for the victim's row b until the server rolls the victim back
        done.result(timeout=DEADLINE_SECONDS)  # a retried victim goes on once the holder has committed


def test_the_errors_of_a_real_deadlock_and_lock_wait_timeout_are_write_conflicts(server: Engine) -> None:
    caught: list[BaseException] = []

    def victim() -> None:
        try:
            with server.begin() as connection:
                bump(connection, ROWS[1])
                bump(connection, ROWS[0])
        except DBAPIError as exc:
            caught.append(exc)

    make_a_deadlock(server, victim)
    with holding(server, ROWS[0]), server.connect() as waiter:
        if waiter.dialect.name == "postgresql":
            waiter.exec_driver_sql("SET lock_timeout = '100ms'")  # SQLSTATE 55P03: not class 40, not a conflict
        else:
            waiter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")  # MariaDB 1205
        with pytest.raises(DBAPIError) as timed_out:
            bump(waiter, ROWS[0])
    with server.connect() as connection, pytest.raises(DBAPIError) as syntax_error:
        connection.exec_driver_sql("SELEC 1")

    assert len(caught) == 1
    assert is_write_conflict(caught[0])
    assert is_write_conflict(timed_out.value) == (server.dialect.name != "postgresql")
    assert not is_write_conflict(syntax_error.value)
    assert not is_write_conflict(ValueError("not a database error"))


def test_run_unit_runs_the_victim_of_a_real_deadlock_again_until_it_commits(server: Engine) -> None:
    factory = sessionmaker(bind=server)
    attempts: list[int] = []

    @contextmanager
    def unit_of_work() -> Iterator[Session]:
        with factory.begin() as session:
            yield session

    def work(db: Session) -> str:
        attempts.append(1)
        bump(db, ROWS[1])
        bump(db, ROWS[0])
        return "committed"

    outcome: list[str] = []
    make_a_deadlock(server, lambda: outcome.append(run_unit(unit_of_work, work)))

    assert outcome == ["committed"]
    assert len(attempts) == 2
    with server.connect() as connection:
        versions = dict(connection.execute(text("SELECT tenant_id, version FROM tenant_usage")).all())
    # The holder's writes and the unit's, the unit's exactly once.
    assert versions == {ROWS[0]: HOLDER_WRITES + 1, ROWS[1]: 2}


@pytest.mark.engines("postgresql")
def test_a_request_that_loses_a_deadlock_is_run_again_and_answers_once(
    app: TestApp, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """An image create inserts the image, then charges the tenant's usage row: the holder has the usage row and
    then asks for the images table, so the request waits for the holder and the holder for the request. The
    request's deadlock check runs first (the holder's waits 10 s) and ends the request's transaction.
    """
    tenant = identity("conflicted", "member")
    app.post_json("/v2/images", {"name": "warm-up"}, headers=tenant, status=201)  # the usage row exists
    with ThreadPoolExecutor(1) as pool, engine.connect() as holder:
        with holder.begin():
            holder.exec_driver_sql("SET LOCAL deadlock_timeout = '10s'")
            bump(holder, "conflicted")
            created = pool.submit(app.post_json, "/v2/images", {"name": "contested"}, headers=tenant, status="*")
            wait_for_a_waiter(engine)
            holder.exec_driver_sql("LOCK TABLE images IN SHARE MODE")  # waits for the request's insert: a cycle
            holder.rollback()
        response = created.result(timeout=DEADLINE_SECONDS)

    assert response.status_int == 201, response.body
    assert any("write conflict" in record.getMessage() for record in caplog.records)
    names = [image["name"] for image in app.get("/v2/images", headers=tenant).json["images"]]
    assert sorted(names) == ["contested", "warm-up"]
    usage = app.get("/v1/usage", headers=tenant).json
    assert usage["resources"]["image_count_total"]["usage"] == 2
