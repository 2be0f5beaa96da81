"""Usage reads: from Redis when a fresh copy is there, else from the tenant's rows (then cached)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Self

from sqlalchemy import select
from sqlalchemy.orm import Session

from locquota.clock import Clock
from metrics.instruments import USAGE_CACHE_HITS, USAGE_CACHE_MISSES
from quota.models import TENANT_RESOURCES, Resource, SpaceState, StoreUsage, TenantUsage
from quota.services.limits import Limits, LimitService
from quota.services.usage_cache import UsageCache

Source = Literal["cache", "database"]


@dataclass(frozen=True, slots=True)
class Space:
    """Bytes and location count of one store and state."""

    size_bytes: int = 0
    locations: int = 0


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A tenant's usage, limits and the per-store split, with when it was read from the database."""

    tenant_id: str
    totals: dict[Resource, int]
    limits: Limits
    by_store: dict[str, dict[SpaceState, Space]]
    version: int
    updated_at: datetime | None  # the last committed change (None: the tenant never used anything)
    read_at: datetime  # when the figures were read from the database
    source: Source = "database"
    cache_ttl_seconds: int = field(default=0)

    def to_json(self) -> dict[str, object]:
        """The cached form."""
        return {
            "tenant_id": self.tenant_id,
            "totals": {resource.value: value for resource, value in self.totals.items()},
            "limits": {resource.value: value for resource, value in self.limits.values.items()},
            "overridden": sorted(resource.value for resource in self.limits.overridden),
            "by_store": {
                store: {state.value: [space.size_bytes, space.locations] for state, space in states.items()}
                for store, states in self.by_store.items()
            },
            "version": self.version,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "read_at": self.read_at.isoformat(),
        }

    @classmethod
    def from_json(cls, document: dict[str, object], cache_ttl_seconds: int) -> Self:
        """A report from its cached form (raises KeyError/ValueError/TypeError on a foreign document)."""
        limits = {Resource(name): int(value) for name, value in document["limits"].items()}  # type: ignore[attr-defined]
        return cls(
            tenant_id=str(document["tenant_id"]),
            totals={Resource(name): int(value) for name, value in document["totals"].items()},  # type: ignore[attr-defined]
            limits=Limits(limits, frozenset(Resource(name) for name in document["overridden"])),  # type: ignore[attr-defined]
            by_store={
                store: {SpaceState(state): Space(int(pair[0]), int(pair[1])) for state, pair in states.items()}
                for store, states in document["by_store"].items()  # type: ignore[attr-defined]
            },
            version=int(document["version"]),  # type: ignore[call-overload]
            updated_at=datetime.fromisoformat(document["updated_at"]) if document["updated_at"] else None,  # type: ignore[arg-type]
            read_at=datetime.fromisoformat(document["read_at"]),  # type: ignore[arg-type]
            source="cache",
            cache_ttl_seconds=cache_ttl_seconds,
        )


class UsageReader:
    """The report straight from the database: a few primary-key reads, whatever the tenant's size."""

    def __init__(self, db: Session, clock: Clock, limits: LimitService, cache_ttl_seconds: int) -> None:
        self._db, self._clock, self._limits, self._ttl = db, clock, limits, cache_ttl_seconds

    def read(self, tenant_id: str) -> UsageReport:
        """The tenant's rows now, totals and split in one statement; a tenant that never used anything reads as zeros.

        One statement is one snapshot: read in two, a change committed between them (a scrubber's batch,
        another node's delete) would give totals that are not the sum of the split, and the cache would keep them.
        Every writer of store_usage charges tenant_usage first, so a tenant with a split has a totals row.
        """
        rows = self._db.execute(
            select(
                TenantUsage.__table__,
                StoreUsage.store,
                StoreUsage.state,
                StoreUsage.size_bytes.label("store_size_bytes"),
                StoreUsage.locations.label("store_locations"),
            )
            .select_from(TenantUsage)
            .outerjoin(StoreUsage, StoreUsage.tenant_id == TenantUsage.tenant_id)
            .where(TenantUsage.tenant_id == tenant_id)
        ).all()
        row = rows[0] if rows else None
        by_store: dict[str, dict[SpaceState, Space]] = {}
        for split in rows:
            if split.store is not None and (split.store_size_bytes or split.store_locations):
                by_store.setdefault(split.store, {})[SpaceState(split.state)] = Space(
                    split.store_size_bytes, split.store_locations
                )
        totals = {resource: getattr(row, resource.value) if row else 0 for resource in TENANT_RESOURCES}
        return UsageReport(
            tenant_id=tenant_id,
            totals=totals,
            limits=self._limits.for_tenant(tenant_id),
            by_store=by_store,
            version=row.version if row else 0,
            updated_at=row.updated_at if row else None,
            read_at=self._clock.now(),
            cache_ttl_seconds=self._ttl,
        )


def largest_tenants(db: Session, count: int) -> list[tuple[str, dict[Resource, int]]]:
    """The count tenants that hold the most bytes, with their totals (for the metrics' bounded label set)."""
    rows = db.execute(
        select(TenantUsage.__table__).order_by(TenantUsage.image_size_total.desc(), TenantUsage.tenant_id).limit(count)
    )
    return [(row.tenant_id, {resource: getattr(row, resource.value) for resource in TENANT_RESOURCES}) for row in rows]


class UsageService:
    """Usage reports in O(1) of the tenant's size: a Redis hit, or the reader's database read (then cached).

    The reader is built only on a miss, so a cache hit opens no database session at all.
    """

    def __init__(self, cache: UsageCache, reader: Callable[[], UsageReader]) -> None:
        self._cache, self._reader = cache, reader

    def report(self, tenant_id: str) -> UsageReport:
        """The tenant's usage, from the cache when it holds a copy."""
        cached = self._cache.get(tenant_id)
        if cached is not None:
            try:
                report = UsageReport.from_json(cached, self._cache.ttl_seconds)
            except (KeyError, ValueError, TypeError, AttributeError):
                report = None  # written by another version: read the database instead
            if report is not None and report.tenant_id == tenant_id:
                USAGE_CACHE_HITS.inc()
                return report
        USAGE_CACHE_MISSES.inc()
        report = self._reader().read(tenant_id)
        self._cache.put(tenant_id, report.to_json())
        return report
