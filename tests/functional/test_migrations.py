"""The Alembic migrations build exactly the schema the models declare (the suite's databases are built by them)."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import locations.models  # noqa: F401  (registers the tables on Base.metadata)
import locquota.tokens  # noqa: F401
import quota.models  # noqa: F401
from locquota.db import Base


def test_the_migrated_schema_matches_the_models(engine):
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
