"""locations.glance_location_id: the Glance row a location was imported from

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:00:00.000000

`locquota import-glance` matches a re-run's locations by (image_id, glance_location_id); the unique index
makes a second import update its rows instead of adding them again. Locations added in locquota keep NULL
(a unique index admits any number of NULLs on PostgreSQL and SQLite).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("glance_location_id", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            "uq_locations_image_id_glance_location_id", ["image_id", "glance_location_id"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.drop_index("uq_locations_image_id_glance_location_id")
        batch_op.drop_column("glance_location_id")
