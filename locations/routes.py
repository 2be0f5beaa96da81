"""Every URL of the Glance Images v2 API that locquota serves."""

from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    """Version discovery, schemas, images and image data."""
    config.add_route("versions.root", "/")
    config.add_route("versions.list", "/versions")
    config.add_route("schemas.image", "/v2/schemas/image")
    config.add_route("schemas.images", "/v2/schemas/images")
    config.add_route("schemas.member", "/v2/schemas/member")
    config.add_route("schemas.members", "/v2/schemas/members")
    config.add_route("schemas.task", "/v2/schemas/task")
    config.add_route("schemas.tasks", "/v2/schemas/tasks")
    config.add_route("info.stores", "/v2/info/stores")
    config.add_route("info.stores.detail", "/v2/info/stores/detail")
    config.add_route("images.collection", "/v2/images")
    config.add_route("images.item", "/v2/images/{image_id}")
    config.add_route("images.file", "/v2/images/{image_id}/file")
    config.add_route("images.tag", "/v2/images/{image_id}/tags/{tag}")
    config.add_route("images.members", "/v2/images/{image_id}/members")
    config.add_route("images.member", "/v2/images/{image_id}/members/{member_id}")
    config.add_route("images.locations", "/v2/images/{image_id}/locations")
    config.add_route("images.stage", "/v2/images/{image_id}/stage")
    config.add_route("images.import", "/v2/images/{image_id}/import")
    config.add_route("images.tasks", "/v2/images/{image_id}/tasks")
    config.add_route("images.action", "/v2/images/{image_id}/actions/{action}")
    config.add_route("tasks.item", "/v2/tasks/{task_id}")
    config.add_route("info.import", "/v2/info/import")
    config.add_route("stores.image", "/v2/stores/{store_id}/{image_id}")
    config.add_route("admin.restore", "/v1/images/{image_id}/restore")
    config.add_route("admin.backlog", "/v1/scrubber/backlog")
