"""Image rules asked with the image as their target (Glance's ImageTarget): its owner, its visibility, its member."""

from locquota.errors import Forbidden, ImageNotFound
from locquota.identity import Identity


def image_target(owner: str, visibility: object) -> dict[str, object]:
    """What an image rule is checked against: its owner is the project the rule's project_id names.

    Only what the rules read: decisions then repeat across images, and the policy answers them from memory.
    """
    return {"project_id": owner, "owner": owner, "visibility": str(visibility), "member_id": None}


def seen_by(caller: Identity, target: dict[str, object]) -> dict[str, object]:
    """The target with member_id set as Glance sets it: the caller's project, if the image is shared and not its own.

    Only a member finds another project's shared image (catalog.visible_to), so the caller is one.
    """
    if target["visibility"] == "shared" and target["owner"] != caller.tenant_id:
        return {**target, "member_id": caller.tenant_id}
    return target


def authorize_image(caller: Identity, rule: str, target: dict[str, object]) -> None:
    """Glance's order: an image the caller may not even see is missing (404), one it sees but may not touch 403."""
    target = seen_by(caller, target)
    if caller.may(rule, target):
        return
    if rule != "get_image" and caller.may("get_image", target):
        raise Forbidden(f"Policy does not allow {rule} to be performed.", rule=rule)
    raise ImageNotFound("No image found with this id.")
