"""The write path's budget in statements and transactions, pinned (issue 18), on every database.

Counted with tests/statement_counter.py, the hook the benchmarks print their counts with. A change that
adds a round trip or a commit to an upload, a create or an add-location fails here with the statements
listed, so it is a decision, not an accident. Each budget is the figure measured when it was set. MariaDB
has no UPDATE ... RETURNING: the upload's landing reads its image back after updating it, one more.
"""

import pytest
from sqlalchemy import Engine

from tests.functional.test_locations_api import PATCH_TYPE, add, file_in_store
from tests.statement_counter import Counts, counting

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def shown(make_app, settings):
    """A deployment that shows locations and limits the tenant, as a quota-minded cloud runs."""
    limited = {
        **settings,
        "locquota.show_multiple_locations": "true",
        "locquota.quota.image_size_total": "100",
        "locquota.quota.image_count_total": "1000",
    }
    return make_app(limited)


@pytest.fixture
def shown_engine(shown) -> Engine:
    return shown.app.registry["locquota.engine"]


def create(app, headers) -> dict[str, object]:
    body = {"name": "counted", "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=headers, status=201).json


def within(counts: Counts, statements: int, transactions: int) -> None:
    """Fail with what was sent when counts pass the budget."""
    assert len(counts.statements) <= statements, f"{counts}, budget {statements}:\n{counts.show()}"
    assert counts.commits <= transactions, f"{counts}, budget {transactions} transactions:\n{counts.show()}"


def writes_after_usage(counts: Counts) -> list[str]:
    """The statements of the last transaction from its first write of tenant_usage on (the usage lock held)."""
    sent = counts.statements
    first = next(
        index for index in range(len(sent) - 1, -1, -1) if sent[index].lstrip().startswith("UPDATE tenant_usage")
    )
    return sent[first:]


def test_create_is_one_transaction_of_three_statements(shown, shown_engine, tenant):
    create(shown, tenant)  # the tenant's usage row exists from here on
    with counting(shown_engine) as counts:
        create(shown, tenant)
    within(counts, 3, 1)
    assert counts.statements[-1].lstrip().startswith("UPDATE tenant_usage"), counts.show()  # the lock, last


def test_create_with_a_chosen_id_also_checks_the_id(shown, shown_engine, tenant):
    create(shown, tenant)
    body = {"id": "6f1a3c2e-5b4d-4e8f-9a0b-1c2d3e4f5a6b", "disk_format": "raw", "container_format": "bare"}
    with counting(shown_engine) as counts:
        shown.post_json("/v2/images", body, headers=tenant, status=201)
    within(counts, 4, 1)


def read_back(engine: Engine) -> int:
    """The statements an UPDATE ... RETURNING saves where the database has it (MariaDB does not)."""
    return 0 if engine.dialect.update_returning else 1


def test_upload_is_two_transactions_and_the_landing_reads_nothing(shown, shown_engine, tenant):
    image = create(shown, tenant)
    with counting(shown_engine) as counts:
        shown.put(f"/v2/images/{image['id']}/file", b"x", headers={**tenant, **OCTETS}, status=204)
    within(counts, 11 + read_back(shown_engine), 2)
    landing = writes_after_usage(counts)
    assert len(landing) <= 5 + read_back(shown_engine), counts.show()
    reads = [sql for sql in landing if sql.lstrip().startswith("SELECT")]
    assert len(reads) == read_back(shown_engine), counts.show()
    assert shown.get(f"/v2/images/{image['id']}", headers=tenant).json["status"] == "active"


def test_create_and_upload_together(shown, shown_engine, tenant):
    create(shown, tenant)
    with counting(shown_engine) as counts:
        image = create(shown, tenant)
        shown.put(f"/v2/images/{image['id']}/file", b"x", headers={**tenant, **OCTETS}, status=204)
    within(counts, 14 + read_back(shown_engine), 3)


def test_adding_a_location_is_one_transaction(shown, shown_engine, tenant, store_root):
    image = create(shown, tenant)
    url = file_in_store(store_root, "counted", b"12345")
    with counting(shown_engine) as counts:
        shown.patch_json(f"/v2/images/{image['id']}", add(url), headers={**tenant, "Content-Type": PATCH_TYPE})
    within(counts, 12, 1)  # on PostgreSQL one more than SQLite: the data key's advisory lock
