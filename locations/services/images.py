"""Images as records to change: create, patch, tag and delete, always within what the caller may see.

Reads for the API (show, list) go through catalog.ImageCatalog, one statement each.
"""

import uuid

import jsonpatch
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, lazyload

from locations.models import (
    Image,
    ImageProperty,
    ImageStatus,
    ImageTag,
    Visibility,
)
from locations.patch_schemas import ImagePatch, PatchDialect, PatchOperation
from locations.schemas import EDITABLE_BASE, ImageCreate, validate_image_document
from locations.services.catalog import visible_to
from locations.services.image_policy import authorize_image, image_target
from locations.services.lifecycle import LocationLifecycle
from locations.services.location_changes import LocationChanges
from locquota.clock import Clock
from locquota.db import refused_column
from locquota.errors import (
    Forbidden,
    ImageConflict,
    ImageNotFound,
    InvalidBody,
    PropertyExists,
    PropertyNotFound,
    TagNotFound,
    TooManyProperties,
    TooManyTags,
)
from locquota.identity import Identity
from quota.services.limits import LimitService

MAX_TAGS_PER_IMAGE = 128  # Glance's image_tag_quota default
MAX_PROPERTIES_PER_IMAGE = 128  # Glance's image_property_quota default


def check_counts(tags: int, properties: int) -> None:
    """Glance's per-image limits on tags and custom properties (413 beyond)."""
    if tags > MAX_TAGS_PER_IMAGE:
        raise TooManyTags(f"An image may carry at most {MAX_TAGS_PER_IMAGE} tags.")
    if properties > MAX_PROPERTIES_PER_IMAGE:
        raise TooManyProperties(f"An image may carry at most {MAX_PROPERTIES_PER_IMAGE} custom properties.")


VISIBILITY_RULES = {"public": "publicize_image", "community": "communitize_image"}


def check_visibility_change(caller: Identity, visibility: object, target: dict[str, object]) -> None:
    """Publishing an image to every tenant is the publicize_image rule (admin); community, communitize_image."""
    rule = VISIBILITY_RULES.get(str(visibility))
    if rule is not None and not caller.may(rule, target):
        raise Forbidden(f"Policy does not allow {rule}: you may not make an image {visibility}.", rule=rule)


def check_owner_change(caller: Identity, owner: object) -> None:
    """A tenant cannot hand an image to another project; every image has an owner to charge."""
    if owner is not None and not str(owner).strip():
        raise InvalidBody("owner may not be empty.")
    if owner is not None and owner != caller.tenant_id and not caller.is_admin:
        raise Forbidden("You are not permitted to create or move images owned by another project.")


class ImageService:
    """The image records of the Glance API; location status is handled by the lifecycle."""

    def __init__(self, db: Session, clock: Clock, locations: LocationChanges, limits: LimitService) -> None:
        self._db, self._clock, self._locations, self._limits = db, clock, locations, limits
        self._lifecycle = LocationLifecycle(db, clock)

    def get(
        self,
        caller: Identity,
        image_id: uuid.UUID,
        rule: str,
        *,
        for_update: bool = False,
        with_details: bool = True,
    ) -> Image:
        """The image if the caller may see it and the policy lets it do rule to it (see authorize_image).

        Without details, properties and tags are loaded only if touched (uploads and deletes need neither).
        """
        query = select(Image).where(Image.id == image_id, visible_to(caller))
        if not with_details:
            query = query.options(lazyload(Image.properties), lazyload(Image.tags))
        if for_update:
            query = query.with_for_update()
        image = self._db.scalar(query)
        if image is None:
            raise ImageNotFound("No image found with this id.")
        authorize_image(caller, rule, image_target(image.owner, image.visibility))
        return image

    def create(self, caller: Identity, request: ImageCreate) -> Image:
        """A new queued image owned by the caller's project (or the owner an admin names), charged to the owner."""
        check_owner_change(caller, request.attributes.get("owner"))
        image_id = request.image_id or uuid.uuid4()
        owner = request.attributes.get("owner") or caller.tenant_id
        target = image_target(str(owner), request.attributes.get("visibility", Visibility.SHARED.value))
        caller.authorize("add_image", target)
        check_visibility_change(caller, request.attributes.get("visibility"), target)
        if request.image_id is not None and self._db.get(Image, image_id) is not None:  # a new uuid4 is free
            raise ImageConflict("An image with this id already exists.")
        now = self._clock.now()
        image = Image(
            id=image_id,
            status=ImageStatus.QUEUED,
            visibility=Visibility.SHARED,
            owner=caller.tenant_id,
            min_disk=0,
            min_ram=0,
            protected=False,
            os_hidden=False,
            created_at=now,
            updated_at=now,
        )
        for name, value in request.attributes.items():
            _set_attribute(image, name, value)
        if image.owner is None:
            image.owner = caller.tenant_id
        check_counts(len(request.tags), len(request.properties))
        image.tags = [ImageTag(value=tag) for tag in request.tags]
        image.properties = [ImageProperty(name=name, value=value) for name, value in request.properties.items()]
        image.locations = []  # known empty: presenting the new image needs no query for them
        self._db.add(image)
        try:
            self._db.flush()
        except DBAPIError as exc:
            if request.image_id is not None and refused_column(exc) == "images.id":
                raise InvalidBody("This database cannot store this image id: choose another (a random UUID).") from exc
            raise
        # Charged last: the admission's row lock on the owner's usage is then held only until the commit.
        self._lifecycle.create_image(image, self._limits.for_tenant(image.owner))
        return image

    def apply_patch(self, caller: Identity, image_id: uuid.UUID, patch: ImagePatch) -> Image:
        """Apply a Glance json-patch: attributes and properties, then locations, all or nothing."""
        image = self.get(caller, image_id, "modify_image", for_update=bool(patch.locations))
        if patch.properties:
            self._patch_properties(caller, image, patch.properties, adds_only_new=patch.dialect is PatchDialect.V2_0)
        if patch.locations:
            self._locations.apply(caller, image, patch.locations)
        return image

    def remove_from_store(self, caller: Identity, image_id: uuid.UUID, store_name: str) -> None:
        """DELETE /v2/stores/{store}/{image}: the image's data in one store leaves service (Glance's rules)."""
        self._locations.check_store_enabled(store_name)  # 409 first, as Glance answers before it looks
        image = self.get(caller, image_id, "delete_image_location", for_update=True, with_details=False)
        self._locations.remove_from_store(image, store_name)

    def _patch_properties(
        self, caller: Identity, image: Image, changes: list[PatchOperation], *, adds_only_new: bool
    ) -> None:
        """Apply the changes in order, each to the result of the ones before, as Glance does.

        adds_only_new: the v2.0 dialect, whose add of a property the image has (a base attribute always) is 409.
        """
        document = self._editable_document(image)
        patched = dict(document)  # depth-1 paths only replace top-level members: a shallow copy is enough
        for change in changes:
            if change.op == "remove" and change.name in EDITABLE_BASE:
                raise Forbidden(f"Property {change.name} may not be removed.")
            if change.op == "add" and adds_only_new and change.name in patched:
                raise PropertyExists(f"Property {change.name} already present.")
            path = "/" + change.name.replace("~", "~0").replace("/", "~1")
            try:
                jsonpatch.apply_patch(patched, [{"op": change.op, "path": path, "value": change.value}], in_place=True)
            except jsonpatch.JsonPatchConflict as exc:
                raise PropertyNotFound(f"Property {change.name} does not exist.") from exc
        validate_image_document(patched)
        check_counts(len(set(patched["tags"])), len(patched) - len(EDITABLE_BASE))  # type: ignore[arg-type]
        if patched["owner"] is None:
            raise InvalidBody("owner may not be removed or null: every image has an owner.")
        check_owner_change(caller, patched["owner"])
        if patched["visibility"] != document["visibility"]:
            check_visibility_change(caller, patched["visibility"], image_target(image.owner, image.visibility))
        self._write_document(image, patched)

    def _editable_document(self, image: Image) -> dict[str, object]:
        document: dict[str, object] = {prop.name: prop.value for prop in image.properties}
        for name in EDITABLE_BASE:
            document[name] = [tag.value for tag in image.tags] if name == "tags" else getattr(image, name)
        return document

    def _write_document(self, image: Image, document: dict[str, object]) -> None:
        for name in EDITABLE_BASE:
            value = document.pop(name)
            if name == "tags":
                current = {tag.value: tag for tag in image.tags}
                image.tags = [current.get(tag) or ImageTag(value=tag) for tag in dict.fromkeys(value)]  # type: ignore[call-overload]
            else:
                _set_attribute(image, name, value)
        existing = {prop.name: prop for prop in image.properties}
        kept = []
        for name, value in document.items():
            prop = existing.get(name) or ImageProperty(name=name)
            prop.value = value  # type: ignore[assignment]
            kept.append(prop)
        image.properties = kept
        image.updated_at = self._clock.now()
        self._db.flush()

    def deactivate(self, caller: Identity, image_id: uuid.UUID) -> None:
        """Active -> deactivated (downloads refused but to admins); again is a no-op; any other status 403."""
        self._switch(caller, image_id, "deactivate", ImageStatus.ACTIVE, ImageStatus.DEACTIVATED)

    def reactivate(self, caller: Identity, image_id: uuid.UUID) -> None:
        """Deactivated -> active; again is a no-op; any other status 403 (as Glance answers)."""
        self._switch(caller, image_id, "reactivate", ImageStatus.DEACTIVATED, ImageStatus.ACTIVE)

    def _switch(
        self, caller: Identity, image_id: uuid.UUID, rule: str, source: ImageStatus, target: ImageStatus
    ) -> None:
        image = self.get(caller, image_id, rule, for_update=True, with_details=False)
        if image.status is target:
            return
        if image.status is not source:
            raise Forbidden(f"Not allowed to {rule} image in status '{image.status}'.")
        LocationLifecycle(self._db, self._clock).set_image_status(image, target)  # no count changes: data stays charged
        self._db.flush()

    def add_tag(self, caller: Identity, image_id: uuid.UUID, tag: str) -> None:
        """Tag the image; tagging twice is harmless, as in Glance."""
        image = self.get(caller, image_id, "modify_image")
        if tag in {existing.value for existing in image.tags}:
            return
        check_counts(len(image.tags) + 1, 0)
        image.tags.append(ImageTag(value=tag))
        image.updated_at = self._clock.now()
        self._db.flush()

    def remove_tag(self, caller: Identity, image_id: uuid.UUID, tag: str) -> None:
        """Untag the image; 404 if it does not carry the tag."""
        image = self.get(caller, image_id, "modify_image")
        kept = [existing for existing in image.tags if existing.value != tag]
        if len(kept) == len(image.tags):
            raise TagNotFound("The image has no such tag.")
        image.tags = kept
        image.updated_at = self._clock.now()
        self._db.flush()


def _set_attribute(image: Image, name: str, value: object) -> None:
    setattr(image, name, Visibility(value) if name == "visibility" else value)
