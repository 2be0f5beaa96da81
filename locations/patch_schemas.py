"""Glance's json-patch on an image (PATCH /v2/images/{id}): both dialects, attributes and locations.

Parsed and checked here, before any service runs: a bad patch is a LocquotaError that changes nothing.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

from pyramid.request import Request

from locations.schemas import check_attribute_name, validate_image_document
from locquota.errors import (
    Forbidden,
    InvalidPatch,
    InvalidPatchPath,
    UnsupportedMediaType,
)
from locquota.json_body import read_json_body
from locquota.settings import Settings


class PatchDialect(StrEnum):
    """Glance's two PATCH media types, and so its two json-patch dialects.

    v2.1 is RFC 6902 (`{"op": "replace", "path": "/name", "value": "x"}`), what glanceclient sends. v2.0 is the
    older draft that OpenStack's own integration tests send: the operation is the key (`{"replace": "/name",
    "value": "x"}`), and its add only creates (409 for a property the image has, base attributes included).
    """

    V2_0 = "application/openstack-images-v2.0-json-patch"
    V2_1 = "application/openstack-images-v2.1-json-patch"


PATCH_MEDIA_TYPES = frozenset(dialect.value for dialect in PatchDialect)
PATCH_OPERATIONS = ("add", "remove", "replace")
# Glance's _path_depth_limits: a location path may name an index; any other path names one attribute.
LOCATION_PATH_DEPTHS = {"add": 2, "remove": 2, "replace": 1}
MAX_SHOWN_CHARS = 255


@dataclass(frozen=True, slots=True)
class PatchOperation:
    """One Glance json-patch change: op, the attribute it names, and the value for add/replace."""

    op: str
    name: str
    value: object = None


def _pointer_parts(pointer: object) -> list[str]:
    """The tokens of a Glance patch path, read as Glance reads them in both dialects.

    A leading '/'; no empty token ('//', a trailing '/'); RFC 6901 escapes (~1 is '/', ~0 is '~', any other '~'
    refused), decoded after the split so an escaped '/' never adds depth; white space around a token dropped.
    """
    if not isinstance(pointer, str):
        raise InvalidPatchPath("A patch path must be a string starting with '/'.")  # Glance: 500
    shown = pointer[:MAX_SHOWN_CHARS]
    if not pointer.startswith("/"):
        raise InvalidPatchPath(f'Pointer `{shown}` does not start with "/".', path=shown)
    if re.search(r"/\s*/", pointer[1:]):
        raise InvalidPatchPath(f'Pointer `{shown}` contains adjacent "/".', path=shown)
    if len(pointer) > 1 and pointer.endswith("/"):
        raise InvalidPatchPath(f'Pointer `{shown}` ends with "/".', path=shown)
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise InvalidPatchPath(f'Pointer `{shown}` contains "~" not part of a recognized escape sequence.', path=shown)
    parts = [part.replace("~1", "/").replace("~0", "~").strip() for part in pointer[1:].split("/")]
    if not parts[0]:  # "/" or "/  ": Glance would store a property named ""
        raise InvalidPatchPath(f"Pointer `{shown}` names no attribute.", path=shown)
    return parts


def _operation_and_pointer(raw: dict[str, object], dialect: PatchDialect) -> tuple[str, object]:
    """The op and the path of one change, as its dialect spells them; 400 naming what is missing."""
    if dialect is PatchDialect.V2_0:
        named = [op for op in PATCH_OPERATIONS if op in raw]
        if len(named) != 1:
            how = "only" if named else "exactly"
            raise InvalidPatch(f'Operation objects must contain {how} one member named "add", "remove", or "replace".')
        return named[0], raw[named[0]]
    op = raw.get("op")
    if op is None:
        raise InvalidPatch("Unable to find `op` in JSON Schema change. It must be one of: add, remove, replace.")
    if op not in PATCH_OPERATIONS:
        shown = str(op)[:MAX_SHOWN_CHARS]
        raise InvalidPatch(f"Invalid operation: `{shown}`. It must be one of: add, remove, replace.")
    if "path" not in raw:
        raise InvalidPatchPath("Unable to find 'path' in JSON Schema change.")
    return str(op), raw["path"]


@dataclass(frozen=True, slots=True)
class LocationSpec:
    """A location as a client gives it."""

    url: str
    metadata: dict[str, object]


@dataclass(frozen=True, slots=True)
class LocationChange:
    """One json-patch change of /locations: add (index None appends), remove (by index), replace (all)."""

    op: str
    index: int | None = None
    locations: tuple[LocationSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ImagePatch:
    """A parsed PATCH: property changes, and location changes in the order given, and the dialect they came in."""

    properties: list[PatchOperation]
    locations: list[LocationChange]
    dialect: PatchDialect = PatchDialect.V2_1


MAX_LOCATION_INDEX_DIGITS = 4


def _location_index(token: str, pointer: str) -> int:
    if not token.isdigit() or len(token) > MAX_LOCATION_INDEX_DIGITS:
        raise InvalidPatchPath("A location index must be a small non-negative integer.", path=pointer[:255])
    return int(token)


def _location_specs(value: object) -> tuple[LocationSpec, ...]:
    validate_image_document({"locations": value})  # a list of {"url": str, "metadata": object}
    return tuple(LocationSpec(item["url"], item["metadata"]) for item in value)  # type: ignore[union-attr, index]


def _location_change(op: str, parts: list[str], value: object, *, locations_shown: bool) -> LocationChange:
    """Glance's location paths: add /locations/- or /locations/N, remove /locations/N, replace /locations."""
    pointer = "/" + "/".join(parts)
    if op == "replace":
        change = LocationChange("replace", locations=_location_specs(value))
    elif op == "remove":
        change = LocationChange("remove", index=_location_index(parts[1], pointer))
    else:
        index = None if parts[1] == "-" else _location_index(parts[1], pointer)
        change = LocationChange("add", index=index, locations=_location_specs([value]))
    if not locations_shown:  # after the body's own checks, as Glance refuses in its controller
        raise Forbidden("Locations cannot be changed while the deployment does not show them.")
    return change


def _patch_change(raw: object, dialect: PatchDialect, *, locations_shown: bool) -> PatchOperation | LocationChange:
    """One change, checked in Glance's order: its op and path, the path's depth, its value, then the attribute."""
    if not isinstance(raw, dict):
        raise InvalidPatch("Operations must be JSON objects.")
    op, pointer = _operation_and_pointer(raw, dialect)
    parts = _pointer_parts(pointer)
    depth = LOCATION_PATH_DEPTHS[op] if parts[0] == "locations" else 1
    if len(parts) != depth:
        shown = "/".join(parts)[:MAX_SHOWN_CHARS]
        raise InvalidPatchPath(f"Invalid JSON pointer for this resource: '/{shown}'.", path=shown)
    if op != "remove" and "value" not in raw:
        raise InvalidPatch(f'Operation "{op}" requires a member named "value".')
    value = raw.get("value")
    if parts[0] == "locations":
        return _location_change(op, parts, value, locations_shown=locations_shown)
    name = parts[0]
    check_attribute_name(name, for_create=False)
    if op == "remove":
        return PatchOperation(op, name)
    validate_image_document({name: value})
    return PatchOperation(op, name, value)


def image_patch(request: Request, settings: Settings) -> ImagePatch:
    """Parse a PATCH body in the dialect its media type names; 415 for any other media type."""
    if request.content_type not in PATCH_MEDIA_TYPES:
        accepted = sorted(PATCH_MEDIA_TYPES)
        raise UnsupportedMediaType(
            f"Image PATCH expects Content-Type one of: {', '.join(accepted)}.", accepted=accepted
        )
    dialect = PatchDialect(request.content_type)
    body = read_json_body(request, settings.max_request_body_bytes)
    if not isinstance(body, list):
        raise InvalidPatch("Request body must be a JSON array of operation objects.")
    changes = [_patch_change(raw, dialect, locations_shown=settings.show_multiple_locations) for raw in body]
    return ImagePatch(
        [change for change in changes if isinstance(change, PatchOperation)],
        [change for change in changes if isinstance(change, LocationChange)],
        dialect,
    )
