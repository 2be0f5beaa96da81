"""Glance's image actions: POST /v2/images/{id}/actions/deactivate and .../reactivate (204, idempotent)."""

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from locations import schemas
from locations.services.images import ImageService
from locquota.errors import NotFound


@view_config(route_name="images.action", request_method="POST")
def image_action(request: Request) -> Response:
    """Deactivate or reactivate an image (owner or admin); any other action is 404, as in Glance."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    images = request.find_service(ImageService)
    action = request.matchdict["action"]
    if action == "deactivate":
        images.deactivate(request.identity, image_id)
    elif action == "reactivate":
        images.reactivate(request.identity, image_id)
    else:
        raise NotFound("No resource at this URL.")
    return Response(status=204)
