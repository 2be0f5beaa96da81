"""Glance's multi-store discovery: GET /v2/info/stores (any caller) and /v2/info/stores/detail (admin)."""

from pyramid.request import Request
from pyramid.view import view_config

from locations import presenters
from locations.stores.base import StoreRegistry
from locquota.errors import NotFound


def _registry(request: Request) -> StoreRegistry:
    if not request.settings.is_multi_store:
        raise NotFound("No resource at this URL.")  # as Glance answers without enabled_backends
    return request.find_service(StoreRegistry)


@view_config(route_name="info.stores", request_method="GET", renderer="json")
def stores(request: Request) -> dict[str, object]:
    """The stores an upload may name (X-Image-Meta-Store), the default marked, read-only ones too."""
    return presenters.stores(_registry(request), detail=False)


@view_config(route_name="info.stores.detail", request_method="GET", renderer="json", permission="stores_info_detail")
def stores_detail(request: Request) -> dict[str, object]:
    """The same with each store's type and properties, for operators and services."""
    return presenters.stores(_registry(request), detail=True)
