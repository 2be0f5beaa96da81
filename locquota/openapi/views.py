"""GET /v1/openapi.json: the contract of locquota's own routes, to anyone (as the health probes)."""

from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from locquota.openapi.document import encoded


@view_config(route_name="openapi", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def openapi_document(_request: Request) -> Response:
    """The OpenAPI document; it holds nothing about the deployment, so it needs no identity."""
    return Response(body=encoded(), content_type="application/json", charset="utf-8")
