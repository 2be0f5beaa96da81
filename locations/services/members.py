"""Image members: the projects a shared image is shared with, and their answers (Glance's rules and codes).

Sharing moves no charge: a shared image stays charged to its owner only (SPEC section 4), so nothing
here touches the quota ledger. Members see the image (catalog.visible_to); the default list shows it
to them once they accept.
"""

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from locations.models import Image, ImageMember, MemberStatus, Visibility
from locations.services.image_policy import authorize_image, image_target, seen_by
from locations.services.images import ImageService
from locquota.clock import Clock
from locquota.errors import Forbidden, MemberConflict, MemberNotFound, TooManyMembers
from locquota.identity import Identity


class MemberService:
    """Add, list, show, answer and remove an image's members."""

    def __init__(self, db: Session, clock: Clock, images: ImageService, member_quota: int) -> None:
        self._db, self._clock, self._images, self._quota = db, clock, images, member_quota

    def add(self, caller: Identity, image_id: uuid.UUID, member: str) -> ImageMember:
        """Share the image with a project (pending until it answers); 409 if it already is, 413 past the quota."""
        image = self._shared_image(caller, image_id, for_update=True)  # the lock makes the quota count exact
        authorize_image(caller, "add_member", image_target(image.owner, image.visibility))
        existing = select(ImageMember.id).where(ImageMember.image_id == image.id, ImageMember.member == member)
        if self._db.scalar(existing) is not None:
            raise MemberConflict(f"Project {member[:64]} is already a member of this image.")
        if self._quota >= 0:
            count = self._db.scalar(select(func.count()).where(ImageMember.image_id == image.id))
            if count is not None and count >= self._quota:
                raise TooManyMembers(f"An image may be shared with at most {self._quota} projects.")
        now = self._clock.now()
        membership = ImageMember(
            image_id=image.id,
            member=member,
            status=MemberStatus.PENDING,
            image_created_at=image.created_at,
            created_at=now,
            updated_at=now,
        )
        self._db.add(membership)
        try:
            self._db.flush()
        except IntegrityError as exc:  # the same member added at once by another request (not under a row lock)
            raise MemberConflict(f"Project {member[:64]} is already a member of this image.") from exc
        return membership

    def members(self, caller: Identity, image_id: uuid.UUID) -> Sequence[ImageMember]:
        """The memberships the caller may see: all of them for the owner and admins, a member only its own."""
        image = self._shared_image(caller, image_id)
        authorize_image(caller, "get_members", image_target(image.owner, image.visibility))
        query = select(ImageMember).where(ImageMember.image_id == image.id)
        if not self._sees_all(caller, image):
            query = query.where(ImageMember.member == caller.tenant_id)
        return self._db.scalars(query.order_by(ImageMember.created_at, ImageMember.id)).all()

    def show(self, caller: Identity, image_id: uuid.UUID, member: str) -> ImageMember:
        """One membership; 404 for anything the caller may not see, as Glance answers."""
        try:
            image = self._shared_image(caller, image_id)
        except Forbidden as exc:
            raise MemberNotFound("No such member of this image.") from exc
        return self._membership(caller, image, member, hide_refusal=True)

    def answer(self, caller: Identity, image_id: uuid.UUID, member: str, status: MemberStatus) -> ImageMember:
        """A member accepts, rejects or goes back to pending; the owner may not answer for it (admins may)."""
        image = self._shared_image(caller, image_id)
        membership = self._membership(caller, image, member, for_update=True)
        authorize_image(caller, "modify_member", image_target(image.owner, image.visibility))
        if membership.status is not status:
            membership.status = status
            membership.updated_at = self._clock.now()
            self._db.flush()
        return membership

    def remove(self, caller: Identity, image_id: uuid.UUID, member: str) -> None:
        """Stop sharing with a project (owner or admin); 404 if it is not a member."""
        image = self._shared_image(caller, image_id)
        membership = self._membership(caller, image, member, for_update=True)
        authorize_image(caller, "delete_member", image_target(image.owner, image.visibility))
        self._db.delete(membership)
        self._db.flush()

    def _shared_image(self, caller: Identity, image_id: uuid.UUID, *, for_update: bool = False) -> Image:
        """The image (404 unless the caller sees it); 403 unless it is shared: only shared images have members."""
        image = self._images.get(caller, image_id, "get_image", for_update=for_update, with_details=False)
        if image.visibility is not Visibility.SHARED:
            raise Forbidden("Only shared images have members.")
        return image

    def _membership(
        self,
        caller: Identity,
        image: Image,
        member: str,
        *,
        for_update: bool = False,
        hide_refusal: bool = False,
    ) -> ImageMember:
        """The member's record if the caller may see it (the owner's project all, a member its own), else 404."""
        target = image_target(image.owner, image.visibility)
        if not caller.may("get_member", seen_by(caller, target)):
            if hide_refusal:
                raise MemberNotFound("No such member of this image.")
            raise Forbidden("Policy does not allow get_member to be performed.", rule="get_member")
        query = select(ImageMember).where(ImageMember.image_id == image.id, ImageMember.member == member)
        if not self._sees_all(caller, image):
            query = query.where(ImageMember.member == caller.tenant_id)
        if for_update:
            query = query.with_for_update()
        membership = self._db.scalar(query)
        if membership is None:
            raise MemberNotFound(f"Project {member[:64]} is not a member of this image.")
        return membership

    @staticmethod
    def _sees_all(caller: Identity, image: Image) -> bool:
        return caller.is_admin or caller.tenant_id == image.owner
