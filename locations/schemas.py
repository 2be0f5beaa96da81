"""Glance's image schema (served at /v2/schemas/image and used to validate), and parsing an image's creation.

The patch of an image is parsed in patch_schemas, the read endpoints' queries in query_schemas.

Everything a client sends is checked here, before any service runs: a bad request is a LocquotaError
that changes nothing.
"""

import re
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema
from pyramid.request import Request

from locquota.errors import (
    ImageNotFound,
    InvalidBody,
    ReadOnlyAttribute,
    ReservedAttribute,
)
from locquota.json_body import is_storable_text, read_json_body
from locquota.settings import Settings

DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]
UUID_PATTERN = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
MAX_PROPERTY_NAME_CHARS = 255
MAX_INT32 = 2**31 - 1

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


def check_attribute_name(name: str, *, for_create: bool) -> None:
    """Glance's rules for an attribute a client names: reserved (403), read-only (403), too long (400)."""
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
        check_attribute_name(name, for_create=True)
    validate_image_document(body)
    raw_id = body.pop("id", None)
    tags = body.pop("tags", [])
    attributes = {name: body.pop(name) for name in EDITABLE_BASE if name in body}
    return ImageCreate(uuid.UUID(raw_id) if raw_id else None, attributes, list(dict.fromkeys(tags)), body)
