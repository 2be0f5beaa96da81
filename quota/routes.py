"""Every URL of the quota API."""

from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    """Glance's usage document, locquota's usage and limits."""
    config.add_route("quota.usage.glance", "/v2/info/usage")
    config.add_route("quota.usage.own", "/v1/usage")
    config.add_route("quota.usage.tenant", "/v1/tenants/{tenant_id}/usage")
    config.add_route("quota.limits.tenant", "/v1/tenants/{tenant_id}/limits")
