"""Every authorization rule, in one place (STYLE section 14), with Glance's names and secure-RBAC defaults.

Glance's own rules keep Glance's names (add_image, get_image, upload_image, ...), so an operator's Glance
policy.yaml carries over; locquota's extensions are named `locquota:<thing>:<action>`. Defaults follow
Glance's secure RBAC: a reader reads, a member writes in its project, the admin role (rule
context_is_admin) may do anything, and the service role what Glance reserves to services. Every rule is
project-scoped, as Glance's: a system- or domain-scoped token is refused (403), never given a tenant.

`oslopolicy-sample-generator --namespace locquota` and `oslopolicy-policy-generator --namespace locquota`
read these through the `oslo.policy.policies` and `oslo.policy.enforcer` entry points.
"""

from oslo_policy.policy import RuleDefault

from locquota.policies import base, images, operators


def list_rules() -> list[RuleDefault]:
    """Every rule with its default (the oslo.policy.policies entry point)."""
    return [*base.RULES, *images.RULES, *operators.RULES]
