"""The only place that turns models into JSON: status of locations stays internal, only active ones show."""

from datetime import datetime
from urllib.parse import urlencode

from locations.models import Image

GLANCE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def glance_time(moment: datetime) -> str:
    """Glance's timestamp format (UTC, seconds)."""
    return moment.strftime(GLANCE_TIME_FORMAT)


def image(record: Image, *, show_locations: bool = False, show_direct_url: bool = False) -> dict[str, object]:
    """One image as Glance v2 shows it: custom properties at top level, links, no internal status."""
    view: dict[str, object] = {prop.name: prop.value for prop in record.properties}
    view.update(
        {
            "id": str(record.id),
            "name": record.name,
            "status": str(record.status),
            "visibility": str(record.visibility),
            "protected": record.protected,
            "os_hidden": record.os_hidden,
            "owner": record.owner,
            "size": record.size,
            "virtual_size": record.virtual_size,
            "checksum": record.checksum,
            "os_hash_algo": record.os_hash_algo,
            "os_hash_value": record.os_hash_value,
            "disk_format": record.disk_format,
            "container_format": record.container_format,
            "min_disk": record.min_disk,
            "min_ram": record.min_ram,
            "created_at": glance_time(record.created_at),
            "updated_at": glance_time(record.updated_at),
            "tags": [tag.value for tag in record.tags],
            "self": f"/v2/images/{record.id}",
            "file": f"/v2/images/{record.id}/file",
            "schema": "/v2/schemas/image",
        }
    )
    active = record.active_locations
    if show_locations:
        view["locations"] = [{"url": loc.url, "metadata": loc.location_metadata} for loc in active]
    if show_direct_url and active:
        view["direct_url"] = active[0].url
    return view


def image_list(
    records: list[Image],
    params: list[tuple[str, str]],
    next_marker: str | None,
    *,
    show_locations: bool = False,
    show_direct_url: bool = False,
) -> dict[str, object]:
    """A page of images with Glance's first/next links (next only when there may be more)."""
    kept = [(key, value) for key, value in params if key != "marker"]
    body: dict[str, object] = {
        "images": [image(r, show_locations=show_locations, show_direct_url=show_direct_url) for r in records],
        "first": "/v2/images" + (f"?{urlencode(kept)}" if kept else ""),
        "schema": "/v2/schemas/images",
    }
    if next_marker is not None:
        body["next"] = "/v2/images?" + urlencode([*kept, ("marker", next_marker)])
    return body
