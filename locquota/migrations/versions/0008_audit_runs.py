"""audit_runs: each `locquota audit` run and what it found, by kind, for the metrics

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 20:00:00.000000

One row per run; the metrics read the last finished one. A run that dies keeps finished_at NULL and is
never read as the last run.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("fixed", sa.Boolean(), nullable=False),
        sa.Column("missing", sa.BigInteger(), nullable=False),
        sa.Column("wrong_size", sa.BigInteger(), nullable=False),
        sa.Column("orphan", sa.BigInteger(), nullable=False),
        sa.Column("partial", sa.BigInteger(), nullable=False),
        sa.Column("stuck", sa.BigInteger(), nullable=False),
        sa.Column("unreadable", sa.BigInteger(), nullable=False),
        sa.Column("repaired", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("unchecked_stores", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_runs")),
    )


def downgrade() -> None:
    op.drop_table("audit_runs")
