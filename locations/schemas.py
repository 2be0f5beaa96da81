"""Glance's image schema (served at /v2/schemas/image and used to validate), and request parsing.

Everything a client sends is checked here, before any service runs: a bad request is a LocquotaError
that changes nothing.
"""

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import jsonschema
from pyramid.request import Request

from locquota.errors import (
    Forbidden,
    ImageNotFound,
    InvalidBody,
    InvalidMarker,
    InvalidPatch,
    InvalidPatchPath,
    InvalidQueryParameter,
    ReadOnlyAttribute,
    ReservedAttribute,
    UnsupportedMediaType,
)
from locquota.json_body import is_storable_text, read_json_body
from locquota.settings import Settings

DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]
UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
MAX_PROPERTY_NAME_CHARS = 255
MAX_INT32 = 2**31 - 1
MAX_FILTER_VALUES = 100

# Attribute rules, as Glance's request deserializer has them.
DISALLOWED = frozenset({"direct_url", "self", "file", "schema", "stores"})
READ_ONLY = frozenset(
    {"created_at", "updated_at", "status", "checksum", "size", "virtual_size", "direct_url", "self", "file", "schema",
     "id", "os_hash_algo", "os_hash_value", "stores"}
)  # fmt: skip
RESERVED = frozenset({"location", "deleted", "deleted_at", "locations"})
RESERVED_PREFIX = "os_glance"
EDITABLE_BASE = ("name", "visibility", "protected", "os_hidden", "min_disk", "min_ram", "disk_format",
                 "container_format", "owner", "tags")  # fmt: skip
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
LIST_FILTERS_WITH_IN = ("name", "status", "owner", "disk_format", "container_format", "id")
# Other image columns Glance's list compares exactly when named as a filter (not as a property), and the
# whole-number ones it also takes as ranges (`min_ram_min`, `virtual_size_max`, ...), with their column's largest value.
TEXT_COLUMN_FILTERS = ("checksum", "os_hash_algo", "os_hash_value")
TIME_COLUMN_FILTERS = ("created_at", "updated_at")  # each with Glance's operators: gte:2024-01-01T00:00:00Z
TIME_OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte")
NUMBER_COLUMN_FILTERS = {"min_ram": MAX_INT32, "min_disk": MAX_INT32, "virtual_size": 2**63 - 1}  # int, int, bigint
VISIBILITIES = ("public", "private", "shared", "community")
MEMBER_STATUSES = ("pending", "accepted", "rejected")


def _nullable(kind: str, **extra: object) -> dict[str, object]:
    return {"type": ["null", kind], **extra}


def image_schema() -> dict[str, Any]:
    """The image schema glanceclient fetches before every create and update, and validates against."""
    properties: dict[str, Any] = {
        "id": {"type": "string", "description": "An identifier for the image", "pattern": UUID_PATTERN},
        "name": _nullable("string", maxLength=255, description="Descriptive name for the image"),
        "status": {
            "type": "string",
            "readOnly": True,
            "description": "Status of the image",
            "enum": [
                "queued",
                "saving",
                "active",
                "killed",
                "deleted",
                "uploading",
                "importing",
                "pending_delete",
                "deactivated",
            ],
        },
        "visibility": {
            "type": "string",
            "description": "Scope of image accessibility",
            "enum": ["community", "public", "private", "shared"],
        },
        "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
        "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list."},
        "checksum": _nullable("string", readOnly=True, maxLength=32, description="md5 hash of image contents."),
        "os_hash_algo": _nullable("string", readOnly=True, maxLength=64, description="Algorithm of os_hash_value"),
        "os_hash_value": _nullable("string", readOnly=True, maxLength=128, description="Hexdigest of the data"),
        "owner": _nullable("string", maxLength=255, description="Owner of the image"),
        "size": _nullable("integer", readOnly=True, description="Size of image file in bytes"),
        "virtual_size": _nullable("integer", readOnly=True, description="Virtual size of image in bytes"),
        "container_format": _nullable("string", enum=[None, *CONTAINER_FORMATS], description="Container format"),
        "disk_format": _nullable("string", enum=[None, *DISK_FORMATS], description="Format of the disk"),
        "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
        "updated_at": {"type": "string", "readOnly": True, "description": "Date and time of the last modification"},
        "tags": {
            "type": "array",
            "description": "List of strings related to the image",
            "items": {"type": "string", "maxLength": 255},
        },
        "direct_url": {"type": "string", "readOnly": True, "description": "URL of the image file in its store"},
        "min_ram": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_INT32,
            "description": "Amount of ram (in MB) required to boot image.",
        },
        "min_disk": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_INT32,
            "description": "Amount of disk space (in GB) required to boot image.",
        },
        "self": {"type": "string", "readOnly": True, "description": "An image self url"},
        "file": {"type": "string", "readOnly": True, "description": "An image file url"},
        "stores": {"type": "string", "readOnly": True, "description": "Stores in which image data resides"},
        "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
        "locations": {
            "type": "array",
            "description": "A set of URLs to access the image file kept in external store",
            "items": {
                "type": "object",
                "properties": {"url": {"type": "string", "maxLength": 255}, "metadata": {"type": "object"}},
                "required": ["url", "metadata"],
            },
        },
    }
    return {
        "name": "image",
        "properties": properties,
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def collection_schema(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """Glance's collection schema around an item schema: the items, and the paging links."""
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def images_schema() -> dict[str, Any]:
    """The collection schema at /v2/schemas/images."""
    return collection_schema("images", image_schema())


def checked_body(body: object, validator: jsonschema.protocols.Validator, what: str) -> dict[str, Any]:
    """The body if the validator accepts it; InvalidBody naming where the first problem is."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the body"
        raise InvalidBody(f"Invalid {what} at {where}: {error.message[:200]}")
    assert isinstance(body, dict)  # noqa: S101  (every schema checked this way is an object's)
    return body


_VALIDATOR = jsonschema.Draft4Validator(image_schema())


def validate_image_document(document: dict[str, object]) -> None:
    """Check a (partial) image against the schema; InvalidBody names the first problem."""
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "body"
        raise InvalidBody(f"Invalid value for {where}: {error.message[:200]}", field=where[:255])


def parse_image_id(raw: str) -> uuid.UUID:
    """An image id from the URL; a malformed one names no image, so it is a 404 as in Glance."""
    if not re.fullmatch(UUID_PATTERN, raw):
        raise ImageNotFound("No image found with this id.")
    return uuid.UUID(raw)


def parse_tag(raw: str) -> str:
    """A tag from the URL, held to the schema's rules for tags."""
    if not is_storable_text(raw):
        raise InvalidBody("Tags may not contain NUL characters.")
    validate_image_document({"tags": [raw]})
    return raw


def _check_attribute_name(name: str, *, for_create: bool) -> None:
    if name in RESERVED or name.startswith(RESERVED_PREFIX):
        raise ReservedAttribute(f"Attribute '{name[:255]}' is reserved.")
    if name in DISALLOWED or (not for_create and name in READ_ONLY) or (for_create and name in READ_ONLY - {"id"}):
        raise ReadOnlyAttribute(f"Attribute '{name}' is read-only.")
    if len(name) > MAX_PROPERTY_NAME_CHARS:
        raise InvalidBody("Custom property names must be at most 255 characters.")


@dataclass(frozen=True, slots=True)
class ImageCreate:
    """A validated POST /v2/images body."""

    image_id: uuid.UUID | None
    attributes: dict[str, object]
    tags: list[str]
    properties: dict[str, str]


def image_create(request: Request, settings: Settings) -> ImageCreate:
    """Parse POST /v2/images: 403 for read-only or reserved attributes, 400 for anything off-schema."""
    body = read_json_body(request, settings.max_request_body_bytes)
    if not isinstance(body, dict):
        raise InvalidBody("The request body must be a JSON object.")
    for name in body:
        _check_attribute_name(name, for_create=True)
    validate_image_document(body)
    raw_id = body.pop("id", None)
    tags = body.pop("tags", [])
    attributes = {name: body.pop(name) for name in EDITABLE_BASE if name in body}
    return ImageCreate(uuid.UUID(raw_id) if raw_id else None, attributes, list(dict.fromkeys(tags)), body)


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
    _check_attribute_name(name, for_create=False)
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


@dataclass(frozen=True, slots=True)
class SortKey:
    """One sort key and its direction."""

    name: str
    descending: bool


@dataclass(frozen=True, slots=True)
class ImageQuery:
    """A validated GET /v2/images query."""

    limit: int
    marker: uuid.UUID | None = None
    sort: tuple[SortKey, ...] = (SortKey("created_at", descending=True),)
    equal_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # bytes, exactly; the bounds are inclusive; each leaves out images without data
    size_min: int | None = None
    size_max: int | None = None
    protected: bool | None = None
    # (column, one of TIME_OPERATORS, value): the columns of TEXT_, NUMBER_ and TIME_COLUMN_FILTERS
    column_filters: tuple[tuple[str, str, str | int | datetime], ...] = ()
    os_hidden: bool = False
    # None: Glance's default list (own, public and accepted shared images); else the visibilities asked for.
    visibilities: frozenset[str] | None = None
    member_statuses: tuple[str, ...] = ("accepted",)  # of the shared images listed through a membership


def _sort_key(name: str) -> str:
    name = name.strip()
    if name not in SORT_KEYS:
        raise InvalidQueryParameter(f"Invalid sort key. It must be one of: {', '.join(SORT_KEYS)}.")
    return name


def _sort_dir(direction: str) -> bool:
    direction = direction.strip()
    if direction not in ("asc", "desc"):
        raise InvalidQueryParameter("Invalid sort direction: it must be asc or desc.")
    return direction == "desc"


def _sorting(params: dict[str, list[str]]) -> tuple[SortKey, ...]:
    """Both of Glance's syntaxes: sort=name:asc,size:desc, or repeated sort_key/sort_dir."""
    if "sort" in params:
        if "sort_key" in params or "sort_dir" in params:
            raise InvalidQueryParameter("Old and new sorting syntax cannot be combined.")
        keys = []
        for item in ",".join(params.pop("sort")).split(","):
            name, _, direction = item.partition(":")
            keys.append(SortKey(_sort_key(name), _sort_dir(direction or "desc")))
        return tuple(keys)
    names = [_sort_key(name) for name in params.pop("sort_key", [])] or ["created_at"]
    directions = [_sort_dir(direction) for direction in params.pop("sort_dir", [])] or [True]
    if len(directions) == 1:
        directions *= len(names)
    if len(directions) != len(names):
        raise InvalidQueryParameter("Number of sort dirs does not match the number of sort keys.")
    return tuple(SortKey(name, descending) for name, descending in zip(names, directions, strict=True))


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.pop(name, [])
    if len(values) > 1:
        raise InvalidQueryParameter(f"The parameter {name} may be given only once.")
    return values[0] if values else None


def _integer(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not re.fullmatch(r"\d{1,18}", raw.strip()):
        raise InvalidQueryParameter(f"{name} must be a non-negative integer.")
    return int(raw)


MAX_BIGINT = 2**63 - 1  # the size column's largest value, on every database
MAX_BIGINT_DIGITS = len(str(MAX_BIGINT))


def _size_filter(name: str, raw: str | None) -> int | None:
    """A size in bytes to filter on: digits, at most the size column's largest value (a bigint); 400 otherwise.

    Glance takes size_min/size_max with Python's int() (400 "Unable to filter on a range with a non-numeric
    value.") and size as a column equality. Past a bigint, PostgreSQL fails the statement (bigint out of range)
    and SQLite cannot bind the value: both would be 500s.
    """
    if raw is None:
        return None
    digits = raw.strip()
    if not (digits.isascii() and digits.isdigit()):
        if re.fullmatch(r"-\d+", digits):
            raise InvalidQueryParameter(f"{name} must not be negative: it is a number of bytes.")
        if name == "size":
            raise InvalidQueryParameter("size must be a number of bytes.")
        raise InvalidQueryParameter("Unable to filter on a range with a non-numeric value.")  # Glance's words
    value = int(digits) if len(digits) <= MAX_BIGINT_DIGITS else MAX_BIGINT + 1
    if value > MAX_BIGINT:
        raise InvalidQueryParameter(f"{name} is out of range: at most {MAX_BIGINT} bytes.")
    return value


def _flag(name: str, raw: str | None) -> bool | None:
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise InvalidQueryParameter(f"Invalid value for {name}: it must be true or false.")
    return raw.lower() == "true"


BACKLOG_DEFAULT_LIMIT = 100
BACKLOG_MAX_LIMIT = 1000


def backlog_query(request: Request) -> tuple[int, int | None]:
    """GET /v1/scrubber/backlog parameters: limit (1..1000) and marker (a location id)."""
    params: dict[str, list[str]] = {}
    try:
        for key, value in request.GET.items():
            params.setdefault(key, []).append(value)
    except UnicodeDecodeError as exc:
        raise InvalidQueryParameter("The query string is not UTF-8.") from exc
    unknown = set(params) - {"limit", "marker"}
    if unknown:
        raise InvalidQueryParameter(f"Unknown parameter: {sorted(unknown)[0][:64]}.")
    limit = _integer("limit", _single(params, "limit"))
    if limit is not None and not 1 <= limit <= BACKLOG_MAX_LIMIT:
        raise InvalidQueryParameter(f"limit must be between 1 and {BACKLOG_MAX_LIMIT}.")
    marker = _integer("marker", _single(params, "marker"))
    if marker is not None and marker > MAX_INT32:
        raise InvalidMarker("The marker is not a location in the backlog.")
    return limit or BACKLOG_DEFAULT_LIMIT, marker


def image_list_query(request: Request, settings: Settings) -> ImageQuery:
    """Parse GET /v2/images parameters as Glance does; unknown parameters filter on properties."""
    params: dict[str, list[str]] = {}
    try:
        items = list(request.GET.items())
    except UnicodeDecodeError as exc:
        raise InvalidQueryParameter("The query string is not UTF-8.") from exc
    for key, value in items:
        if not (is_storable_text(key) and is_storable_text(value)):
            raise InvalidQueryParameter("Query parameters may not contain NUL characters.")
        params.setdefault(key, []).append(value)
    limit = _integer("limit", _single(params, "limit"))
    raw_marker = _single(params, "marker")
    if raw_marker is not None and not re.fullmatch(UUID_PATTERN, raw_marker):
        raise InvalidMarker("The marker is not an image id.")
    sort = _sorting(params)
    tags = tuple(tag.strip() for tag in params.pop("tag", []))
    if "changes-since" in params:
        raise InvalidQueryParameter('The "changes-since" filter is no longer available on v2.')
    member_statuses = _member_statuses(_single(params, "member_status"))
    visibilities = _visibilities(_single(params, "visibility"))
    size = _size_filter("size", _single(params, "size"))
    size_min = _size_filter("size_min", _single(params, "size_min"))
    size_max = _size_filter("size_max", _single(params, "size_max"))
    protected = _flag("protected", _single(params, "protected"))
    column_filters = _column_filters(params)
    os_hidden = _flag("os_hidden", _single(params, "os_hidden")) or False
    equal_filters: dict[str, tuple[str, ...]] = {}
    for name in LIST_FILTERS_WITH_IN:
        raw = _single(params, name)
        if raw is not None:
            equal_filters[name] = tuple(raw[3:].split(",")) if raw.startswith("in:") else (raw,)
    properties = {}
    for name, values in params.items():
        if len(values) > 1:
            raise InvalidQueryParameter(f"The filter {name[:255]} may be given only once.")
        properties[name] = values[0]
    filter_values = len(tags) + len(properties) + sum(len(values) for values in equal_filters.values())
    if filter_values > MAX_FILTER_VALUES:
        # Each value is a condition in the query; thousands would stall the planner (and overflow SQLite).
        raise InvalidQueryParameter(f"At most {MAX_FILTER_VALUES} filter values may be given at once.")
    return ImageQuery(
        limit=min(settings.api_limit_max, settings.limit_param_default if limit is None else limit),
        marker=uuid.UUID(raw_marker) if raw_marker else None,
        sort=sort,
        equal_filters=equal_filters,
        tags=tags,
        properties=properties,
        size=size,
        size_min=size_min,
        size_max=size_max,
        protected=protected,
        column_filters=column_filters,
        os_hidden=os_hidden,
        visibilities=visibilities,
        member_statuses=member_statuses,
    )


def _column_filters(params: dict[str, list[str]]) -> tuple[tuple[str, str, str | int | datetime], ...]:
    """Glance's filters on other image columns (taken out of params): checksum=, min_ram_min=, created_at=gte:..."""
    filters: list[tuple[str, str, str | int | datetime]] = []
    for name in TEXT_COLUMN_FILTERS:
        raw = _single(params, name)
        if raw is not None:
            filters.append((name, "eq", raw))
    for name, maximum in NUMBER_COLUMN_FILTERS.items():
        for key, operator in ((name, "eq"), (f"{name}_min", "gte"), (f"{name}_max", "lte")):
            raw = _single(params, key)
            if raw is not None:
                filters.append((name, operator, _whole_number_filter(key, raw, maximum)))
    for name in TIME_COLUMN_FILTERS:
        raw = _single(params, name)
        if raw is not None:
            filters.append((name, *_time_filter(name, raw)))
    return tuple(filters)


def _time_filter(name: str, raw: str) -> tuple[str, datetime]:
    """`[operator:]ISO 8601 time`, as Glance's split_filter_op reads it; the instant in UTC, as the columns hold it."""
    operator, _, rest = raw.partition(":")
    operator, text = (operator, rest) if operator in TIME_OPERATORS else ("eq", raw)
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError as exc:  # Glance's words
        raise InvalidQueryParameter(f'Bad "{name}" query filter format. Use ISO 8601 DateTime notation.') from exc
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC).replace(tzinfo=None)
    return operator, instant


def _whole_number_filter(name: str, raw: str, maximum: int) -> int:
    """A filter value on a whole-number column: digits up to the column's largest value; 400 otherwise.

    Glance takes ranges with int() (400 for a non-number) and an equality as the column's own comparison; past
    the column's range PostgreSQL would fail the statement (a 500), so that is a 400 here, as for size.
    """
    digits = raw.strip()
    if not (digits.isascii() and digits.isdigit()):
        if name.endswith(("_min", "_max")):
            raise InvalidQueryParameter("Unable to filter on a range with a non-numeric value.")  # Glance's words
        raise InvalidQueryParameter(f"{name} must be a whole number.")
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise InvalidQueryParameter(f"{name} is out of range: at most {maximum}.")
    return int(digits)


def _visibilities(raw: str | None) -> frozenset[str] | None:
    """visibility=public (one value, as Glance takes it) or =all (community included); None if not given."""
    if raw is None:
        return None
    if raw not in (*VISIBILITIES, "all"):
        raise InvalidQueryParameter("Invalid visibility value.")
    return frozenset(VISIBILITIES) if raw == "all" else frozenset((raw,))


def _member_statuses(raw: str | None) -> tuple[str, ...]:
    """member_status=pending|accepted|rejected|all, as Glance takes it (accepted when not given)."""
    if raw is None:
        return ("accepted",)
    if raw == "all":
        return MEMBER_STATUSES
    if raw not in MEMBER_STATUSES:
        raise InvalidQueryParameter("Invalid member_status value: it must be pending, accepted, rejected or all.")
    return (raw,)
