"""The building blocks of the check strings, and the three base rules other rules refer to (Glance's)."""

from oslo_policy.policy import RuleDefault

ADMIN = "rule:context_is_admin"
SERVICE = "rule:service_api"
# The caller's project is the target's: the image's owner, or the project a request acts in.
PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
# Glance's reading of an image's target: a project may read its own images, images it is a member of
# (member_id is the caller's project when it found a shared image through its membership), and community,
# public and shared images the database let it find (only members find another project's shared image).
IMAGE_MEMBER = "project_id:%(member_id)s"
VISIBLE_TO_OTHERS = "'community':%(visibility)s or 'public':%(visibility)s or 'shared':%(visibility)s"
OWNER_MEMBER_OR_VISIBLE = f"project_id:%(project_id)s or {IMAGE_MEMBER} or {VISIBLE_TO_OTHERS}"

ADMIN_OR_PROJECT_MEMBER = f"{ADMIN} or ({PROJECT_MEMBER})"
ADMIN_OR_PROJECT_READER = f"{ADMIN} or ({PROJECT_READER})"
ADMIN_OR_READER_OF_VISIBLE_IMAGE = f"{ADMIN} or (role:reader and ({OWNER_MEMBER_OR_VISIBLE}))"
ADMIN_OR_MEMBER_OF_VISIBLE_IMAGE = f"{ADMIN} or (role:member and ({OWNER_MEMBER_OR_VISIBLE}))"
# Image members: the owner's readers see every membership, a member its own; only a member answers.
OWNER_OR_MEMBER = f"project_id:%(project_id)s or {IMAGE_MEMBER}"
ADMIN_OR_READER_OF_OWNER_OR_SHARED_MEMBER = f"{ADMIN} or (role:reader and ({OWNER_OR_MEMBER}))"
ADMIN_OR_SHARED_MEMBER = f"{ADMIN} or (role:member and {IMAGE_MEMBER})"
ADMIN_OR_MEMBER_CREATING_FOR_ITSELF = f"{ADMIN} or ({PROJECT_MEMBER} and project_id:%(owner)s)"
SERVICE_OR_MEMBER_OF_OWNER = f"{SERVICE} or ({PROJECT_MEMBER} and project_id:%(owner)s)"

RULES = [
    RuleDefault("default", "", "Used by policies that a policy file names without a rule of their own."),
    RuleDefault("context_is_admin", "role:admin", "Who is an administrator (Glance's is_admin)."),
    RuleDefault("service_api", "role:service or role:admin", "Who may call what Glance reserves to services."),
]
