"""uploads: the lease of each upload in flight, and where its bytes go

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 19:00:00.000000

An image in saving is held by its uploading request's lease (SPEC section 11). Images already in
saving when this runs have no request left to renew anything: each gets an expired lease without a
target, so the first reaper pass returns it to queued and releases image_count_uploading.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("image_id", sa.Uuid(), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("scratch_url", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_uploads_image_id_images")),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_uploads")),
    )
    op.create_index(op.f("ix_uploads_expires_at"), "uploads", ["expires_at"], unique=False)
    op.execute(
        "INSERT INTO uploads (image_id, holder, expires_at, started_at) "
        "SELECT id, 'migration-0007', updated_at, updated_at FROM images WHERE status = 'saving'"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_uploads_expires_at"), table_name="uploads")
    op.drop_table("uploads")
