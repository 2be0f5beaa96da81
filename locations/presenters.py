"""The only place that turns images into JSON: location status stays internal, only active locations show."""

from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urlencode

from locations.models import ImageMember, Task
from locations.services.backlog import BacklogEntry, StoreTotal
from locations.services.catalog import ImageView
from locations.stores.base import StoreRegistry

GLANCE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def glance_time(moment: datetime) -> str:
    """Glance's timestamp format (UTC, seconds)."""
    return moment.strftime(GLANCE_TIME_FORMAT)


def image(
    view: ImageView, *, show_locations: bool = False, show_direct_url: bool = False, show_stores: bool = False
) -> dict[str, object]:
    """One image as Glance v2 shows it: custom properties at top level, links, no internal status."""
    image_id = str(view.id)
    body: dict[str, object] = dict(view.properties)
    body.update(
        {
            "id": image_id,
            "name": view.name,
            "status": str(view.status),
            "visibility": str(view.visibility),
            "protected": view.protected,
            "os_hidden": view.os_hidden,
            "owner": view.owner,
            "size": view.size,
            "virtual_size": view.virtual_size,
            "checksum": view.checksum,
            "os_hash_algo": view.os_hash_algo,
            "os_hash_value": view.os_hash_value,
            "disk_format": view.disk_format,
            "container_format": view.container_format,
            "min_disk": view.min_disk,
            "min_ram": view.min_ram,
            "created_at": glance_time(view.created_at),
            "updated_at": glance_time(view.updated_at),
            "tags": list(view.tags),
            "self": f"/v2/images/{image_id}",
            "file": f"/v2/images/{image_id}/file",
            "schema": "/v2/schemas/image",
        }
    )
    if show_stores and view.stores:
        body["stores"] = ",".join(view.stores)  # Glance's multi-store attribute: "fast,cheap"
    if show_locations:
        body["locations"] = [{"url": url, "metadata": metadata} for url, metadata in view.locations]
    if show_direct_url and view.locations:
        body["direct_url"] = view.locations[0][0]
    return body


def image_list(
    views: list[ImageView],
    params: list[tuple[str, str]],
    next_marker: str | None,
    *,
    show_locations: bool = False,
    show_direct_url: bool = False,
    show_stores: bool = False,
) -> dict[str, object]:
    """A page of images with Glance's first/next links (next only when there may be more)."""
    kept = [(key, value) for key, value in params if key != "marker"]
    body: dict[str, object] = {
        "images": [
            image(view, show_locations=show_locations, show_direct_url=show_direct_url, show_stores=show_stores)
            for view in views
        ],
        "first": "/v2/images" + (f"?{urlencode(kept)}" if kept else ""),
        "schema": "/v2/schemas/images",
    }
    if next_marker is not None:
        body["next"] = "/v2/images?" + urlencode([*kept, ("marker", next_marker)])
    return body


def backlog(
    entries: list[BacklogEntry], totals: list[StoreTotal], limit: int, next_marker: int | None
) -> dict[str, object]:
    """The scrubber backlog: entries oldest first (never their URLs), totals by store, the next page."""
    body: dict[str, object] = {
        "locations": [
            {
                "location_id": entry.location_id,
                "image_id": entry.image_id,
                "store": entry.store,
                "size_bytes": entry.size_bytes,
                "pending_since": glance_time(entry.pending_since),
                "age_seconds": round(entry.age_seconds, 3),
                "scrub_after": glance_time(entry.scrub_after),
                "due": entry.is_due,
                "attempts": entry.attempts,
                "last_error": entry.last_error,
                "claimed": entry.is_claimed,
            }
            for entry in entries
        ],
        "totals": [
            {"store": total.store, "locations": total.locations, "size_bytes": total.size_bytes} for total in totals
        ],
    }
    if next_marker is not None:
        body["next"] = f"/v1/scrubber/backlog?limit={limit}&marker={next_marker}"
    return body


def stores(registry: StoreRegistry, *, detail: bool) -> dict[str, object]:
    """Glance's stores document: id, description, "default"/"read-only" as the strings "true"."""
    shown = []
    for store in registry:
        entry: dict[str, object] = {"id": store.name, "description": store.description}
        if store is registry.default:
            entry["default"] = "true"
        if store.is_read_only:
            entry["read-only"] = "true"
        if detail:
            entry["type"] = store.scheme
            entry["properties"] = {}
        shown.append(entry)
    return {"stores": shown}


def task(row: Task) -> dict[str, object]:
    """A task as Glance shows it (GET /v2/tasks/{id} and the image's task list).

    Ids the schema types as strings are left out when unknown (a caller without a user id), never null.
    """
    body: dict[str, object] = {
        "id": str(row.id),
        "type": row.type,
        "status": str(row.status),
        "owner": row.owner,
        "image_id": str(row.image_id) if row.image_id else None,
        "user_id": row.user_id,
        "request_id": row.request_id,
        "input": row.task_input,
        "result": row.result,
        "message": row.message,
        "created_at": glance_time(row.created_at),
        "updated_at": glance_time(row.updated_at),
        "expires_at": glance_time(row.expires_at) if row.expires_at else None,
        "self": f"/v2/tasks/{row.id}",
        "schema": "/v2/schemas/task",
    }
    return {key: value for key, value in body.items() if value is not None or key not in NULLABLE_NEVER}


NULLABLE_NEVER = frozenset({"image_id", "user_id", "request_id"})


def member(row: ImageMember) -> dict[str, object]:
    """One membership as Glance shows it (also the body of the 200 that answers an add)."""
    return {
        "member_id": row.member,
        "image_id": str(row.image_id),
        "status": str(row.status),
        "created_at": glance_time(row.created_at),
        "updated_at": glance_time(row.updated_at),
        "schema": "/v2/schemas/member",
    }


def members(rows: Iterable[ImageMember]) -> dict[str, object]:
    """The members the caller may see, as Glance lists them."""
    return {"members": [member(row) for row in rows], "schema": "/v2/schemas/members"}
