"""The body of POST /v2/images/{id}/import (Glance's interoperable image import), checked by its JSON Schema.

Glance answers 500 to a body that is a list or a `method` that is a string; locquota answers 400.
"""

from dataclasses import dataclass

import jsonschema
from pyramid.request import Request

from locations.schemas import checked_body
from locquota.errors import ImportMethodNotEnabled, InvalidBody
from locquota.json_body import read_json_body
from locquota.settings import IMPORT_METHODS, Settings

MAX_URI_CHARS = 2048
STORE_NAME = {"type": "string", "minLength": 1, "maxLength": 255}

IMPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "method": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "uri": {"type": "string", "maxLength": MAX_URI_CHARS},
            },
            "required": ["name"],
        },
        "stores": {"type": "array", "items": STORE_NAME, "minItems": 1, "maxItems": 64},
        "all_stores": {"type": "boolean"},
        "all_stores_must_succeed": {"type": "boolean"},
    },
    "required": ["method"],
}
_VALIDATOR = jsonschema.Draft202012Validator(IMPORT_SCHEMA)


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """What an import asks for: the method, its URL (web-download), and the stores as the caller named them.

    stores None: the default store (or the one X-Image-Meta-Store names).
    """

    method: str
    uri: str | None
    stores: tuple[str, ...] | None
    all_stores: bool
    all_stores_must_succeed: bool


def import_body(request: Request, settings: Settings) -> ImportRequest:
    """The import asked for; 400 for anything off-schema or an unknown or disabled method.

    Also 400: a web-download without a URL, or `all_stores` beside `stores` or X-Image-Meta-Store.
    """
    body = read_json_body(request, settings.max_request_body_bytes)
    body = checked_body(body, _VALIDATOR, "import request")
    method = body["method"]["name"]
    if method not in IMPORT_METHODS:
        raise InvalidBody(f"Import method {method[:64]!r} is not one of {', '.join(IMPORT_METHODS)}.")
    if method not in settings.import_methods:
        raise ImportMethodNotEnabled(f"Import method {method!r} is not enabled in this deployment.")
    uri = body["method"].get("uri")
    if method == "web-download" and not uri:
        raise InvalidBody("The web-download method needs method.uri.")
    all_stores = body.get("all_stores", False)
    if all_stores and ("stores" in body or "X-Image-Meta-Store" in request.headers):
        raise InvalidBody("all_stores cannot be used with stores or the X-Image-Meta-Store header.")
    if "stores" in body and "X-Image-Meta-Store" in request.headers:
        raise InvalidBody("stores and the X-Image-Meta-Store header cannot both be given.")
    must_succeed = body.get("all_stores_must_succeed", True)
    if not must_succeed and not settings.is_multi_store:
        raise InvalidBody("all_stores_must_succeed can only be set with several stores (enabled_backends).")
    stores = body.get("stores")
    if stores is None and "X-Image-Meta-Store" in request.headers:
        stores = [request.headers["X-Image-Meta-Store"].strip()]
    return ImportRequest(
        method=method,
        uri=uri if method == "web-download" else None,
        stores=tuple(dict.fromkeys(stores)) if stores is not None else None,
        all_stores=all_stores,
        all_stores_must_succeed=must_succeed,
    )
