"""Usage endpoints: Glance's /v2/info/usage, and locquota's own and any tenant's (admin)."""

from pyramid.request import Request
from pyramid.view import view_config

from quota import presenters, schemas
from quota.services.usage import UsageService


@view_config(route_name="quota.usage.glance", request_method="GET", renderer="json", permission="locquota:usage:get")
def glance_usage(request: Request) -> dict[str, object]:
    """The caller's usage in Glance's shape (sizes in MiB)."""
    return presenters.glance_usage(request.find_service(UsageService).report(request.identity.tenant_id))


@view_config(route_name="quota.usage.own", request_method="GET", renderer="json", permission="locquota:usage:get")
def own_usage(request: Request) -> dict[str, object]:
    """The caller's usage in exact bytes, by status and store, with limits and freshness."""
    return presenters.usage(request.find_service(UsageService).report(request.identity.tenant_id))


@view_config(
    route_name="quota.usage.tenant", request_method="GET", renderer="json", permission="locquota:usage:get_any"
)
def tenant_usage(request: Request) -> dict[str, object]:
    """Any tenant's usage, for operators."""
    tenant_id = schemas.parse_tenant_id(request.matchdict["tenant_id"])
    return presenters.usage(request.find_service(UsageService).report(tenant_id))
