"""The document's paths: every route locquota adds beside Glance's API, with the errors each can answer."""

from typing import Any

from locquota.errors import (
    Forbidden,
    ImageNotFound,
    IncompleteBody,
    InvalidBody,
    InvalidImageStatus,
    InvalidMarker,
    InvalidQueryParameter,
    InvalidTenantId,
    KeystoneUnavailable,
    LocationInUse,
    MalformedJSON,
    NotFound,
    RequestTooLarge,
    ScrubInProgress,
    ServiceUnavailable,
    Unauthorized,
)
from locquota.openapi.components import LIMITS_IN_KEYSTONE, ref

PUBLIC: list[dict[str, list[str]]] = []  # an operation's `security` when it needs no identity
RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, *codes: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response whose `error.code` is one of codes (the body shape of docs/errors.md)."""
    only_these = {"properties": {"error": {"properties": {"code": {"enum": sorted(codes)}}}}}
    response: dict[str, Any] = {"description": description, "content": _json({"allOf": [ref("Error"), only_these]})}
    if headers:
        response["headers"] = headers
    return response


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _json(ref(schema))}


def _authenticated(rule: str, responses: dict[str, Any], **operation: Any) -> dict[str, Any]:
    """An operation behind the identity and the policy: its own responses plus 401, 403 and 503."""
    forbidden = responses.pop("403", None) or _error("The policy does not allow it.", Forbidden.code)
    common = {
        "401": _error(
            "No identity: no X-Auth-Token, or one that is unknown or expired.",
            Unauthorized.code,
            headers={"WWW-Authenticate": {"schema": {"type": "string"}}},
        ),
        "403": forbidden,
        "503": _error(
            "The database (or Keystone, holding tokens or limits) cannot be reached; nothing changed.",
            ServiceUnavailable.code,
            KeystoneUnavailable.code,
            headers={"Retry-After": RETRY_AFTER},
        ),
    }
    return {**operation, "x-policy-rule": rule, "responses": dict(sorted({**responses, **common}.items()))}


def _tenant_path(tag: str, operations: dict[str, Any]) -> dict[str, Any]:
    bad_tenant = _error("The tenant id in the path is not one.", InvalidTenantId.code)
    no_route = _error("No resource at this URL (a tenant id cannot hold `/`).", NotFound.code)
    for operation in operations.values():
        operation["tags"] = [tag]
        operation["responses"] = dict(sorted({"400": bad_tenant, "404": no_route, **operation["responses"]}.items()))
    return {"parameters": [ref("TenantId", "parameters")], **operations}


def _health_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "getLiveness",
                "summary": "The process answers.",
                "tags": ["health"],
                "security": PUBLIC,
                "responses": {"200": _ok("Alive.", "Liveness")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "getReadiness",
                "summary": "Ready when the database answers; the cache is reported without failing on it.",
                "tags": ["health"],
                "security": PUBLIC,
                "responses": {
                    "200": _ok("Ready.", "Readiness"),
                    "503": _error(
                        "The database cannot be reached.",
                        ServiceUnavailable.code,
                        headers={"Retry-After": RETRY_AFTER},
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus text format, or OpenMetrics when the Accept header asks for it.",
                "tags": ["metrics"],
                "security": PUBLIC,
                "responses": {
                    "200": {
                        "description": "One scrape: the instruments of every process and the scrape-time gauges.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApiDocument",
                "summary": "This document.",
                "tags": ["contract"],
                "security": PUBLIC,
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
            }
        },
    }


def _quota_paths() -> dict[str, Any]:
    read_limits = _authenticated(
        "locquota:limits:get",
        {"200": _ok("The limits that apply, the tenant's overrides and the defaults.", "Limits")},
        operationId="getTenantLimits",
        summary="A tenant's limits (admin).",
    )
    set_limits = _authenticated(
        "locquota:limits:set",
        {
            "200": _ok("The tenant's limits after the change.", "Limits"),
            "400": _error(
                "Not a limits document, or a bad tenant id.",
                MalformedJSON.code,
                InvalidBody.code,
                IncompleteBody.code,
                InvalidTenantId.code,
            ),
            "409": _error("Limits are kept in Keystone (limits_source = keystone).", LIMITS_IN_KEYSTONE),
            "413": _error("The body is over max_request_body_bytes.", RequestTooLarge.code),
        },
        operationId="setTenantLimits",
        summary="Replace a tenant's overrides (admin); a resource left out or null falls back to the default.",
        requestBody={"required": True, "content": _json(ref("LimitsDocument"))},
    )
    return {
        "/v1/usage": {
            "get": _authenticated(
                "locquota:usage:get",
                {"200": _ok("The caller's usage.", "Usage")},
                operationId="getOwnUsage",
                summary="The caller's usage in exact bytes, by location status and store, with limits and freshness.",
                tags=["usage"],
            )
        },
        "/v1/tenants/{tenant_id}/usage": _tenant_path(
            "usage",
            {
                "get": _authenticated(
                    "locquota:usage:get_any",
                    {"200": _ok("The tenant's usage.", "Usage")},
                    operationId="getTenantUsage",
                    summary="Any tenant's usage (admin).",
                )
            },
        ),
        "/v1/tenants/{tenant_id}/limits": _tenant_path("limits", {"get": read_limits, "put": set_limits}),
    }


def _operator_paths() -> dict[str, Any]:
    return {
        "/v1/images/{image_id}/restore": {
            "parameters": [ref("ImageId", "parameters")],
            "post": _authenticated(
                "locquota:image:restore",
                {
                    "200": _ok("The image, active again.", "Image"),
                    "403": _error(
                        "The policy does not allow it, or another project's image reaches this data.",
                        Forbidden.code,
                        LocationInUse.code,
                    ),
                    "404": _error("No such image, or a malformed id.", ImageNotFound.code, NotFound.code),
                    "409": _error(
                        "The image is not pending_delete (or nothing is left to restore), or a scrubber holds a claim.",
                        InvalidImageStatus.code,
                        ScrubInProgress.code,
                    ),
                },
                operationId="restoreImage",
                summary="A pending_delete image and its pending_delete locations back to active (admin).",
                tags=["operators"],
            ),
        },
        "/v1/scrubber/backlog": {
            "get": _authenticated(
                "locquota:backlog:get",
                {
                    "200": _ok("One page of the backlog, and totals by store.", "Backlog"),
                    "400": _error(
                        "A bad, unknown or repeated parameter, or a marker not in the backlog.",
                        InvalidQueryParameter.code,
                        InvalidMarker.code,
                    ),
                },
                operationId="getScrubberBacklog",
                summary="pending_delete locations oldest first, with age, attempts and last error (admin).",
                tags=["operators"],
                parameters=[ref("BacklogLimit", "parameters"), ref("BacklogMarker", "parameters")],
            )
        },
    }


def paths() -> dict[str, Any]:
    """Every path of the document, health and metrics first."""
    return {**_health_paths(), **_quota_paths(), **_operator_paths()}
