"""Alembic environment: runs against the engine locquota.db hands over, or a URL on the command line."""

from alembic import context

import locations.models  # noqa: F401  (registers the tables on Base.metadata for autogenerate)
import locquota.tokens  # noqa: F401
import quota.models  # noqa: F401
from locquota.db import Base, make_engine

config = context.config
engine = config.attributes.get("engine") or make_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
