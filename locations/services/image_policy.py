"""Image rules asked with the image as their target (Glance's ImageTarget): its owner, its visibility."""

from locquota.errors import Forbidden, ImageNotFound
from locquota.identity import Identity


def image_target(owner: str, visibility: object) -> dict[str, object]:
    """What an image rule is checked against: its owner is the project the rule's project_id names.

    Only what the rules read: decisions then repeat across images, and the policy answers them from memory.
    """
    return {"project_id": owner, "owner": owner, "visibility": str(visibility)}


def authorize_image(caller: Identity, rule: str, target: dict[str, object]) -> None:
    """Glance's order: an image the caller may not even see is missing (404), one it sees but may not touch 403."""
    if caller.may(rule, target):
        return
    if rule != "get_image" and caller.may("get_image", target):
        raise Forbidden(f"Policy does not allow {rule} to be performed.", rule=rule)
    raise ImageNotFound("No image found with this id.")
