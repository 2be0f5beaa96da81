"""The body of POST /v2/images/{id}/locations (Glance's v2.17 locations API), checked by its JSON Schema."""

import hashlib
from dataclasses import dataclass

import jsonschema
from pyramid.request import Request

from locations.schemas import checked_body
from locquota.errors import InvalidBody
from locquota.json_body import read_json_body
from locquota.settings import Settings

HASH_ALGORITHMS = ("sha1", "sha256", "sha512", "md5")  # Glance's enum
MAX_URL_CHARS = 4096

ADD_LOCATION_SCHEMA = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "minLength": 1, "maxLength": MAX_URL_CHARS},
        "validation_data": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "os_hash_algo": {"type": "string", "enum": list(HASH_ALGORITHMS)},
                "os_hash_value": {"type": "string", "maxLength": 128, "pattern": "^[0-9a-fA-F]*$"},
            },
            "dependentRequired": {"os_hash_value": ["os_hash_algo"], "os_hash_algo": ["os_hash_value"]},
        },
    },
    "required": ["url"],
}
_VALIDATOR = jsonschema.Draft202012Validator(ADD_LOCATION_SCHEMA)


@dataclass(frozen=True, slots=True)
class NewLocation:
    """A location to add, and the hash its data must have (algorithm, lower-case hex) if the caller gave one."""

    url: str
    expected_hash: tuple[str, str] | None


def add_location_body(request: Request, settings: Settings) -> NewLocation:
    """400 for anything off-schema, and for a hash value of the wrong length for its algorithm."""
    body = read_json_body(request, settings.max_request_body_bytes)
    body = checked_body(body, _VALIDATOR, "location request")
    validation = body.get("validation_data") or {}
    if "os_hash_value" not in validation:
        return NewLocation(body["url"], None)
    algorithm, value = validation["os_hash_algo"], validation["os_hash_value"].lower()
    if len(value) != 2 * hashlib.new(algorithm).digest_size:
        raise InvalidBody(f"os_hash_value is not the length of a {algorithm} digest.")
    return NewLocation(body["url"], (algorithm, value))
