"""The only place that turns usage reports and limits into JSON."""

from quota.models import MIB, TENANT_RESOURCES, UNLIMITED, Resource, SpaceState
from quota.services.limits import Limits
from quota.services.usage import UsageReport

# Glance's /v2/info/usage lists these, in this order.
GLANCE_RESOURCES = (
    Resource.IMAGE_SIZE_TOTAL,
    Resource.IMAGE_STAGE_TOTAL,
    Resource.IMAGE_COUNT_TOTAL,
    Resource.IMAGE_COUNT_UPLOADING,
)


def glance_usage(report: UsageReport) -> dict[str, object]:
    """Glance's document: sizes in MiB (usage rounded down, as Glance does), counts as they are."""
    usage = {}
    for resource in GLANCE_RESOURCES:
        used = report.totals[resource]
        usage[resource.value] = {
            "limit": report.limits[resource],
            "usage": used // MIB if resource.is_in_mib else used,
        }
    return {"usage": usage}


def _resource(report: UsageReport, resource: Resource) -> dict[str, object]:
    limit, cap = report.limits[resource], report.limits.cap(resource)
    document: dict[str, object] = {"limit": limit, "limit_unit": "MiB" if resource.is_in_mib else "count"}
    if resource in TENANT_RESOURCES:
        used = report.totals[resource]
        document["usage"] = used
        document["usage_unit"] = "bytes" if resource.is_in_mib else "count"
        document["remaining"] = None if cap is None else max(cap - used, 0)
    if resource.is_in_mib:
        document["limit_bytes"] = UNLIMITED if cap is None else cap
    document["overridden"] = resource in report.limits.overridden
    return document


def usage(report: UsageReport) -> dict[str, object]:
    """Locquota's usage: exact bytes, split by location state and by store, limits, and freshness."""
    by_status = {state.value: {"size_bytes": 0, "locations": 0} for state in SpaceState}
    by_store: dict[str, dict[str, dict[str, int]]] = {}
    for store, states in sorted(report.by_store.items()):
        by_store[store] = {}
        for state, space in states.items():
            by_store[store][state.value] = {"size_bytes": space.size_bytes, "locations": space.locations}
            by_status[state.value]["size_bytes"] += space.size_bytes
            by_status[state.value]["locations"] += space.locations
    return {
        "tenant_id": report.tenant_id,
        "resources": {resource.value: _resource(report, resource) for resource in Resource},
        "by_status": by_status,
        "by_store": by_store,
        "freshness": {
            "source": report.source,
            "read_at": report.read_at.isoformat(),
            "updated_at": report.updated_at.isoformat() if report.updated_at else None,
            "version": report.version,
            "max_age_seconds": report.cache_ttl_seconds,
        },
    }


def limits(tenant_id: str, effective: Limits, defaults: dict[Resource, int]) -> dict[str, object]:
    """A tenant's limits: what applies, which of it is the tenant's own, and the defaults."""
    return {
        "tenant_id": tenant_id,
        "limits": {resource.value: effective[resource] for resource in Resource},
        "overrides": {resource.value: effective[resource] for resource in Resource if resource in effective.overridden},
        "defaults": {resource.value: defaults[resource] for resource in Resource},
        "units": {resource.value: "MiB" if resource.is_in_mib else "count" for resource in Resource},
    }
