"""locations.data_key_hash: data identity by the store's canonical key, not by URL text

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 17:00:00.000000

url_hash (the hash of the URL's text) becomes data_key_hash, the hash of the canonical key of the data the
URL reaches (SPEC section 6). Existing rows keep their text hash with data_key_version 0 until
`locquota locations rekey` (which `locquota db upgrade` runs after this revision) recomputes them from
their stores: only the stores know how to canonicalise a URL, and only the application has their
configuration and the URL encryption keys. data_inode recognises a second name of a file (a hard link).
data_key_collisions keeps what the last rekey found: data that live locations of several tenants reference.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_locations_url_hash", table_name="locations")
    # Native on PostgreSQL, SQLite (3.25+) and MariaDB (10.5+): no table copy, the partial indexes stay as they are.
    op.execute("ALTER TABLE locations RENAME COLUMN url_hash TO data_key_hash")
    op.add_column("locations", sa.Column("data_key_version", sa.SmallInteger(), server_default="1", nullable=False))
    op.add_column("locations", sa.Column("data_inode", sa.String(length=64), nullable=True))
    op.execute("UPDATE locations SET data_key_version = 0")  # every row so far was hashed from its URL's text
    op.create_index("ix_locations_data_key_hash", "locations", ["data_key_hash"], unique=False)
    op.create_index("ix_locations_data_inode", "locations", ["data_inode"], unique=False)
    op.create_table(
        "data_key_collisions",
        sa.Column("data_key_hash", sa.String(length=64), nullable=False),
        sa.Column("tenants", sa.Integer(), nullable=False),
        sa.Column("locations", sa.Integer(), nullable=False),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("data_key_hash", name=op.f("pk_data_key_collisions")),
    )


def downgrade() -> None:
    op.drop_table("data_key_collisions")
    op.drop_index("ix_locations_data_inode", table_name="locations")
    op.drop_index("ix_locations_data_key_hash", table_name="locations")
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.drop_column("data_inode")
        batch_op.drop_column("data_key_version")
    op.execute("ALTER TABLE locations RENAME COLUMN data_key_hash TO url_hash")
    op.create_index("ix_locations_url_hash", "locations", ["url_hash"], unique=False)
