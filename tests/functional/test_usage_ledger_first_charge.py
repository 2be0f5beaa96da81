"""A tenant's first charge while another transaction creates its usage row (issue 13's race, made certain).

The charge's UPDATE finds no row; before it creates one, another request creates the row and commits. The
charge must then land on that row (exact totals), never be refused: under unlimited limits there is
nothing to refuse. The interleaving is forced at the exact statement by a cursor hook on the charging
connection, so the test does not depend on timing.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from locquota.clock import FrozenClock
from quota.models import Resource, TenantUsage
from quota.services.ledger import UsageLedger
from quota.services.limits import Limits
from tests.conftest import T0

# SQLite serialises writers: the UPDATE that finds nothing already holds the write lock, so the race cannot happen.
pytestmark = [pytest.mark.postgresql, pytest.mark.mariadb]

TENANT = "first-charge-tenant"
UNLIMITED = Limits(dict.fromkeys(Resource, -1), frozenset())


@contextmanager
def after_first(engine: Engine, sql_start: str, action) -> Iterator[list[str]]:
    """Run action once, just after the first statement on engine that starts with sql_start."""
    seen: list[str] = []

    def hook(_connection, _cursor, statement: str, *_args) -> None:
        if not seen and statement.lstrip().upper().startswith(sql_start):
            seen.append(statement)
            action()

    event.listen(engine, "after_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(engine, "after_cursor_execute", hook)


@pytest.mark.parametrize("within", [UNLIMITED, None], ids=["admitted", "unchecked"])
def test_a_first_charge_lands_on_a_row_another_transaction_just_created(engine, within):
    clock = FrozenClock(T0)

    def other_request_charges_first() -> None:
        with Session(engine) as other:
            UsageLedger(other, clock).charge(TENANT, {Resource.IMAGE_COUNT_TOTAL: 1})
            other.commit()

    with Session(engine) as session:
        # Right after the charge's UPDATE found no row, the other request creates the row and commits, as
        # under real concurrency; the hook fires once, so the other request's own statements pass through.
        with after_first(engine, "UPDATE TENANT_USAGE", other_request_charges_first) as seen:
            UsageLedger(session, clock).charge(TENANT, {Resource.IMAGE_COUNT_TOTAL: 1}, within=within)
        session.commit()
        assert seen, "the interleaving point was never reached"

    with Session(engine) as session:
        assert session.get_one(TenantUsage, TENANT).image_count_total == 2
