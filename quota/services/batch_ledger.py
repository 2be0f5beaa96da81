"""Usage changes of many tenants and stores at once: one statement per kind, whatever their number.

The scrubber records a whole batch at once (locations.services.scrub_recording): what UsageLedger.charge
and move_space would write change by change, summed per tenant and per (tenant, store), written with
one UPDATE ... FROM (the batch's rows: locquota.sql_batches.rows_of) and one multi-row upsert. The totals
and versions come out as the change-by-change path leaves them, so usage stays exact and the cache's version
check still holds.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from locquota.sql_batches import one_of, rows_of
from locquota.upserts import ignore_existing, insert_for, upsert_of
from quota.models import TENANT_RESOURCES, Resource, SpaceState, StoreUsage, TenantUsage
from quota.services.ledger import STORE_USAGE_KEY, added_space
from quota.services.usage_cache import mark_changed


@dataclass(slots=True)
class TenantChange:
    """What the per-row path's ledger charges add up to for one tenant."""

    deltas: Counter[Resource] = field(default_factory=Counter)
    charges: int = 0  # each charge bumps tenant_usage.version once (a charge that changes no total is not made)


@dataclass(slots=True)
class SpaceMove:
    """What leaves one (tenant, store)'s pending_delete space."""

    size_bytes: int = 0
    locations: int = 0

    def add(self, size_bytes: int) -> None:
        """One more location of this size (0 bytes still moves a location)."""
        self.size_bytes += size_bytes
        self.locations += 1


def charge_tenants(db: Session, now: datetime, tenants: dict[str, TenantChange]) -> None:
    """UsageLedger.charge for every tenant at once: the summed deltas, and version moved by every charge.

    A tenant without a usage row gets its zero row first, as charge creates it (two more statements, only
    then). MariaDB has no UPDATE ... RETURNING to tell which rows were missing: there every row is made sure
    of first, in tenant order (the lock order), then charged.
    """
    if not tenants:
        return
    if not db.get_bind().dialect.update_returning:
        _create_rows(db, now, sorted(tenants))
        db.execute(_charge_statement(db, now, tenants))
    else:
        updated = set(db.scalars(_charge_statement(db, now, tenants).returning(TenantUsage.tenant_id)))
        missing = sorted(set(tenants) - updated)
        if missing:
            _create_rows(db, now, missing)
            db.execute(_charge_statement(db, now, {tenant_id: tenants[tenant_id] for tenant_id in missing}))
    for tenant_id in tenants:
        mark_changed(db, tenant_id)


def _create_rows(db: Session, now: datetime, tenant_ids: list[str]) -> None:
    """The tenants' zero usage rows, where they have none yet."""
    zeros = {resource.value: 0 for resource in TENANT_RESOURCES}
    insert = insert_for(db, TenantUsage.__table__).values(  # type: ignore[arg-type]
        [{"tenant_id": tenant_id, "version": 0, "updated_at": now, **zeros} for tenant_id in tenant_ids]
    )
    db.execute(ignore_existing(insert, ["tenant_id"]))


def _charge_statement(db: Session, now: datetime, tenants: dict[str, TenantChange]) -> Any:
    columns = [
        ("tenant_id", TenantUsage.tenant_id.type),
        *((resource.value, TenantUsage.version.type) for resource in TENANT_RESOURCES),
        ("charges", TenantUsage.version.type),
    ]
    rows = [
        (tenant_id, *(change.deltas[resource] for resource in TENANT_RESOURCES), change.charges)
        for tenant_id, change in sorted(tenants.items())
    ]
    changes = rows_of(db, "changes", columns, rows)
    totals = {
        resource.value: getattr(TenantUsage, resource.value) + changes.c[resource.value]
        for resource in TENANT_RESOURCES
    }
    return (
        update(TenantUsage)
        # The ids again as a plain test: the row is found by its key, and on MariaDB no other tenant's row is
        # locked on the way (a join that scans tenant_usage locks each row it reads, and deadlocked).
        .where(TenantUsage.tenant_id == changes.c.tenant_id, one_of(db, TenantUsage.tenant_id, sorted(tenants)))
        .values(version=TenantUsage.version + changes.c.charges, updated_at=now, **totals)
        .execution_options(synchronize_session=False)
    )


def release_pending_space(db: Session, space: dict[tuple[str, str], SpaceMove]) -> None:
    """UsageLedger.move_space out of pending_delete for every (tenant, store) at once: one upsert."""
    if not space:
        return
    insert = insert_for(db, StoreUsage.__table__).values(  # type: ignore[arg-type]
        [
            {
                "tenant_id": tenant_id,
                "store": store,
                "state": SpaceState.PENDING_DELETE.value,
                "size_bytes": -move.size_bytes,
                "locations": -move.locations,
            }
            for (tenant_id, store), move in sorted(space.items())
        ]
    )
    db.execute(upsert_of(insert, STORE_USAGE_KEY, added_space))
