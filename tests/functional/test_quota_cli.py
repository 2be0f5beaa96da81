"""`locquota reconcile` and `locquota limits` through click's CliRunner, on the real test database.

Drift is made the way it happens in life: rows written behind the ledger's back (a manual fix in psql,
a restored backup), then found and repaired by the command, while the API keeps answering.
"""

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from locations.models import Location
from locations.services.recount import recount
from locquota.cli import cli
from quota.models import ReconcileRun, StoreUsage, TenantUsage, UsageDrift
from tests.conftest import T0, identity

IMAGE = {"name": "img", "disk_format": "raw", "container_format": "bare"}


@pytest.fixture
def run(ini):
    def invoke(*args: str, exit_code: int = 0):
        result = CliRunner().invoke(cli, ["--config", str(ini), *args])
        assert result.exit_code == exit_code, (result.output, result.exception)
        return result

    return invoke


def uploaded(app, headers, data):
    image = app.post_json("/v2/images", IMAGE, headers=headers, status=201).json
    app.put(f"/v2/images/{image['id']}/file", data, headers={**headers, "Content-Type": "application/octet-stream"})
    return image


def stored_totals(engine, tenant_id):
    with Session(engine) as session:
        row = session.get(TenantUsage, tenant_id)
        return (row.image_size_total, row.image_count_total) if row else None


def equals_recount(engine, tenant_id):
    with Session(engine) as session:
        [actual] = recount(session, [tenant_id])
        row = session.get(TenantUsage, tenant_id)
        spaces = session.scalars(select(StoreUsage).where(StoreUsage.tenant_id == tenant_id)).all()
        stored_space = {(s.store, s.state): (s.size_bytes, s.locations) for s in spaces if s.size_bytes or s.locations}
        real_space = {(store, state.value): (v.size_bytes, v.locations) for (store, state), v in actual.space.items()}
        stored = {resource: getattr(row, resource.value) for resource in actual.totals}
        return stored == actual.totals and stored_space == real_space


# --- reconcile ------------------------------------------------------------------------------------------------


def test_reconcile_without_drift_reports_none_and_changes_nothing(app, engine, tenant, other_tenant, run):
    uploaded(app, tenant, b"a" * 100)
    uploaded(app, other_tenant, b"b" * 50)
    before = (stored_totals(engine, "tenant-a"), stored_totals(engine, "tenant-b"))
    result = run("reconcile")
    assert "reconciled 2 tenants: 0 drifted figures in 0 tenants" in result.output
    assert "drift\t" not in result.output
    assert (stored_totals(engine, "tenant-a"), stored_totals(engine, "tenant-b")) == before


def test_reconcile_reports_drift_without_repairing_it(app, engine, tenant, run):
    uploaded(app, tenant, b"a" * 100)
    with Session(engine) as session, session.begin():
        session.execute(update(TenantUsage).values(image_size_total=999))
    result = run("reconcile")
    assert "drift\ttenant-a\timage_size_total\trecorded 999\tactual 100" in result.output
    assert "1 drifted figures in 1 tenants found" in result.output
    assert stored_totals(engine, "tenant-a") == (999, 1)


def test_reconcile_fix_repairs_totals_and_the_store_split(app, engine, tenant, run):
    uploaded(app, tenant, b"a" * 100)
    with Session(engine) as session, session.begin():
        session.execute(update(TenantUsage).values(image_size_total=5, image_count_total=9))
        session.execute(update(StoreUsage).values(size_bytes=1, locations=7))
    result = run("reconcile", "--fix")
    assert "repaired" in result.output
    assert stored_totals(engine, "tenant-a") == (100, 1)
    assert equals_recount(engine, "tenant-a")
    assert "0 drifted figures" in run("reconcile").output


def test_reconcile_finds_a_tenant_whose_usage_row_is_missing(app, engine, tenant, run):
    uploaded(app, tenant, b"a" * 100)
    with Session(engine) as session, session.begin():
        session.query(TenantUsage).delete()
        session.query(StoreUsage).delete()
    result = run("reconcile", "--fix")
    assert "drift\ttenant-a\timage_size_total\trecorded 0\tactual 100" in result.output
    assert equals_recount(engine, "tenant-a")


def test_reconcile_zeroes_a_row_left_for_a_tenant_without_images(engine, run, app, tenant):
    uploaded(app, tenant, b"a" * 10)
    with Session(engine) as session, session.begin():
        session.add(
            TenantUsage(
                tenant_id="ghost",
                image_size_total=42,
                image_count_total=1,
                image_count_uploading=0,
                image_stage_total=0,
                version=0,
                updated_at=T0,
            )
        )
    result = run("reconcile", "--fix")
    assert "drift\tghost\timage_size_total\trecorded 42\tactual 0" in result.output
    assert stored_totals(engine, "ghost") == (0, 0)


def test_reconcile_keeps_the_drift_it_found_for_the_metrics(app, engine, tenant, run):
    uploaded(app, tenant, b"a" * 100)
    with Session(engine) as session, session.begin():
        session.execute(update(TenantUsage).values(image_size_total=1))
    run("reconcile", "--fix")
    with Session(engine) as session:
        drift = session.scalars(select(UsageDrift)).all()
        assert [(d.tenant_id, d.resource, d.recorded, d.actual, d.repaired) for d in drift] == [
            ("tenant-a", "image_size_total", 1, 100, True)
        ]
        [last] = session.scalars(select(ReconcileRun).order_by(ReconcileRun.id.desc()).limit(1)).all()
        assert (last.tenants, last.drifted_tenants, last.repaired) == (1, 1, True)
        assert last.finished_at is not None
    run("reconcile")
    with Session(engine) as session:
        assert session.scalars(select(UsageDrift)).all() == []  # each run replaces the last one's findings


def test_reconcile_walks_every_tenant_in_batches(app, engine, run):
    for number in range(7):
        uploaded(app, identity(f"t{number}"), b"x" * (number + 1))
    with Session(engine) as session, session.begin():
        session.execute(update(TenantUsage).values(image_size_total=0))
    result = run("reconcile", "--fix", "--batch-size", "2")
    assert "reconciled 7 tenants: 7 drifted figures in 7 tenants repaired" in result.output
    assert all(equals_recount(engine, f"t{number}") for number in range(7))


def test_reconcile_repair_drops_the_cached_usage(app, engine, tenant, run, redis_url):
    uploaded(app, tenant, b"a" * 100)
    with Session(engine) as session, session.begin():
        session.execute(update(TenantUsage).values(image_size_total=3))
    assert app.get("/v1/usage", headers=tenant).json["resources"]["image_size_total"]["usage"] == 3
    run("reconcile", "--fix")
    assert not redis.Redis.from_url(redis_url).exists("locquota:usage:v1:tenant-a")
    assert app.get("/v1/usage", headers=tenant).json["resources"]["image_size_total"]["usage"] == 100


def test_reconcile_counts_pending_delete_and_ignores_deleted_locations(make_app, settings, engine, tenant, run):
    app = make_app({**settings, "locquota.delayed_delete": "true", "locquota.scrub_time": "60"})
    pending = uploaded(app, tenant, b"p" * 70)
    app.delete(f"/v2/images/{pending['id']}", headers=tenant, status=204)
    uploaded(app, tenant, b"q" * 30)
    with Session(engine) as session, session.begin():
        session.execute(update(Location).where(Location.size_bytes == 30).values(size_bytes=31))  # behind our back
    result = run("reconcile", "--fix")
    assert "drift\ttenant-a\timage_size_total\trecorded 100\tactual 101" in result.output
    assert equals_recount(engine, "tenant-a")


# --- limits ------------------------------------------------------------------------------------------------------


def test_limits_set_show_and_reset(app, tenant, run):
    result = run("limits", "set", "tenant-a", "image_size_total=100", "image_count_total=3")
    assert "tenant-a\timage_size_total\t100 MiB\t(tenant)" in result.output
    assert "tenant-a\tlocations_per_image\t10\t(default)" in result.output
    usage = app.get("/v2/info/usage", headers=tenant).json["usage"]
    assert usage["image_size_total"]["limit"] == 100
    assert usage["image_count_total"]["limit"] == 3
    run("limits", "set", "tenant-a", "image_count_total=4")
    shown = run("limits", "show", "tenant-a").output
    assert "image_size_total\t100 MiB\t(tenant)" in shown  # set keeps the other overrides
    assert "image_count_total\t4\t(tenant)" in shown
    run("limits", "reset", "tenant-a", "image_size_total")
    shown = run("limits", "show", "tenant-a").output
    assert "image_size_total\t-1\t(default)" in shown
    assert "image_count_total\t4\t(tenant)" in shown
    run("limits", "reset", "tenant-a")
    assert "(tenant)" not in run("limits", "show", "tenant-a").output


@pytest.mark.parametrize(
    "assignment",
    ["image_size_total", "bogus=1", "image_size_total=-2", "image_size_total=1.5", "image_size_total=8796093022208"],
)
def test_limits_set_refuses_bad_assignments(run, assignment):
    result = run("limits", "set", "tenant-a", assignment, exit_code=2)
    assert "Invalid value" in result.output
    assert "(tenant)" not in run("limits", "show", "tenant-a").output


def test_limits_refuse_a_bad_tenant_id(run):
    result = run("limits", "show", "x" * 256, exit_code=2)
    assert "tenant id" in result.output
