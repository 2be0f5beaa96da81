"""Alembic environment: runs against the engine locquota.db hands over, or a URL on the command line."""

from alembic import context

import locations.models  # noqa: F401  (registers the tables on Base.metadata for autogenerate)
import locquota.tokens  # noqa: F401
import quota.models  # noqa: F401
from locquota.db import Base, make_engine

BINARY_COLLATION = "utf8mb4_bin"

config = context.config
engine = config.attributes.get("engine") or make_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    # Names, tags, owners and ids compare byte for byte, as on PostgreSQL and SQLite (MariaDB's default
    # collations fold case and trailing spaces): every table created from here on takes this default.
    # Only when it differs: ALTER DATABASE waits for every open transaction on the database's tables.
    on_mariadb = connection.dialect.name in ("mysql", "mariadb")
    if on_mariadb and connection.exec_driver_sql("SELECT @@collation_database").scalar() != BINARY_COLLATION:
        connection.exec_driver_sql(f"ALTER DATABASE CHARACTER SET utf8mb4 COLLATE {BINARY_COLLATION}")
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
