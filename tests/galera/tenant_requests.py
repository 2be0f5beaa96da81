"""The tenant the Galera API tests race for, and its requests through an app attached to one node."""

from webtest import TestApp

from quota.models import Resource
from tests.conftest import identity

OWNER = "galera-tenant"
NODES = 3
WORKERS_PER_NODE = 2
WORKERS = NODES * WORKERS_PER_NODE
OCTET_STREAM = "application/octet-stream"


def node_of(worker: int) -> int:
    """The Galera node (0, 1 or 2) worker n's app is attached to: workers n and n + 3 share one."""
    return worker % NODES


def set_limit(app: TestApp, resource: Resource, value: int) -> None:
    """The tenant's limit for one resource (MiB for sizes), set by an admin through the API."""
    app.put_json(
        f"/v1/tenants/{OWNER}/limits", {"limits": {resource.value: value}}, headers=identity("operators", "admin")
    )


def create_image(app: TestApp, name: str) -> str:
    """A queued image of the tenant's, ready for an upload; its id."""
    body = {"name": name, "disk_format": "raw", "container_format": "bare"}
    return app.post_json("/v2/images", body, headers=identity(OWNER), status=201).json["id"]


def image_data(size: int) -> bytes:
    """size bytes of every byte value in turn."""
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def image_of(path: str) -> str:
    """The image id of /v2/images/<id>/file."""
    return path.split("/")[3]
