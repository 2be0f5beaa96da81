"""Version discovery and the JSON schemas clients fetch before they create or update an image."""

from pyramid.request import Request
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from locations import schemas

CURRENT_VERSION = "2.18"
SUPPORTED_VERSIONS = ("2.17", "2.16", "2.15", "2.14", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7", "2.6",
                      "2.5", "2.4", "2.3", "2.2", "2.1", "2.0")  # fmt: skip


def _versions(request: Request) -> dict[str, object]:
    href = request.application_url.rstrip("/") + "/v2/"
    statuses = [(CURRENT_VERSION, "CURRENT"), *((version, "SUPPORTED") for version in SUPPORTED_VERSIONS)]
    return {
        "versions": [
            {"id": f"v{version}", "status": status, "links": [{"rel": "self", "href": href}]}
            for version, status in statuses
        ]
    }


@view_config(route_name="versions.root", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def version_choices(request: Request) -> dict[str, object]:
    """GET / answers 300 Multiple Choices, as Glance does; no token needed."""
    request.response.status_code = 300
    return _versions(request)


@view_config(route_name="versions.list", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def version_list(request: Request) -> dict[str, object]:
    """GET /versions answers 200 with the same document."""
    return _versions(request)


@view_config(route_name="schemas.image", request_method="GET", renderer="json")
def image_schema(_request: Request) -> dict[str, object]:
    """The image schema glanceclient validates its models against."""
    return schemas.image_schema()


@view_config(route_name="schemas.images", request_method="GET", renderer="json")
def images_schema(_request: Request) -> dict[str, object]:
    """The image collection schema."""
    return schemas.images_schema()
