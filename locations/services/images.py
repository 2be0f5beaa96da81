"""Images: create, read, list, patch and delete, always within what the caller may see."""

import uuid
from collections.abc import Sequence

import jsonpatch
from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import Session

from locations.models import (
    HIDDEN_IMAGE_STATUSES,
    Image,
    ImageProperty,
    ImageStatus,
    ImageTag,
    LocationStatus,
    Visibility,
)
from locations.schemas import EDITABLE_BASE, ImageCreate, ImageQuery, PatchOperation, validate_image_document
from locations.stores.base import StoreError, StoreRegistry
from locquota.clock import Clock
from locquota.errors import (
    Forbidden,
    ImageConflict,
    ImageNotFound,
    ImageProtected,
    InvalidBody,
    InvalidMarker,
    InvalidQueryParameter,
    PropertyNotFound,
    StoreUnavailable,
    TagNotFound,
    TooManyProperties,
    TooManyTags,
)
from locquota.identity import Identity

SORT_COLUMNS: dict[str, ColumnElement[object]] = {
    # Nullable keys sort through coalesce so NULLs order the same way on PostgreSQL and SQLite,
    # and keyset paging compares plain values.
    "name": func.coalesce(Image.name, ""),
    "status": Image.status,
    "container_format": func.coalesce(Image.container_format, ""),
    "disk_format": func.coalesce(Image.disk_format, ""),
    "size": func.coalesce(Image.size, -1),
    "id": Image.id,
    "created_at": Image.created_at,
    "updated_at": Image.updated_at,
}
IN_FILTER_COLUMNS = {
    "name": Image.name,
    "status": Image.status,
    "visibility": Image.visibility,
    "owner": Image.owner,
    "disk_format": Image.disk_format,
    "container_format": Image.container_format,
}


MAX_TAGS_PER_IMAGE = 128  # Glance's image_tag_quota default
MAX_PROPERTIES_PER_IMAGE = 128  # Glance's image_property_quota default


def check_counts(tags: int, properties: int) -> None:
    """Glance's per-image limits on tags and custom properties (413 beyond)."""
    if tags > MAX_TAGS_PER_IMAGE:
        raise TooManyTags(f"An image may carry at most {MAX_TAGS_PER_IMAGE} tags.")
    if properties > MAX_PROPERTIES_PER_IMAGE:
        raise TooManyProperties(f"An image may carry at most {MAX_PROPERTIES_PER_IMAGE} custom properties.")


def check_visibility_change(caller: Identity, visibility: object) -> None:
    """Only admins may publish an image to every tenant (Glance's publicize_image rule)."""
    if visibility == "public" and not caller.is_admin:
        raise Forbidden("Only an administrator may make an image public.")


def check_owner_change(caller: Identity, owner: object) -> None:
    """A tenant cannot hand an image to another project; every image has an owner to charge."""
    if owner is not None and not str(owner).strip():
        raise InvalidBody("owner may not be empty.")
    if owner is not None and owner != caller.tenant_id and not caller.is_admin:
        raise Forbidden("You are not permitted to create or move images owned by another project.")


class ImageService:
    """The image records of the Glance API; location status is handled by the lifecycle."""

    def __init__(self, db: Session, stores: StoreRegistry, clock: Clock) -> None:
        self._db, self._stores, self._clock = db, stores, clock

    def _visible(self, caller: Identity) -> ColumnElement[bool]:
        scope = true() if caller.is_admin else Image.owner == caller.tenant_id
        return and_(scope, Image.status.not_in(HIDDEN_IMAGE_STATUSES))

    def get(self, caller: Identity, image_id: uuid.UUID, *, for_update: bool = False) -> Image:
        """The image if the caller may see it; another tenant's image is indistinguishable from none (404)."""
        query = select(Image).where(Image.id == image_id, self._visible(caller))
        if for_update:
            query = query.with_for_update()
        image = self._db.scalar(query)
        if image is None:
            raise ImageNotFound("No image found with this id.")
        return image

    def create(self, caller: Identity, request: ImageCreate) -> Image:
        """A new queued image owned by the caller's project (or the owner an admin names)."""
        check_owner_change(caller, request.attributes.get("owner"))
        check_visibility_change(caller, request.attributes.get("visibility"))
        image_id = request.image_id or uuid.uuid4()
        if self._db.get(Image, image_id) is not None:
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
        self._db.add(image)
        self._db.flush()
        return image

    def list_page(self, caller: Identity, query: ImageQuery) -> tuple[Sequence[Image], str | None]:
        """One page of the caller's images and the marker of the next page (None on the last page)."""
        statement = select(Image).where(self._visible(caller), *self._filters(query))
        keys = [(SORT_COLUMNS[key.name], key.descending) for key in query.sort]
        if "id" not in {key.name for key in query.sort}:
            keys.append((Image.id, query.sort[-1].descending))
        if query.marker is not None:
            statement = statement.where(self._after_marker(caller, query.marker, keys))
        statement = statement.order_by(*(column.desc() if desc else column.asc() for column, desc in keys))
        images = self._db.scalars(statement.limit(query.limit + 1)).all()
        if len(images) > query.limit:
            return images[: query.limit], str(images[query.limit - 1].id)
        return images, None

    def _filters(self, query: ImageQuery) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = [Image.os_hidden.is_(query.os_hidden)]
        for name, values in query.equal_filters.items():
            if name == "id":
                filters.append(Image.id.in_(_uuids(values)))
            else:
                filters.append(IN_FILTER_COLUMNS[name].in_(values))
        for tag in query.tags:
            filters.append(exists().where(ImageTag.image_id == Image.id, ImageTag.value == tag))
        for name, value in query.properties.items():
            filters.append(
                exists().where(
                    ImageProperty.image_id == Image.id, ImageProperty.name == name, ImageProperty.value == value
                )
            )
        if query.size_min is not None:
            filters.append(Image.size >= query.size_min)
        if query.size_max is not None:
            filters.append(Image.size <= query.size_max)
        if query.protected is not None:
            filters.append(Image.protected.is_(query.protected))
        return filters

    def _after_marker(
        self, caller: Identity, marker: uuid.UUID, keys: list[tuple[ColumnElement[object], bool]]
    ) -> ColumnElement[bool]:
        """Keyset paging: rows strictly after the marker in the sort order, so pages stay cheap at any depth."""
        values = self._db.execute(
            select(*(column for column, _ in keys)).where(Image.id == marker, self._visible(caller))
        ).first()
        if values is None:
            raise InvalidMarker("The marker does not name an image in this listing.")
        clauses = []
        for index, (column, descending) in enumerate(keys):
            equal_before = [keys[j][0] == values[j] for j in range(index)]
            beyond = column < values[index] if descending else column > values[index]
            clauses.append(and_(*equal_before, beyond))
        first_column, first_descending = keys[0]
        # A redundant bound on the first key lets the database use its index range.
        bound = first_column <= values[0] if first_descending else first_column >= values[0]
        return and_(bound, or_(*clauses) if clauses else false())

    def apply_patch(self, caller: Identity, image_id: uuid.UUID, changes: list[PatchOperation]) -> Image:
        """Apply Glance json-patch changes to the image's editable attributes and properties."""
        image = self.get(caller, image_id)
        document = self._editable_document(image)
        operations = []
        for change in changes:
            if change.op == "remove" and change.name in EDITABLE_BASE:
                raise Forbidden(f"Property {change.name} may not be removed.")
            path = "/" + change.name.replace("~", "~0").replace("/", "~1")
            operations.append({"op": change.op, "path": path, "value": change.value})
        try:
            patched = jsonpatch.apply_patch(document, operations)
        except jsonpatch.JsonPatchConflict as exc:
            raise PropertyNotFound("The property to change does not exist.") from exc
        validate_image_document(patched)
        check_counts(len(set(patched["tags"])), len(patched) - len(EDITABLE_BASE))  # type: ignore[arg-type]
        if patched["owner"] is None:
            raise InvalidBody("owner may not be removed or null: every image has an owner.")
        check_owner_change(caller, patched["owner"])
        if patched["visibility"] != document["visibility"]:
            check_visibility_change(caller, patched["visibility"])
        self._write_document(image, patched)
        return image

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

    def add_tag(self, caller: Identity, image_id: uuid.UUID, tag: str) -> None:
        """Tag the image; tagging twice is harmless, as in Glance."""
        image = self.get(caller, image_id)
        if tag in {existing.value for existing in image.tags}:
            return
        check_counts(len(image.tags) + 1, 0)
        image.tags.append(ImageTag(value=tag))
        image.updated_at = self._clock.now()
        self._db.flush()

    def remove_tag(self, caller: Identity, image_id: uuid.UUID, tag: str) -> None:
        """Untag the image; 404 if it does not carry the tag."""
        image = self.get(caller, image_id)
        kept = [existing for existing in image.tags if existing.value != tag]
        if len(kept) == len(image.tags):
            raise TagNotFound("The image has no such tag.")
        image.tags = kept
        image.updated_at = self._clock.now()
        self._db.flush()

    def delete(self, caller: Identity, image_id: uuid.UUID) -> None:
        """Delete the image and its data now (delayed delete and the scrubber come with the lifecycle)."""
        image = self.get(caller, image_id, for_update=True)
        if image.protected:
            raise ImageProtected("Image is protected and cannot be deleted.")
        now = self._clock.now()
        for location in image.active_locations:
            try:
                self._stores[location.store].delete(location.url)
            except StoreError as exc:
                raise StoreUnavailable("The store could not delete the image data; nothing was changed.") from exc
            location.status, location.updated_at, location.deleted_at = LocationStatus.DELETED, now, now
        image.status, image.updated_at = ImageStatus.DELETED, now
        self._db.flush()


def _set_attribute(image: Image, name: str, value: object) -> None:
    setattr(image, name, Visibility(value) if name == "visibility" else value)


def _uuids(values: Sequence[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(value) for value in values]
    except ValueError as exc:
        raise InvalidQueryParameter("The id filter takes image ids.") from exc
