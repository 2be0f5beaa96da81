"""Usage changes of many tenants and stores at once: one statement per kind, whatever their number.

The scrubber records a whole batch at once (locations.services.scrub_recording): what UsageLedger.charge
and move_space would write change by change, summed per tenant and per (tenant, store), written with
one UPDATE ... FROM (VALUES ...) and one multi-row upsert. The totals and versions come out as the
change-by-change path leaves them, so usage stays exact and the cache's version check still holds.
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import column, update, values
from sqlalchemy.orm import Session

from quota.models import TENANT_RESOURCES, Resource, SpaceState, StoreUsage, TenantUsage
from quota.services.ledger import insert_for
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

    A tenant without a usage row gets its zero row first, as charge creates it (two more statements,
    only then).
    """
    if not tenants:
        return
    updated = set(db.scalars(_charge_statement(now, tenants)))
    missing = sorted(set(tenants) - updated)
    if missing:
        zeros = {resource.value: 0 for resource in TENANT_RESOURCES}
        db.execute(
            insert_for(db, TenantUsage.__table__)  # type: ignore[arg-type]
            .values([{"tenant_id": tenant_id, "version": 0, "updated_at": now, **zeros} for tenant_id in missing])
            .on_conflict_do_nothing(index_elements=["tenant_id"])
        )
        db.execute(_charge_statement(now, {tenant_id: tenants[tenant_id] for tenant_id in missing})).all()
    for tenant_id in tenants:
        mark_changed(db, tenant_id)


def _charge_statement(now: datetime, tenants: dict[str, TenantChange]) -> Any:
    changes = values(
        column("tenant_id", TenantUsage.tenant_id.type),
        *(column(resource.value, TenantUsage.version.type) for resource in TENANT_RESOURCES),
        column("charges", TenantUsage.version.type),
        name="changes",
    ).data(
        [
            (tenant_id, *(change.deltas[resource] for resource in TENANT_RESOURCES), change.charges)
            for tenant_id, change in sorted(tenants.items())
        ]
    )
    changes_cte = changes.cte("changes")
    totals = {
        resource.value: getattr(TenantUsage, resource.value) + changes_cte.c[resource.value]
        for resource in TENANT_RESOURCES
    }
    return (
        update(TenantUsage)
        .where(TenantUsage.tenant_id == changes_cte.c.tenant_id)
        .values(version=TenantUsage.version + changes_cte.c.charges, updated_at=now, **totals)
        .returning(TenantUsage.tenant_id)
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
    db.execute(
        insert.on_conflict_do_update(
            index_elements=["tenant_id", "store", "state"],
            set_={
                "size_bytes": StoreUsage.size_bytes + insert.excluded.size_bytes,
                "locations": StoreUsage.locations + insert.excluded.locations,
            },
        )
    )
