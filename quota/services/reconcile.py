"""Reconcile: compare stored usage with a recount, record the drift, and repair it on request.

`locations` recounts (it knows what a location is); this module compares and repairs. A batch of
tenants is locked first (their usage rows), then recounted, so a change in flight either committed
before the recount or waits and lands on top of the repaired row: a live service is never miscounted.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from locquota.clock import Clock
from locquota.upserts import insert_for, upsert_of
from quota.models import (
    TENANT_RESOURCES,
    ReconcileRun,
    Resource,
    SpaceState,
    StoreUsage,
    TenantUsage,
    UsageDrift,
)
from quota.services.ledger import UsageLedger
from quota.services.usage import Space
from quota.services.usage_cache import mark_changed


@dataclass(frozen=True, slots=True)
class TenantTotals:
    """What a tenant really uses: its totals, and its space by (store, state)."""

    tenant_id: str
    totals: dict[Resource, int] = field(default_factory=lambda: dict.fromkeys(TENANT_RESOURCES, 0))
    space: dict[tuple[str, SpaceState], Space] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Drift:
    """One stored figure that differs from the recount."""

    tenant_id: str
    figure: str  # a resource, or store/<store>/<state>/<size_bytes|locations>
    recorded: int
    actual: int


class Reconciler:
    """Compares and repairs stored usage, one batch of tenants per transaction."""

    def __init__(self, db: Session, clock: Clock) -> None:
        self._db, self._clock = db, clock

    def tenants_after(self, after: str | None, limit: int) -> list[str]:
        """Tenants with a usage row, in id order, after `after`."""
        query = select(TenantUsage.tenant_id).order_by(TenantUsage.tenant_id).limit(limit)
        if after is not None:
            query = query.where(TenantUsage.tenant_id > after)
        return list(self._db.scalars(query))

    def count_tenants(self) -> int:
        """How many tenants have a usage row (for the progress bar)."""
        return self._db.scalar(select(func.count()).select_from(TenantUsage)) or 0

    def lock(self, tenant_ids: list[str]) -> None:
        """Hold off every writer of these tenants until this transaction ends."""
        UsageLedger(self._db, self._clock).lock(tenant_ids)

    def start_run(self) -> int:
        """A new run; the previous run's drift rows go, so the table always describes the latest run."""
        self._db.execute(delete(UsageDrift))
        run = ReconcileRun(started_at=self._clock.now(), tenants=0, drifted_tenants=0, repaired=False)
        self._db.add(run)
        self._db.flush()
        return run.id

    def finish_run(self, run_id: int, *, tenants: int, drifted_tenants: int, repaired: bool) -> None:
        """Record the run's outcome."""
        run = self._db.get_one(ReconcileRun, run_id)
        run.finished_at = self._clock.now()
        run.tenants, run.drifted_tenants, run.repaired = tenants, drifted_tenants, repaired

    def compare(self, actual: Iterable[TenantTotals], *, fix: bool) -> list[Drift]:
        """Drift of these (locked) tenants, recorded in usage_drift; with fix, stored figures become actual."""
        found: list[Drift] = []
        now = self._clock.now()
        for tenant in actual:
            drifts = self._drift_of(tenant)
            found += drifts
            self._db.add_all(
                UsageDrift(
                    tenant_id=drift.tenant_id,
                    resource=drift.figure,
                    recorded=drift.recorded,
                    actual=drift.actual,
                    found_at=now,
                    repaired=fix,
                )
                for drift in drifts
            )
            if fix and drifts:
                self._repair(tenant)
        self._db.flush()
        return found

    def _drift_of(self, tenant: TenantTotals) -> list[Drift]:
        row = self._db.execute(select(TenantUsage.__table__).where(TenantUsage.tenant_id == tenant.tenant_id)).first()
        drifts = [
            Drift(tenant.tenant_id, resource.value, getattr(row, resource.value) if row else 0, tenant.totals[resource])
            for resource in TENANT_RESOURCES
            if (getattr(row, resource.value) if row else 0) != tenant.totals[resource]
        ]
        stored = {
            (store, SpaceState(state)): Space(size_bytes, locations)
            for store, state, size_bytes, locations in self._db.execute(
                select(StoreUsage.store, StoreUsage.state, StoreUsage.size_bytes, StoreUsage.locations).where(
                    StoreUsage.tenant_id == tenant.tenant_id
                )
            )
        }
        for key in sorted(stored.keys() | tenant.space.keys()):
            recorded, real = stored.get(key, Space()), tenant.space.get(key, Space())
            for name in ("size_bytes", "locations"):
                if getattr(recorded, name) != getattr(real, name):
                    figure = f"store/{key[0]}/{key[1].value}/{name}"
                    drifts.append(Drift(tenant.tenant_id, figure, getattr(recorded, name), getattr(real, name)))
        return drifts

    def _repair(self, tenant: TenantTotals) -> None:
        values = {resource.value: tenant.totals[resource] for resource in TENANT_RESOURCES}
        insert = insert_for(self._db, TenantUsage.__table__).values(  # type: ignore[arg-type]
            tenant_id=tenant.tenant_id, version=1, updated_at=self._clock.now(), **values
        )
        self._db.execute(
            upsert_of(
                insert,
                ["tenant_id"],
                lambda new: {**values, "version": TenantUsage.version + 1, "updated_at": new.updated_at},
            )
        )
        self._db.execute(delete(StoreUsage).where(StoreUsage.tenant_id == tenant.tenant_id))
        self._db.add_all(
            StoreUsage(
                tenant_id=tenant.tenant_id,
                store=store,
                state=state.value,
                size_bytes=space.size_bytes,
                locations=space.locations,
            )
            for (store, state), space in tenant.space.items()
        )
        mark_changed(self._db, tenant.tenant_id)


@dataclass(frozen=True, slots=True)
class LastRun:
    """What the last finished `locquota reconcile` found, for the metrics."""

    finished_at: datetime | None
    drifted_figures: int
    drifted_tenants: int


def last_run(db: Session) -> LastRun:
    """The last run's finish time and its drift (usage_drift always holds the latest run's findings)."""
    finished = db.scalar(select(func.max(ReconcileRun.finished_at)))
    figures, tenants = db.execute(select(func.count(), func.count(func.distinct(UsageDrift.tenant_id)))).one()
    return LastRun(finished, int(figures or 0), int(tenants or 0))
