"""Glance's multi-store routes.

GET /v2/info/stores (any caller), /v2/info/stores/detail (admin), and DELETE /v2/stores/{store}/{image}
(admin: an image's data leaves one store).
"""

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from locations import presenters, schemas
from locations.services.images import ImageService
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


@view_config(route_name="stores.image", request_method="DELETE")
def delete_from_store(request: Request) -> Response:
    """The image's locations in one store leave service (pending_delete with delayed delete); 204."""
    _registry(request)
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    request.find_service(ImageService).remove_from_store(request.identity, image_id, request.matchdict["store_id"])
    return Response(status=204)
