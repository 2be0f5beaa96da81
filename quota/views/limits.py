"""Limits of one tenant (admin): read them, or replace the tenant's overrides."""

from pyramid.request import Request
from pyramid.view import view_config

from quota import presenters, schemas
from quota.services.limits import LimitService


@view_config(route_name="quota.limits.tenant", request_method="GET", renderer="json", permission="locquota:limits:get")
def get_limits(request: Request) -> dict[str, object]:
    """The limits that apply to the tenant, its overrides, and the defaults."""
    tenant_id = schemas.parse_tenant_id(request.matchdict["tenant_id"])
    service = request.find_service(LimitService)
    return presenters.limits(tenant_id, service.for_tenant(tenant_id), dict(service.defaults))


@view_config(route_name="quota.limits.tenant", request_method="PUT", renderer="json", permission="locquota:limits:set")
def put_limits(request: Request) -> dict[str, object]:
    """Replace the tenant's overrides; a resource left out (or null) falls back to the default."""
    tenant_id = schemas.parse_tenant_id(request.matchdict["tenant_id"])
    overrides = schemas.limits_body(request, request.settings.max_request_body_bytes)
    service = request.find_service(LimitService)
    return presenters.limits(tenant_id, service.replace(tenant_id, overrides), dict(service.defaults))
