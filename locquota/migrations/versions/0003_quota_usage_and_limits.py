"""quota: usage totals, usage by store, tenant limits, reconcile drift

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:20:00.000000

Existing data is counted into the new totals here, so an upgraded database starts exact.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The same rules as the ledger: live locations are charged their size; images count unless deleted or killed.
BACKFILL_TENANTS = """
INSERT INTO tenant_usage (tenant_id, image_size_total, image_count_total, image_count_uploading,
                          image_stage_total, version, updated_at)
SELECT owner,
       COALESCE((SELECT SUM(COALESCE(l.size_bytes, 0)) FROM locations l JOIN images i2 ON i2.id = l.image_id
                 WHERE i2.owner = images.owner AND l.status IN ('active', 'pending_delete')), 0),
       SUM(CASE WHEN status NOT IN ('deleted', 'killed') THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'saving' THEN 1 ELSE 0 END),
       0, 0, CURRENT_TIMESTAMP
FROM images GROUP BY owner
"""
BACKFILL_STORES = """
INSERT INTO store_usage (tenant_id, store, state, size_bytes, locations)
SELECT i.owner, l.store, l.status, SUM(COALESCE(l.size_bytes, 0)), COUNT(*)
FROM locations l JOIN images i ON i.id = l.image_id
WHERE l.status IN ('active', 'pending_delete')
GROUP BY i.owner, l.store, l.status
"""


def upgrade() -> None:
    op.create_table(
        "tenant_usage",
        sa.Column("tenant_id", sa.String(length=255), nullable=False),
        sa.Column("image_size_total", sa.BigInteger(), nullable=False),
        sa.Column("image_count_total", sa.BigInteger(), nullable=False),
        sa.Column("image_count_uploading", sa.BigInteger(), nullable=False),
        sa.Column("image_stage_total", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_usage")),
    )
    op.create_table(
        "store_usage",
        sa.Column("tenant_id", sa.String(length=255), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("locations", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "store", "state", name=op.f("pk_store_usage")),
    )
    op.create_table(
        "tenant_limits",
        sa.Column("tenant_id", sa.String(length=255), nullable=False),
        sa.Column("resource", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "resource", name=op.f("pk_tenant_limits")),
    )
    op.create_table(
        "usage_drift",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(length=255), nullable=False),
        sa.Column("resource", sa.String(length=200), nullable=False),
        sa.Column("recorded", sa.BigInteger(), nullable=False),
        sa.Column("actual", sa.BigInteger(), nullable=False),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_drift")),
    )
    op.create_index(op.f("ix_usage_drift_tenant_id"), "usage_drift", ["tenant_id"])
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("tenants", sa.BigInteger(), nullable=False),
        sa.Column("drifted_tenants", sa.BigInteger(), nullable=False),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
    )
    op.execute(BACKFILL_TENANTS)
    op.execute(BACKFILL_STORES)


def downgrade() -> None:
    op.drop_table("reconcile_runs")
    op.drop_index(op.f("ix_usage_drift_tenant_id"), table_name="usage_drift")
    op.drop_table("usage_drift")
    op.drop_table("tenant_limits")
    op.drop_table("store_usage")
    op.drop_table("tenant_usage")
