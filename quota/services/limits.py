"""Limits: a default per resource from the .ini, and per-tenant overrides in the database or in Keystone.

With limits_source = keystone the four tenant resources come from Keystone's unified limits
(quota.services.unified_limits) and cannot be set here; locations_per_image stays the .ini's (Glance's
image_location_quota is an option, not a unified limit).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from locquota.clock import Clock
from locquota.errors import LocquotaError
from quota.models import MIB, UNLIMITED, Resource, TenantLimit
from quota.services.unified_limits import UnifiedLimits
from quota.services.usage_cache import mark_changed


class LimitsInKeystone(LocquotaError):  # noqa: N818 - named as its error code, like every LocquotaError
    """Limits are read from Keystone (limits_source = keystone): they are set there."""

    status, code = 409, "limits_in_keystone"


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's effective limits, as configured (sizes in MiB); -1 is unlimited."""

    values: Mapping[Resource, int]
    overridden: frozenset[Resource]

    def __getitem__(self, resource: Resource) -> int:
        return self.values[resource]

    def cap(self, resource: Resource) -> int | None:
        """The most the resource may reach, in its accounting unit (bytes for sizes); None when unlimited."""
        value = self.values[resource]
        if value == UNLIMITED:
            return None
        return value * MIB if resource.is_in_mib else value


class LimitService:
    """Reads and sets limits; a changed limit drops the tenant's cached usage document after commit."""

    def __init__(
        self, db: Session, clock: Clock, defaults: Mapping[str, int], unified: UnifiedLimits | None = None
    ) -> None:
        self._db, self._clock, self._unified = db, clock, unified
        self._defaults = {resource: defaults[resource.value] for resource in Resource}

    @property
    def defaults(self) -> Mapping[Resource, int]:
        """The .ini defaults."""
        return dict(self._defaults)

    def for_tenant(self, tenant_id: str) -> Limits:
        """The defaults with this tenant's overrides on top (one indexed read, or Keystone's, cached)."""
        if self._unified is not None:
            values, overridden = self._unified.for_project(tenant_id)
            return Limits({**self._defaults, **values}, overridden)
        rows = self._db.execute(
            select(TenantLimit.resource, TenantLimit.value).where(TenantLimit.tenant_id == tenant_id)
        ).all()
        known = {resource.value for resource in Resource}
        overrides = {Resource(resource): value for resource, value in rows if resource in known}
        return Limits({**self._defaults, **overrides}, frozenset(overrides))

    def for_tenants(self, tenant_ids: list[str]) -> dict[str, Limits]:
        """Limits of several tenants in one query (for the metrics' top tenants)."""
        if self._unified is not None:
            return {tenant_id: self.for_tenant(tenant_id) for tenant_id in tenant_ids}
        overrides: dict[str, dict[Resource, int]] = {tenant_id: {} for tenant_id in tenant_ids}
        known = {resource.value for resource in Resource}
        rows = self._db.execute(
            select(TenantLimit.tenant_id, TenantLimit.resource, TenantLimit.value).where(
                TenantLimit.tenant_id.in_(tenant_ids)
            )
        )
        for tenant_id, resource, value in rows:
            if resource in known:
                overrides[tenant_id][Resource(resource)] = value
        return {tenant_id: Limits({**self._defaults, **own}, frozenset(own)) for tenant_id, own in overrides.items()}

    def replace(self, tenant_id: str, overrides: Mapping[Resource, int]) -> Limits:
        """Make overrides the tenant's whole set of overrides; resources left out fall back to the default."""
        self._refuse_if_in_keystone()
        self._db.execute(delete(TenantLimit).where(TenantLimit.tenant_id == tenant_id))
        now = self._now()
        self._db.add_all(
            TenantLimit(tenant_id=tenant_id, resource=resource.value, value=value, updated_at=now)
            for resource, value in overrides.items()
        )
        self._db.flush()
        mark_changed(self._db, tenant_id)
        return self.for_tenant(tenant_id)

    def update(self, tenant_id: str, changes: Mapping[Resource, int | None]) -> Limits:
        """Set some overrides (None: back to the default) and keep the others."""
        self._refuse_if_in_keystone()
        current = self.for_tenant(tenant_id)
        overrides = {resource: current[resource] for resource in current.overridden}
        for resource, value in changes.items():
            if value is None:
                overrides.pop(resource, None)
            else:
                overrides[resource] = value
        return self.replace(tenant_id, overrides)

    def _refuse_if_in_keystone(self) -> None:
        if self._unified is not None:
            raise LimitsInKeystone(
                "This deployment reads limits from Keystone's unified limits: set them there "
                "(`openstack limit create` / `openstack limit set`)."
            )

    def _now(self) -> datetime:
        return self._clock.now()
