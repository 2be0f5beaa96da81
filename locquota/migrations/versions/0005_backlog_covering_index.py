"""backlog summary index: pending_delete locations by store, covering the metrics' columns

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:25:00.000000

The metrics scrape sums pending_delete locations per store; with the INCLUDE columns PostgreSQL answers
from the index alone (an index-only scan), instead of one heap read per pending row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_locations_pending_backlog",
            ["store"],
            unique=False,
            postgresql_include=["size_bytes", "scrub_after", "attempts", "pending_since"],
            postgresql_where=sa.text("status = 'pending_delete'"),
            sqlite_where=sa.text("status = 'pending_delete'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.drop_index("ix_locations_pending_backlog")
