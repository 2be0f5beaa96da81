"""Glance's image rules (Images v2), with Glance's names and secure-RBAC defaults.

The target of an image rule describes the image: `project_id` and `owner` are its owner, `visibility`
its visibility, `member_id` the caller's project when the image is shared and not the caller's (Glance's
ImageTarget); for a list or a create, `project_id` is the caller's project and `owner` the owner asked for.
"""

from oslo_policy.policy import DocumentedRuleDefault

from locquota.policies import base


def _rule(name: str, check: str, description: str, method: str, path: str) -> DocumentedRuleDefault:
    return DocumentedRuleDefault(
        name=name,
        check_str=check,
        description=description,
        operations=[{"method": method, "path": path}],
        scope_types=["project"],
    )


IMAGE = "/v2/images/{image_id}"
MEMBERS = f"{IMAGE}/members"
MEMBER = f"{MEMBERS}/{{member_id}}"

RULES = [
    _rule("add_image", base.ADMIN_OR_MEMBER_CREATING_FOR_ITSELF, "Create an image.", "POST", "/v2/images"),
    _rule("get_images", base.ADMIN_OR_PROJECT_READER, "List images.", "GET", "/v2/images"),
    _rule("get_image", base.ADMIN_OR_READER_OF_VISIBLE_IMAGE, "Show an image.", "GET", IMAGE),
    _rule("modify_image", base.ADMIN_OR_PROJECT_MEMBER, "Update an image (properties, tags).", "PATCH", IMAGE),
    _rule("publicize_image", base.ADMIN, "Make an image public.", "PATCH", IMAGE),
    _rule("communitize_image", base.ADMIN_OR_PROJECT_MEMBER, "Make an image community.", "PATCH", IMAGE),
    _rule("delete_image", base.ADMIN_OR_PROJECT_MEMBER, "Delete an image.", "DELETE", IMAGE),
    _rule("upload_image", base.ADMIN_OR_PROJECT_MEMBER, "Upload an image's data.", "PUT", f"{IMAGE}/file"),
    _rule("download_image", base.ADMIN_OR_MEMBER_OF_VISIBLE_IMAGE, "Download an image's data.", "GET", f"{IMAGE}/file"),
    _rule("get_image_location", base.ADMIN_OR_PROJECT_READER, "Show an image's locations.", "GET", IMAGE),
    _rule("set_image_location", base.ADMIN_OR_PROJECT_MEMBER, "Add or replace an image's locations.", "PATCH", IMAGE),
    _rule("delete_image_location", base.ADMIN, "Remove a location from an image.", "PATCH", IMAGE),
    _rule(
        "add_image_location",
        base.SERVICE_OR_MEMBER_OF_OWNER,
        "Add a location to a queued image (the v2.17 locations API; http URLs only without the service role).",
        "POST",
        f"{IMAGE}/locations",
    ),
    _rule("fetch_image_location", base.SERVICE, "List an image's locations.", "GET", f"{IMAGE}/locations"),
    _rule("add_member", base.ADMIN_OR_PROJECT_MEMBER, "Share an image with a project.", "POST", MEMBERS),
    _rule("delete_member", base.ADMIN_OR_PROJECT_MEMBER, "Stop sharing an image with a project.", "DELETE", MEMBER),
    _rule("get_member", base.ADMIN_OR_READER_OF_OWNER_OR_SHARED_MEMBER, "Show an image member.", "GET", MEMBER),
    _rule("get_members", base.ADMIN_OR_READER_OF_OWNER_OR_SHARED_MEMBER, "List image members.", "GET", MEMBERS),
    _rule("modify_member", base.ADMIN_OR_SHARED_MEMBER, "Accept or reject a shared image.", "PUT", MEMBER),
    _rule("deactivate", base.ADMIN_OR_PROJECT_MEMBER, "Deactivate an image.", "POST", f"{IMAGE}/actions/deactivate"),
    _rule("reactivate", base.ADMIN_OR_PROJECT_MEMBER, "Reactivate an image.", "POST", f"{IMAGE}/actions/reactivate"),
    _rule("copy_image", base.ADMIN, "Copy an active image into more stores (copy-image).", "POST", f"{IMAGE}/import"),
    _rule("tasks_api_access", base.ADMIN, "Use the tasks API (GET /v2/tasks/{task_id}).", "GET", "/v2/tasks/{task_id}"),
    _rule(
        "stores_info_detail",
        f"{base.ADMIN} or {base.SERVICE}",
        "Show every store's type.",
        "GET",
        "/v2/info/stores/detail",
    ),
]
