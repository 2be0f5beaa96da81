"""Parsing the quota API's input: tenant ids in paths and the limits document."""

import jsonschema
from pyramid.request import Request

from locquota.errors import InvalidBody, InvalidTenantId
from locquota.json_body import is_storable_text, read_json_body
from locquota.settings import MAX_LIMIT
from quota.models import Resource

MAX_TENANT_ID_CHARS = 255
LIMITS_SCHEMA = {
    "type": "object",
    "properties": {
        "limits": {
            "type": "object",
            "properties": {
                resource.value: {"type": ["integer", "null"], "minimum": -1, "maximum": MAX_LIMIT}
                for resource in Resource
            },
            "additionalProperties": False,
        }
    },
    "required": ["limits"],
    "additionalProperties": False,
}
_LIMITS_VALIDATOR = jsonschema.Draft202012Validator(LIMITS_SCHEMA)


def parse_tenant_id(raw: str) -> str:
    """A tenant (project) id from a URL: 1 to 255 printable characters, no surrounding white space.

    The identity layer strips X-Project-Id, so an id with white space around it could never be a caller.
    """
    if not raw or len(raw) > MAX_TENANT_ID_CHARS or not raw.isprintable() or not is_storable_text(raw):
        raise InvalidTenantId("A tenant id is 1 to 255 printable characters.")
    if raw != raw.strip():
        raise InvalidTenantId("A tenant id has no white space at its start or end.")
    return raw


def limits_body(request: Request, max_bytes: int) -> dict[Resource, int]:
    """The overrides of PUT /v1/tenants/{tenant}/limits: {"limits": {resource: int or null}} (null: default)."""
    body = read_json_body(request, max_bytes)
    error = jsonschema.exceptions.best_match(_LIMITS_VALIDATOR.iter_errors(body))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "body"
        raise InvalidBody(f"Invalid limits document at {where}: {error.message[:200]}", field=where[:255])
    limits: dict[str, int | None] = body["limits"]  # type: ignore[index]
    return {Resource(name): int(value) for name, value in limits.items() if value is not None}
