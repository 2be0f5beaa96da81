"""The OpenAPI document's schemas and parameters, generated from the code that parses and presents the /v1 API.

This is the one module of the document that reads the domain packages: the limits body is quota's own
JSON Schema, the restored image is Glance's image schema, resource names come from quota's enum, so the
document cannot drift from what the views validate and return.
"""

from typing import Any

from locations.query_schemas import BACKLOG_MAX_LIMIT
from locations.schemas import UUID_PATTERN, image_schema
from quota.models import TENANT_RESOURCES, Resource, SpaceState
from quota.schemas import LIMITS_SCHEMA, MAX_TENANT_ID_CHARS
from quota.services.limits import LimitsInKeystone

LIMITS_IN_KEYSTONE = LimitsInKeystone.code  # quota's own error; the rest are in locquota.errors

_INTEGER = {"type": "integer"}
_GLANCE_ONLY_KEYWORDS = ("name", "links")  # Glance's schema-document keys, not JSON Schema keywords


def ref(name: str, kind: str = "schemas") -> dict[str, str]:
    """A reference to one of the document's components."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: every property but the optional ones required, nothing else allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _by_resource(schema: dict[str, Any]) -> dict[str, Any]:
    return _object({resource.value: schema for resource in Resource})


def _resource_usage(resource: Resource) -> dict[str, Any]:
    """One resource of /v1/usage: what quota.presenters shows for it (usage only for what a tenant row totals)."""
    unit = "MiB" if resource.is_in_mib else "count"
    properties: dict[str, Any] = {"limit": _INTEGER, "limit_unit": {"const": unit}}
    if resource in TENANT_RESOURCES:
        properties["usage"] = {"type": "integer", "minimum": 0}
        properties["usage_unit"] = {"const": "bytes" if resource.is_in_mib else "count"}
        properties["remaining"] = {"type": ["integer", "null"], "minimum": 0, "description": "null: unlimited"}
    if resource.is_in_mib:
        properties["limit_bytes"] = {"type": "integer", "description": "the limit in bytes; -1: unlimited"}
    properties["overridden"] = {"type": "boolean"}
    return _object(properties)


def _image() -> dict[str, Any]:
    """Glance's image schema (locations.schemas), as the restore route presents an image."""
    schema = {key: value for key, value in image_schema().items() if key not in _GLANCE_ONLY_KEYWORDS}
    return {"type": "object", **schema}


def _space() -> dict[str, Any]:
    return _object({"size_bytes": {"type": "integer", "minimum": 0}, "locations": {"type": "integer", "minimum": 0}})


def _usage() -> dict[str, Any]:
    states = tuple(state.value for state in SpaceState)
    return _object(
        {
            "tenant_id": {"type": "string"},
            "resources": _object({resource.value: _resource_usage(resource) for resource in Resource}),
            "by_status": _object({state: ref("Space") for state in states}),
            "by_store": {
                "type": "object",
                "description": "store name -> the tenant's charged space in it, by location status",
                "additionalProperties": {
                    "type": "object",
                    "propertyNames": {"enum": list(states)},
                    "additionalProperties": ref("Space"),
                },
            },
            "freshness": _object(
                {
                    "source": {"enum": ["cache", "database"]},
                    "read_at": {"type": "string", "description": "UTC, ISO 8601 without an offset"},
                    "updated_at": {"type": ["string", "null"], "description": "null: the tenant never used anything"},
                    "version": {"type": "integer", "minimum": 0},
                    "max_age_seconds": {"type": "integer", "minimum": 0},
                }
            ),
        }
    )


def _limits() -> dict[str, Any]:
    units = {resource.value: {"const": "MiB" if resource.is_in_mib else "count"} for resource in Resource}
    return _object(
        {
            "tenant_id": {"type": "string"},
            "limits": _by_resource(_INTEGER),
            "overrides": {**_by_resource(_INTEGER), "required": [], "description": "only the tenant's own limits"},
            "defaults": _by_resource(_INTEGER),
            "units": _object(units),
        }
    )


def _backlog() -> dict[str, Any]:
    entry = _object(
        {
            "location_id": {"type": "integer"},
            "image_id": {"type": "string", "format": "uuid"},
            "store": {"type": "string"},
            "size_bytes": {"type": ["integer", "null"]},
            "pending_since": {"type": "string", "format": "date-time"},
            "age_seconds": {"type": "number"},
            "scrub_after": {"type": "string", "format": "date-time"},
            "due": {"type": "boolean"},
            "attempts": {"type": "integer", "minimum": 0},
            "last_error": {"type": ["string", "null"]},
            "claimed": {"type": "boolean"},
        }
    )
    total = _object({"store": {"type": "string"}, "locations": {"type": "integer"}, "size_bytes": {"type": "integer"}})
    return _object(
        {
            "locations": {"type": "array", "items": entry, "description": "oldest first; URLs are never shown"},
            "totals": {"type": "array", "items": total},
            "next": {"type": "string", "description": "the next page, present only when there is one"},
        },
        optional=("next",),
    )


def _error() -> dict[str, Any]:
    return _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "description": "stable: docs/errors.md lists every code"},
                    "message": {"type": "string", "description": "for people; may change"},
                    "details": {"type": "object", "description": "machine-readable context, if any"},
                }
            )
        }
    )


def schemas() -> dict[str, Any]:
    """components.schemas."""
    return {
        "Error": _error(),
        "Liveness": _object({"status": {"const": "ok"}}),
        "Readiness": _object(
            {
                "status": {"const": "ok"},
                "database": {"const": "up"},
                "cache": {"enum": ["up", "down", "disabled"], "description": "a cache outage does not make it unready"},
            }
        ),
        "Space": _space(),
        "Usage": _usage(),
        "Limits": _limits(),
        "LimitsDocument": LIMITS_SCHEMA,
        "Backlog": _backlog(),
        "Image": _image(),
    }


def parameters() -> dict[str, Any]:
    """components.parameters: the path and query parameters the /v1 views parse."""
    return {
        "TenantId": {
            "name": "tenant_id",
            "in": "path",
            "required": True,
            "description": "A project id: printable, no white space at either end (else 400 invalid_tenant_id).",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TENANT_ID_CHARS, "pattern": "^[^/]+$"},
        },
        "ImageId": {
            "name": "image_id",
            "in": "path",
            "required": True,
            "description": "An image id; a malformed one names no image (404 image_not_found).",
            "schema": {"type": "string", "pattern": UUID_PATTERN},
        },
        "BacklogLimit": {
            "name": "limit",
            "in": "query",
            "description": "Entries per page (100 when left out).",
            "schema": {"type": "integer", "minimum": 1, "maximum": BACKLOG_MAX_LIMIT},
        },
        "BacklogMarker": {
            "name": "marker",
            "in": "query",
            "description": "The location id of the last entry of the previous page (from `next`).",
            "schema": {"type": "integer", "minimum": 0},
        },
    }
