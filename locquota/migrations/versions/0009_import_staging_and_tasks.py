"""staged_data, tasks and task_copies: interoperable image import (staging, import tasks, copies in flight)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 01:00:00.000000

Images gain the statuses uploading and importing (a non-native enum: strings, no type to alter).
staged_data holds each image's staged bytes (charged to image_stage_total); tasks are Glance's import
tasks, run under a lease; task_copies are the writes a task has in flight, each with the space it
was admitted for ahead of its data.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staged_data",
        sa.Column("image_id", sa.Uuid(), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=32), nullable=False),
        sa.Column("os_hash_value", sa.String(length=128), nullable=False),
        sa.Column("staged_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_staged_data_image_id_images")),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_staged_data")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=30), nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "processing", "success", "failure", name="taskstatus", native_enum=False, length=30),
            nullable=False,
        ),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("image_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_tasks_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index(op.f("ix_tasks_image_id"), "tasks", ["image_id"], unique=False)
    op.create_index(op.f("ix_tasks_lease_expires_at"), "tasks", ["lease_expires_at"], unique=False)
    op.create_table(
        "task_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("image_id", sa.Uuid(), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("scratch_url", sa.Text(), nullable=True),
        sa.Column("reserved_bytes", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_task_copies_image_id_images")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_copies_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_copies")),
    )
    op.create_index(op.f("ix_task_copies_task_id"), "task_copies", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_task_copies_task_id"), table_name="task_copies")
    op.drop_table("task_copies")
    op.drop_index(op.f("ix_tasks_lease_expires_at"), table_name="tasks")
    op.drop_index(op.f("ix_tasks_image_id"), table_name="tasks")
    op.drop_table("tasks")
    op.drop_table("staged_data")
