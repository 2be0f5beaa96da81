"""Glance's task schemas (/v2/schemas/task and /v2/schemas/tasks), which glanceclient validates tasks against."""

from typing import Any

from locations.schemas import UUID_PATTERN, collection_schema

TASK_TYPES = ("import", "api_image_import", "location_import")
TASK_STATUSES = ("pending", "processing", "success", "failure")
SUMMARY_HIDDEN = ("input", "result", "message")  # left out of the collection's items, as Glance does


def task_schema() -> dict[str, Any]:
    """One task, as GET /v2/tasks/{id} shows it."""
    return {
        "name": "task",
        "properties": {
            "id": {"description": "An identifier for the task", "pattern": UUID_PATTERN, "type": "string"},
            "type": {"description": "The type of task", "enum": list(TASK_TYPES), "type": "string"},
            "status": {"description": "The current status of this task", "enum": list(TASK_STATUSES), "type": "string"},
            "input": {"description": "The parameters required by task, JSON blob", "type": ["null", "object"]},
            "result": {"description": "The result of current task, JSON blob", "type": ["null", "object"]},
            "owner": {"description": "An identifier for the owner of this task", "type": "string"},
            "message": {"description": "Human-readable informative message (usually on failure)", "type": "string"},
            "image_id": {"description": "Image associated with the task", "type": "string"},
            "request_id": {"description": "Human-readable informative request-id", "type": "string"},
            "user_id": {"description": "User associated with the task", "type": "string"},
            "expires_at": {"description": "When this task stops being shown", "type": ["null", "string"]},
            "created_at": {"description": "Datetime when this resource was created", "type": "string"},
            "updated_at": {"description": "Datetime when this resource was updated", "type": "string"},
            "self": {"readOnly": True, "type": "string"},
            "schema": {"readOnly": True, "type": "string"},
        },
    }


def tasks_schema() -> dict[str, Any]:
    """The task collection schema."""
    summary = task_schema()
    for name in SUMMARY_HIDDEN:
        del summary["properties"][name]
    return collection_schema("tasks", summary)
