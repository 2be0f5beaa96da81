"""The usage ledger: exact per-tenant totals, changed in the caller's transaction, and race-free admission.

Every change updates the tenant's usage row first (then the per-store split), so the row lock orders all
writers of one tenant the same way, and `locquota reconcile` can hold them off by taking that lock.
Admission is the same UPDATE with a condition: `total + delta <= limit`. On PostgreSQL a concurrent
UPDATE waits for the row lock and re-checks the condition against the committed total, so two
requests can never together pass a limit; on SQLite writers are serialized anyway. A refused UPDATE
changes nothing.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from locquota.clock import Clock
from locquota.errors import QuotaExceeded
from locquota.upserts import ignore_existing, insert_for, upsert_of
from metrics.instruments import ADMISSIONS_REFUSED
from quota.models import TENANT_RESOURCES, Resource, SpaceState, StoreUsage, TenantUsage
from quota.services.limits import Limits
from quota.services.usage_cache import mark_changed

STORE_USAGE_KEY = ("tenant_id", "store", "state")


def added_space(new: Any) -> dict[str, object]:
    """A store_usage upsert's change: the new row's bytes and count added to the row that is there."""
    return {
        "size_bytes": StoreUsage.size_bytes + new.size_bytes,
        "locations": StoreUsage.locations + new.locations,
    }


class UsageLedger:
    """Keeps per-tenant usage exact in the database; Redis only caches a copy (see usage_cache)."""

    def __init__(self, db: Session, clock: Clock) -> None:
        self._db, self._clock = db, clock

    def charge(self, tenant_id: str, deltas: Mapping[Resource, int], *, within: Limits | None = None) -> None:
        """Add deltas to the tenant's totals; with `within`, refuse (413, nothing changed) past a limit.

        Only increases are checked: freeing space is always allowed, as is going on holding it. Nothing to
        change (a status change that moves no count) sends nothing.
        """
        if not any(deltas.values()):
            return
        columns = {resource: getattr(TenantUsage, resource.value) for resource in TENANT_RESOURCES}
        statement = (
            update(TenantUsage)
            .where(TenantUsage.tenant_id == tenant_id)
            .values(
                version=TenantUsage.version + 1,
                updated_at=self._clock.now(),
                **{resource.value: columns[resource] + delta for resource, delta in deltas.items() if delta},
            )
            .execution_options(synchronize_session=False)
        )
        if within is not None:
            for resource, delta in deltas.items():
                cap = within.cap(resource)
                if delta > 0 and cap is not None:
                    statement = statement.where(columns[resource] + delta <= cap)
        updated = self._db.execute(statement).rowcount == 1  # type: ignore[attr-defined]
        if not updated:
            # The tenant's first charge, or a refusal. Make sure the row exists (another transaction may have
            # created it since the UPDATE looked), then decide on it: created by us or by them, it is there now.
            self._ensure_row(tenant_id)
            updated = self._db.execute(statement).rowcount == 1  # type: ignore[attr-defined]
        if not updated:
            refusal = self._refusal(tenant_id, deltas, within)
            ADMISSIONS_REFUSED.labels(str(refusal.details.get("resource", "unknown"))).inc()
            raise refusal
        mark_changed(self._db, tenant_id)

    def move_space(
        self, tenant_id: str, store: str, source: SpaceState | None, target: SpaceState | None, size_bytes: int
    ) -> None:
        """Move one location's bytes between the per-store states (None: not charged). Call after charge.

        A move that changes no total (a delayed delete, a restore) still changes the split: the cached copy goes.
        """
        mark_changed(self._db, tenant_id)
        for state, sign in ((source, -1), (target, +1)):
            if state is None:
                continue
            insert = insert_for(self._db, StoreUsage.__table__).values(  # type: ignore[arg-type]
                tenant_id=tenant_id, store=store, state=state.value, size_bytes=sign * size_bytes, locations=sign
            )
            self._db.execute(upsert_of(insert, STORE_USAGE_KEY, added_space))

    def lock(self, tenant_ids: Iterable[str]) -> None:
        """Hold off every other writer of these tenants until this transaction ends.

        Locks in tenant id order, so two transactions that lock several tenants (scrubber batches,
        reconcile batches) cannot deadlock on each other: one statement, FOR UPDATE on PostgreSQL, a no-op
        write on SQLite (which has no row locks).
        """
        ordered = sorted(set(tenant_ids))
        if not ordered:
            return
        if self._db.get_bind().dialect.name == "sqlite":  # no row locks: a write takes the database's lock
            self._db.execute(
                update(TenantUsage)
                .where(TenantUsage.tenant_id.in_(ordered))
                .values(version=TenantUsage.version)
                .execution_options(synchronize_session=False)
            )
            return
        self._db.execute(
            select(TenantUsage.tenant_id)
            .where(TenantUsage.tenant_id.in_(ordered))
            .order_by(TenantUsage.tenant_id)
            .with_for_update()
        ).all()

    def remaining(self, tenant_id: str, resource: Resource, limits: Limits) -> int | None:
        """What is left of the limit right now, in accounting units; None when unlimited."""
        cap = limits.cap(resource)
        if cap is None:
            return None
        used = self._db.scalar(select(getattr(TenantUsage, resource.value)).where(TenantUsage.tenant_id == tenant_id))
        return max(cap - (used or 0), 0)

    def _ensure_row(self, tenant_id: str) -> None:
        """Create the tenant's zero row unless it exists (a concurrent insert of it is waited for, not doubled)."""
        zeros = {resource.value: 0 for resource in TENANT_RESOURCES}
        insert = insert_for(self._db, TenantUsage.__table__).values(  # type: ignore[arg-type]
            tenant_id=tenant_id, version=0, updated_at=self._clock.now(), **zeros
        )
        self._db.execute(ignore_existing(insert, ["tenant_id"]))

    def _refusal(self, tenant_id: str, deltas: Mapping[Resource, int], within: Limits | None) -> QuotaExceeded:
        """The error for a refused admission, naming the first resource that did not fit."""
        row = self._db.execute(select(TenantUsage).where(TenantUsage.tenant_id == tenant_id)).scalar_one()
        for resource, delta in deltas.items():
            cap = within.cap(resource) if within is not None else None
            used = getattr(row, resource.value)
            if delta > 0 and cap is not None and used + delta > cap:
                unit = "bytes" if resource.is_in_mib else "images"
                return QuotaExceeded(
                    f"Quota exceeded for {resource}: {used} {unit} in use, {delta} more requested, "
                    f"limit {within[resource]}{' MiB' if resource.is_in_mib else ''}.",  # type: ignore[index]
                    resource=str(resource),
                    limit=within[resource],  # type: ignore[index]
                    usage=used,
                    requested=delta,
                    unit=unit,
                )
        return QuotaExceeded(f"Quota exceeded for tenant {tenant_id}.")
