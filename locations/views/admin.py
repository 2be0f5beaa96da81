"""Operator endpoints under /v1 (admin role): restore an image, read the scrubber backlog."""

from pyramid.request import Request
from pyramid.view import view_config

from locations import presenters, query_schemas, schemas
from locations.services.backlog import BacklogService
from locations.services.catalog import ImageCatalog
from locations.services.deletion import DeletionService


@view_config(route_name="admin.restore", request_method="POST", renderer="json", permission="locquota:image:restore")
def restore_image(request: Request) -> dict[str, object]:
    """Return a pending_delete image and its pending_delete locations to active; 409 if scrubbing began."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    image = request.find_service(DeletionService).restore(image_id)
    return presenters.image(request.find_service(ImageCatalog).view_of(image))


@view_config(route_name="admin.backlog", request_method="GET", renderer="json", permission="locquota:backlog:get")
def scrubber_backlog(request: Request) -> dict[str, object]:
    """Pending_delete locations oldest first, paged, with age, attempts and last error; totals by store."""
    limit, marker = query_schemas.backlog_query(request)
    backlog = request.find_service(BacklogService)
    entries, next_marker = backlog.page(limit, marker)
    return presenters.backlog(entries, backlog.totals(), limit, next_marker)
