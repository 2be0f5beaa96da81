"""location scrub bookkeeping and url hash

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:42:30.568143
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 5000


def _fill_url_hashes() -> None:
    """Hash the URLs of existing rows in batches (the column is NOT NULL once filled)."""
    connection = op.get_bind()
    locations = sa.table("locations", sa.column("id", sa.Integer), sa.column("url", sa.Text), sa.column("url_hash"))
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(locations.c.id, locations.c.url)
            .where(locations.c.id > last_id, locations.c.url_hash.is_(None))
            .order_by(locations.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for row_id, url in rows:
            digest = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()
            connection.execute(locations.update().where(locations.c.id == row_id).values(url_hash=digest))
        last_id = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("url_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("pending_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("scrub_after", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_error", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("claim_expires_at", sa.DateTime(), nullable=True))
        batch_op.drop_index("ix_locations_pending_delete")
    _fill_url_hashes()
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.alter_column("url_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(
            "ix_locations_pending_delete",
            ["scrub_after", "id"],
            unique=False,
            postgresql_where=sa.text("status = 'pending_delete'"),
            sqlite_where=sa.text("status = 'pending_delete'"),
        )
        batch_op.create_index(
            "ix_locations_pending_since",
            ["pending_since", "id"],
            unique=False,
            postgresql_where=sa.text("status = 'pending_delete'"),
            sqlite_where=sa.text("status = 'pending_delete'"),
        )
        batch_op.create_index("ix_locations_url_hash", ["url_hash"], unique=False)
    # Rows already pending_delete (none before this revision's features, but be exact): due now.
    op.execute(
        "UPDATE locations SET pending_since = updated_at, scrub_after = updated_at WHERE status = 'pending_delete'"
    )


def downgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.drop_index("ix_locations_url_hash")
        batch_op.drop_index("ix_locations_pending_since")
        batch_op.drop_index("ix_locations_pending_delete")
        batch_op.create_index(
            "ix_locations_pending_delete",
            ["store", "updated_at"],
            unique=False,
            postgresql_where=sa.text("status = 'pending_delete'"),
            sqlite_where=sa.text("status = 'pending_delete'"),
        )
        for column in (
            "claim_expires_at",
            "claimed_by",
            "last_error",
            "attempts",
            "scrub_after",
            "pending_since",
            "url_hash",
        ):
            batch_op.drop_column(column)
