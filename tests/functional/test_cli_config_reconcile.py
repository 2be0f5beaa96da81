"""`locquota reconcile --check`: exit 1 on drift and 0 when clean, changing nothing; plain `reconcile` as before.

Drift is made as in life: a usage row written behind the ledger's back. "Nothing changed" is every row of the
four tables reconcile touches, compared before and after.
"""

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from locquota.cli import cli
from quota.models import ReconcileRun, StoreUsage, TenantUsage, UsageDrift

IMAGE = {"name": "img", "disk_format": "raw", "container_format": "bare"}
DRIFT_LINE = "drift\ttenant-a\timage_size_total\trecorded 999\tactual 100"


@pytest.fixture
def run(ini):
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(ini), *args])

    return invoke


@pytest.fixture
def uploaded(app, tenant):
    image = app.post_json("/v2/images", IMAGE, headers=tenant, status=201).json
    headers = {**tenant, "Content-Type": "application/octet-stream"}
    app.put(f"/v2/images/{image['id']}/file", b"a" * 100, headers=headers, status=204)
    return image


def snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row reconcile could write, as plain tuples."""
    with Session(engine) as session:
        return {
            model.__tablename__: [tuple(row) for row in session.execute(select(model.__table__)).all()]
            for model in (TenantUsage, StoreUsage, UsageDrift, ReconcileRun)
        }


def make_drift(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(TenantUsage).values(image_size_total=999))


def test_check_on_clean_usage_exits_0_and_records_nothing(engine, uploaded, run):
    before = snapshot(engine)

    result = run("reconcile", "--check")

    assert result.exit_code == 0, result.output
    assert "reconciled 1 tenants: 0 drifted figures in 0 tenants" in result.stdout
    assert snapshot(engine) == before


def test_check_on_drift_exits_1_reports_it_and_changes_nothing(engine, uploaded, run):
    make_drift(engine)
    assert run("reconcile").exit_code == 0  # a run recorded before: its drift rows and run row must stay as they are
    before = snapshot(engine)

    result = run("reconcile", "--check")

    assert result.exit_code == 1, result.output
    assert DRIFT_LINE in result.stdout
    assert "1 drifted figures in 1 tenants found (checked only: nothing recorded)" in result.stdout
    assert snapshot(engine) == before


def test_reconcile_without_check_still_exits_0_on_drift_and_records_it(engine, uploaded, run):
    make_drift(engine)

    result = run("reconcile")

    assert result.exit_code == 0, result.output
    assert DRIFT_LINE in result.stdout
    assert [row[1:4] for row in snapshot(engine)["usage_drift"]] == [("tenant-a", "image_size_total", 999)]


def test_check_and_fix_together_are_refused_and_change_nothing(engine, uploaded, run):
    make_drift(engine)
    before = snapshot(engine)

    result = run("reconcile", "--check", "--fix")

    assert result.exit_code == 2
    assert "--check changes nothing and --fix repairs: choose one" in result.output
    assert snapshot(engine) == before
