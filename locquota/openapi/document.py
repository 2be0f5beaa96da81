"""The whole OpenAPI 3.1 document of locquota's own routes, built once per process."""

import functools
import json
from importlib import metadata
from typing import Any

from locquota.openapi import components
from locquota.openapi.paths import paths

DESCRIPTION = """\
locquota's own routes: the usage and limits API, the operator routes under /v1, the health probes and
/metrics. The tenant-facing Glance Images v2 API (`/v2/...`, and version discovery at `/` and `/versions`)
is not described here: it is Glance's contract, served unchanged, and Glance publishes its JSON Schemas at
`/v2/schemas/...`.

Identity: `X-Auth-Token` carries a Keystone token (auth_strategy keystone) or a locquota token
(auth_strategy tokens, `locquota tokens create`); under noauth (development only) keystonemiddleware's
identity headers stand in for it. Which roles may call an operation is the oslo.policy rule named in its
`x-policy-rule` (admin by default for every operator route).

Every error is `{"error": {"code", "message", "details"}}`; `code` is stable (docs/errors.md). A known URL
with a method it does not take is 405 `method_not_allowed`; a 500 `internal_error` is always a bug.
"""


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "locquota extensions",
            "version": metadata.version("locquota"),
            "description": DESCRIPTION,
        },
        "tags": [
            {"name": "health", "description": "Probes for load balancers and orchestrators; no identity."},
            {"name": "metrics", "description": "Prometheus scrapes; no identity."},
            {"name": "usage", "description": "Usage in exact bytes, by location status and store."},
            {"name": "limits", "description": "Per-tenant limits over the configured defaults."},
            {"name": "operators", "description": "Restore, and the scrubber's backlog."},
            {"name": "contract", "description": "This document."},
        ],
        "security": [{"authToken": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "authToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Auth-Token",
                    "description": "A Keystone token, or a locquota token (lq_...), as the deployment's strategy says.",
                }
            },
            "schemas": components.schemas(),
            "parameters": components.parameters(),
        },
    }


@functools.cache
def encoded() -> bytes:
    """The document as served: the same bytes for every request of this process."""
    return json.dumps(document(), indent=1).encode()
