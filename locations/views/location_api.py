"""Glance's v2.17 locations API views: GET (service, admin) and POST (service; members: http only)."""

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from locations import schemas
from locations.location_api_schema import add_location_body
from locations.services.location_api import LocationApi


@view_config(route_name="images.locations", request_method="GET", renderer="json")
def list_locations(request: Request) -> list[dict[str, object]]:
    """The image's locations as Glance lists them: url and metadata."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    return request.find_service(LocationApi).list(request.identity, image_id)


@view_config(route_name="images.locations", request_method="POST")
def add_location(request: Request) -> Response:
    """Add a location to a queued image; 202 once it is active with its hashes."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    new = add_location_body(request, request.settings)
    request.find_service(LocationApi).add(request.identity, image_id, new)
    return Response(status=202)
