"""MariaDB: pending_delete indexes led by status (no partial indexes there), data key lock slots

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:30:00.000000

The scrubber's due work, the backlog list and the metrics' backlog summary read only pending_delete rows.
PostgreSQL and SQLite keep the three indexes partial (WHERE status = 'pending_delete'); MariaDB ignores
that clause, so there each index would hold every location, deleted ones included, and a walk to the due
rows would cross all of them. With status as the leading column the walk starts at the pending_delete rows
on every engine: its cost follows the backlog, not the number of active or deleted locations.

data_key_lock_slots: MariaDB's lock of a data key (PostgreSQL takes an advisory lock; see
locations.models.DataKeyLockSlot): all 65,536 slots made here, so that a lock is an UPDATE of rows that exist
(inserting them on demand deadlocks on InnoDB's gap locks). Empty, and unused, elsewhere.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending_delete'")
LOCK_SLOTS = 2**16  # the first 16 bits of a data key's hash (locations.services.data_references.lock_data_keys)
SLOTS_PER_INSERT = 4096
INDEXES = {
    "ix_locations_pending_delete": (["scrub_after", "id"], {}),
    "ix_locations_pending_since": (["pending_since", "id"], {}),
    "ix_locations_pending_backlog": (
        ["store"],
        {"postgresql_include": ["size_bytes", "scrub_after", "attempts", "pending_since"]},
    ),
}


def _rebuild(leading: list[str]) -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        for name, (columns, options) in INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, [*leading, *columns], postgresql_where=PENDING, sqlite_where=PENDING, **options)


def upgrade() -> None:
    _rebuild(["status"])
    op.create_table(
        "data_key_lock_slots",
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("taken", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("slot", name=op.f("pk_data_key_lock_slots")),
    )
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        slots = sa.table("data_key_lock_slots", sa.column("slot", sa.Integer), sa.column("taken", sa.BigInteger))
        for first in range(0, LOCK_SLOTS, SLOTS_PER_INSERT):
            op.bulk_insert(slots, [{"slot": n, "taken": 0} for n in range(first, first + SLOTS_PER_INSERT)])


def downgrade() -> None:
    op.drop_table("data_key_lock_slots")
    _rebuild([])
