"""The building blocks of the check strings, and the three base rules other rules refer to (Glance's)."""

from oslo_policy.policy import RuleDefault

ADMIN = "rule:context_is_admin"
SERVICE = "rule:service_api"
# The caller's project is the target's: the image's owner, or the project a request acts in.
PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
# What an image's visibility lets another project read (images shared with it come with the sharing work).
VISIBLE_BY_VISIBILITY = "'public':%(visibility)s or 'community':%(visibility)s"

ADMIN_OR_PROJECT_MEMBER = f"{ADMIN} or ({PROJECT_MEMBER})"
ADMIN_OR_PROJECT_READER = f"{ADMIN} or ({PROJECT_READER})"
ADMIN_OR_READER_OF_VISIBLE_IMAGE = (
    f"{ADMIN} or (role:reader and (project_id:%(project_id)s or {VISIBLE_BY_VISIBILITY}))"
)
ADMIN_OR_MEMBER_OF_VISIBLE_IMAGE = (
    f"{ADMIN} or (role:member and (project_id:%(project_id)s or {VISIBLE_BY_VISIBILITY}))"
)
ADMIN_OR_MEMBER_CREATING_FOR_ITSELF = f"{ADMIN} or ({PROJECT_MEMBER} and project_id:%(owner)s)"
SERVICE_OR_MEMBER_OF_OWNER = f"{SERVICE} or ({PROJECT_MEMBER} and project_id:%(owner)s)"

RULES = [
    RuleDefault("default", "", "Used by policies that a policy file names without a rule of their own."),
    RuleDefault("context_is_admin", "role:admin", "Who is an administrator (Glance's is_admin)."),
    RuleDefault("service_api", "role:service or role:admin", "Who may call what Glance reserves to services."),
]
