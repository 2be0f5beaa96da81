"""image_members and an index for public and community images: images shared as Glance shares them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 04:00:00.000000

image_members holds the projects a shared image is shared with and each one's answer (pending,
accepted, rejected); image_created_at repeats the image's created_at so a member's list is an index
walk. ix_images_visibility_created_at_id serves the public and community part of every tenant's list.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Uuid(), nullable=False),
        sa.Column("member", sa.String(length=255), nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "accepted", "rejected", name="memberstatus", native_enum=False, length=20),
            nullable=False,
        ),
        sa.Column("image_created_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_image_members_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_members")),
        sa.UniqueConstraint("image_id", "member", name="uq_image_members_image_id_member"),
    )
    op.create_index(
        "ix_image_members_member_status_created",
        "image_members",
        ["member", "status", "image_created_at", "image_id"],
        unique=False,
    )
    op.create_index("ix_images_visibility_created_at_id", "images", ["visibility", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_images_visibility_created_at_id", table_name="images")
    op.drop_index("ix_image_members_member_status_created", table_name="image_members")
    op.drop_table("image_members")
