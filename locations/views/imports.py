"""Glance's interoperable image import: import info, staging, the import call, and tasks."""

import uuid

from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from locations import presenters, schemas
from locations.import_schema import import_body
from locations.models import Task
from locations.services.image_import.staging import StagingService
from locations.services.image_import.starting import ImportService
from locations.services.image_import.tasks import shown_task, tasks_of_image
from locations.services.image_import.workers import ImportWorkers
from locations.services.images import ImageService
from locations.views.images import check_data_body
from locquota.clock import Clock
from locquota.errors import TaskNotFound

REQUEST_ID_HEADER = "X-Openstack-Request-Id"


@view_config(route_name="info.import", request_method="GET", renderer="json")
def import_info(request: Request) -> dict[str, object]:
    """The import methods this deployment serves (glanceclient checks them before an import)."""
    methods = list(request.settings.import_methods)
    return {"import-methods": {"description": "Import methods available.", "type": "array", "value": methods}}


@view_config(route_name="images.stage", request_method="PUT")
def stage_image_data(request: Request) -> Response:
    """Stream the body into the staging area (charged to image_stage_total); 204, image uploading."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    check_data_body(request)
    staging = request.find_service(StagingService)
    staging.stage(request.identity, image_id, request.body_file, request.content_length)
    return Response(status=204)


@view_config(route_name="images.import", request_method="POST")
def import_image(request: Request) -> Response:
    """Start an import; 202, the task running in the background once this request commits."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    asked = import_body(request, request.settings)
    workers: ImportWorkers = request.registry["locquota.import_workers"]
    request_id = (request.headers.get(REQUEST_ID_HEADER) or "")[:64] or None
    task = request.find_service(ImportService).start(request.identity, image_id, asked, workers.holder, request_id)
    if task is not None:
        workers.after_commit(request.tm.get(), task.id)
    return Response(status=202)


def _visible(request: Request, task: Task) -> bool:
    """Glance shows a task to its owner's project and to admins."""
    return request.identity.is_admin or task.owner == request.identity.tenant_id


@view_config(route_name="images.tasks", request_method="GET", renderer="json")
def image_tasks(request: Request) -> dict[str, object]:
    """The image's import tasks that have not expired (those the caller's project started; admins: all)."""
    image_id = schemas.parse_image_id(request.matchdict["image_id"])
    image = request.find_service(ImageService).get(request.identity, image_id, "get_image", with_details=False)
    now = request.find_service(Clock).now()
    tasks = [task for task in tasks_of_image(request.db, image.id, now) if _visible(request, task)]
    return {"tasks": [presenters.task(task) for task in tasks]}


@view_config(route_name="tasks.item", request_method="GET", renderer="json", permission="tasks_api_access")
def show_task(request: Request) -> dict[str, object]:
    """One task (Glance's tasks API: admins by default)."""
    try:
        task_id = uuid.UUID(request.matchdict["task_id"])
    except ValueError:
        raise TaskNotFound("No task found with this id.") from None
    task = shown_task(request.db, task_id, request.find_service(Clock).now())
    if task is None or not _visible(request, task):
        raise TaskNotFound("No task found with this id.")
    return presenters.task(task)
