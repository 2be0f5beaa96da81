"""locquota's own rules: the usage API for tenants, and the /v1 operator routes (admin by default)."""

from oslo_policy.policy import DocumentedRuleDefault

from locquota.policies import base


def _rule(name: str, check: str, description: str, operations: list[tuple[str, str]]) -> DocumentedRuleDefault:
    return DocumentedRuleDefault(
        name=name,
        check_str=check,
        description=description,
        operations=[{"method": method, "path": path} for method, path in operations],
        scope_types=["project"],
    )


RULES = [
    _rule(
        "locquota:usage:get",
        base.ADMIN_OR_PROJECT_READER,
        "Read the caller's own project's usage and limits.",
        [("GET", "/v2/info/usage"), ("GET", "/v1/usage")],
    ),
    _rule("locquota:usage:get_any", base.ADMIN, "Read any project's usage.", [("GET", "/v1/tenants/{tenant}/usage")]),
    _rule("locquota:limits:get", base.ADMIN, "Read a project's limits.", [("GET", "/v1/tenants/{tenant}/limits")]),
    _rule("locquota:limits:set", base.ADMIN, "Set a project's limits.", [("PUT", "/v1/tenants/{tenant}/limits")]),
    _rule("locquota:backlog:get", base.ADMIN, "Read the scrubber's backlog.", [("GET", "/v1/scrubber/backlog")]),
    _rule(
        "locquota:location:any_store",
        "role:service",
        "Add a location in any store through the locations API (Glance: the service role; others: http stores only).",
        [("POST", "/v2/images/{image_id}/locations")],
    ),
    _rule(
        "locquota:image:restore",
        base.ADMIN,
        "Restore a pending_delete image before its data is scrubbed.",
        [("POST", "/v1/images/{image_id}/restore")],
    ),
]
