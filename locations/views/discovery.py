"""Version discovery and the JSON schemas clients fetch before they create or update an image."""

from pyramid.request import Request
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from locations import member_schemas, schemas, task_schemas

# Glance 33 decides what it advertises from its configuration (glance/api/versions.py); locquota has no
# image cache, so it takes Glance's branch without one: 2.16 and 2.14 (cache APIs) and 2.18 are never
# advertised, 2.17 (the locations API) is CURRENT. The multi-store versions (2.8, 2.10-2.13) come with
# enabled_backends; without it 2.9 stands alone, as in Glance.
MULTI_STORE_VERSIONS = ("2.13", "2.12", "2.11", "2.10", "2.9", "2.8")
BASE_VERSIONS = ("2.7", "2.6", "2.5", "2.4", "2.3", "2.2", "2.1", "2.0")


def advertised_versions(is_multi_store: bool) -> list[tuple[str, str]]:
    """(version, status) in Glance's order, for a deployment without an image cache."""
    middle = MULTI_STORE_VERSIONS if is_multi_store else ("2.9",)
    supported = [("2.15", "SUPPORTED"), *((version, "SUPPORTED") for version in middle)]
    return [*supported, ("2.17", "CURRENT"), *((version, "SUPPORTED") for version in BASE_VERSIONS)]


def _versions(request: Request) -> dict[str, object]:
    href = request.application_url.rstrip("/") + "/v2/"
    return {
        "versions": [
            {"id": f"v{version}", "status": status, "links": [{"rel": "self", "href": href}]}
            for version, status in advertised_versions(request.settings.is_multi_store)
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


@view_config(route_name="schemas.task", request_method="GET", renderer="json")
def task_schema(_request: Request) -> dict[str, object]:
    """The task schema glanceclient validates a task against (glance task-show)."""
    return task_schemas.task_schema()


@view_config(route_name="schemas.tasks", request_method="GET", renderer="json")
def tasks_schema(_request: Request) -> dict[str, object]:
    """The task collection schema."""
    return task_schemas.tasks_schema()


@view_config(route_name="schemas.member", request_method="GET", renderer="json")
def member_schema(_request: Request) -> dict[str, object]:
    """The image member schema glanceclient validates a membership against."""
    return member_schemas.member_schema()


@view_config(route_name="schemas.members", request_method="GET", renderer="json")
def members_schema(_request: Request) -> dict[str, object]:
    """The member collection schema."""
    return member_schemas.members_schema()
