"""Read-only views of images for GET and list: one statement per image or page.

Writes go through ImageService and the ORM; reads, the hot path of the API, select the image columns
with their properties, tags and (when shown) active locations aggregated as JSON, so a page costs one
round trip whatever its size, and location status stays in SQL, never reaching a response.

Statements are built once per shape (the caller's kind, the sort, which filters, a marker or not) with
every value a bound parameter, so a request pays neither for building one nor for SQLAlchemy's cache
key of a fresh one: at a page's cost, both were more than the database's own work.
"""

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    Subquery,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    union,
)
from sqlalchemy.orm import Session

from locations.models import (
    HIDDEN_IMAGE_STATUSES,
    Image,
    ImageMember,
    ImageProperty,
    ImageTag,
    Location,
    LocationStatus,
    Visibility,
)
from locations.query_schemas import ImageQuery
from locations.services.image_policy import authorize_image, image_target
from locations.services.sqljson import json_document, json_rows
from locquota.crypto import PLAINTEXT, UrlNotReadableError, UrlVault
from locquota.db import UNPREPARED, reading
from locquota.errors import ImageNotFound, InvalidMarker, InvalidQueryParameter
from locquota.identity import Identity
from metrics.instruments import LOCATION_DECRYPT_ERRORS

log = logging.getLogger(__name__)

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
IMAGE_COLUMNS = tuple(Image.__table__.columns)
IMAGE_KEYS = tuple(column.key for column in IMAGE_COLUMNS)
# Distinct shapes of list statements kept built; a shape is a handful of small values, so this bounds memory
# against callers that send every combination of filters.
PAGE_SHAPES_KEPT = 512
# The filters' part of a list statement's shape: os_hidden, the equality filters' names, the number of tag
# and of property filters, whether size, size_min and size_max are given, protected, the other columns' filters.
FilterShape = tuple[bool, tuple[str, ...], int, int, bool, bool, bool, bool | None, tuple[tuple[str, str], ...]]
COLUMN_COMPARISONS = {"eq": "__eq__", "neq": "__ne__", "gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}


@dataclass(frozen=True, slots=True)
class ImageView:
    """What the API shows of an image: its attributes, properties, tags and active locations, in order."""

    id: uuid.UUID
    name: str | None
    status: str
    visibility: str
    owner: str
    size: int | None
    virtual_size: int | None
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    disk_format: str | None
    container_format: str | None
    min_disk: int
    min_ram: int
    protected: bool
    os_hidden: bool
    created_at: datetime
    updated_at: datetime
    properties: dict[str, str]
    tags: list[str]
    locations: list[tuple[str, dict[str, object]]]
    stores: list[str] = field(default_factory=list)  # of its active locations, in their order (multi-store)

    @classmethod
    def from_record(cls, image: Image, vault: UrlVault = PLAINTEXT, *, with_locations: bool = True) -> "ImageView":
        """The view of an ORM image just written (create, patch), without another query."""
        stored = [(loc.id, loc.url, loc.location_metadata) for loc in image.active_locations] if with_locations else []
        return cls(
            **{column.key: getattr(image, column.key) for column in IMAGE_COLUMNS},
            properties={prop.name: prop.value for prop in image.properties},
            tags=sorted(tag.value for tag in image.tags),
            locations=open_locations(vault, stored),
            stores=_in_order((loc.id, loc.store) for loc in image.active_locations),
        )

    @classmethod
    def from_row(
        cls, row: Row[tuple[object, ...]], vault: UrlVault = PLAINTEXT, *, with_locations: bool, with_stores: bool
    ) -> "ImageView":
        """The view of a row selected with view_columns(with_locations=, with_stores=); sealed URLs are opened here.

        By position (the image's columns, then its collections in view_columns' order): looking up a
        RowMapping by name, and missing names through its KeyError, cost a page more than its JSON.
        """
        image = dict(zip(IMAGE_KEYS, row, strict=False))
        properties, tags, *collections = row[len(IMAGE_KEYS) :]
        locations = collections.pop(0) if with_locations else None
        stores = collections.pop(0) if with_stores else None
        return cls(
            **image,  # type: ignore[arg-type]
            properties=dict(properties or []),
            tags=sorted(tag for (tag,) in tags or []),
            locations=open_locations(vault, sorted(locations or [], key=lambda entry: entry[0])),
            stores=_in_order(stores or []),
        )


def _in_order(stores: Iterable[tuple[int, str]]) -> list[str]:
    """Store names of (location id, store) pairs, by location id, each once."""
    return list(dict.fromkeys(store for _, store in sorted(stores)))


def open_locations(
    vault: UrlVault, stored: Iterable[tuple[int, str, dict[str, object] | None]]
) -> list[tuple[str, dict[str, object]]]:
    """(url, metadata) of each (id, stored url, metadata); one whose sealed URL no key opens is left out.

    A tampered row is logged (its id, never its URL) and counted: the rest of the image or page still shows.
    """
    opened = []
    for location_id, url, metadata in stored:
        try:
            opened.append((vault.open(url), metadata or {}))
        except UrlNotReadableError:
            LOCATION_DECRYPT_ERRORS.labels("api").inc()
            log.error("location %s: its sealed URL cannot be opened (tampered, or its key is missing)", location_id)
    return opened


def visible_to(caller: Identity) -> ColumnElement[bool]:
    """Images the caller may see (Glance's is_image_visible), never pending_delete or deleted ones.

    Its own, public and community images, and shared images it is a member of whatever its answer;
    an admin sees every image. Another project's private image is as missing as an image that is not.
    """
    return _visibility(is_admin=caller.is_admin, tenant=caller.tenant_id)


def _visibility(*, is_admin: bool, tenant: object) -> ColumnElement[bool]:
    """visible_to for an admin or for the tenant `tenant` (a value, or a bound parameter of a built statement)."""
    shown = Image.status.not_in(HIDDEN_IMAGE_STATUSES)
    if is_admin:
        return shown
    membership = exists().where(ImageMember.image_id == Image.id, ImageMember.member == tenant)
    return and_(
        shown,
        or_(
            Image.owner == tenant,
            Image.visibility.in_((Visibility.PUBLIC, Visibility.COMMUNITY)),
            and_(Image.visibility == Visibility.SHARED, membership),
        ),
    )


def view_columns(*, with_locations: bool, with_stores: bool = False) -> list[ColumnElement[object]]:
    """The image columns plus its collections as JSON, each a correlated subquery on an indexed key."""
    properties = select(json_rows(ImageProperty.name, ImageProperty.value)).where(ImageProperty.image_id == Image.id)
    tags = select(json_rows(ImageTag.value)).where(ImageTag.image_id == Image.id)
    columns = [
        *IMAGE_COLUMNS,
        properties.scalar_subquery().label("properties_json"),
        tags.scalar_subquery().label("tags_json"),
    ]
    if with_locations:
        locations = select(json_rows(Location.id, Location.url, json_document(Location.location_metadata))).where(
            Location.image_id == Image.id, Location.status == LocationStatus.ACTIVE
        )
        columns.append(locations.scalar_subquery().label("locations_json"))
    if with_stores:  # Glance's `stores` attribute, shown with multi-store only
        stores = select(json_rows(Location.id, Location.store)).where(
            Location.image_id == Image.id, Location.status == LocationStatus.ACTIVE
        )
        columns.append(stores.scalar_subquery().label("stores_json"))
    return columns


# Built once: constructing the statement and its subqueries on every request cost more than running it.
VIEW_SELECTS = {
    (shown, stores): select(*view_columns(with_locations=shown, with_stores=stores))
    for shown in (False, True)
    for stores in (False, True)
}
# The values of the built statements, bound at execution.
TENANT = bindparam("tenant_id", type_=Image.owner.type)
PAGE_ROWS = bindparam("page_rows", type_=Integer())  # the page size plus one, which tells whether more follow


@cache
def _show_statement(select_key: tuple[bool, bool], is_admin: bool) -> Select[tuple[object, ...]]:
    """One image by primary key; psycopg may prepare it: no value can make another plan better than pk_images."""
    image_id = bindparam("image_id", type_=Image.id.type)
    return VIEW_SELECTS[select_key].where(Image.id == image_id, _visibility(is_admin=is_admin, tenant=TENANT))


@cache
def _marker_statement(sort: tuple[tuple[str, bool], ...], is_admin: bool) -> Select[tuple[object, ...]]:
    """A marker's sort keys by primary key; preparable like _show_statement."""
    keys = _sort_keys_of(sort)
    marker = bindparam("marker", type_=Image.id.type)
    return select(*(column for column, _ in keys)).where(
        Image.id == marker, _visibility(is_admin=is_admin, tenant=TENANT)
    )


class ImageCatalog:
    """Reads images as the API shows them."""

    def __init__(
        self, db: Session, *, with_locations: bool, with_stores: bool = False, vault: UrlVault = PLAINTEXT
    ) -> None:
        self._db, self._with_locations, self._with_stores, self._vault = db, with_locations, with_stores, vault

    def view_of(self, image: Image) -> ImageView:
        """The view of an image just written through the ORM (create, patch, restore)."""
        return ImageView.from_record(image, self._vault, with_locations=self._with_locations)

    def show(self, caller: Identity, image_id: uuid.UUID) -> ImageView:
        """One image, or 404 (also for another tenant's image: existence does not leak)."""
        statement = _show_statement((self._with_locations, self._with_stores), caller.is_admin)
        with reading(self._db) as connection:
            row = connection.execute(statement, {"image_id": image_id, "tenant_id": caller.tenant_id}).first()
        if row is None:
            raise ImageNotFound("No image found with this id.")
        view = ImageView.from_row(row, self._vault, with_locations=self._with_locations, with_stores=self._with_stores)
        authorize_image(caller, "get_image", image_target(view.owner, view.visibility))
        return view

    def page(self, caller: Identity, query: ImageQuery) -> tuple[list[ImageView], str | None]:
        """One page and the marker of the next one (None on the last page), in one statement.

        A marker's sort keys are read first, by primary key.

        An admin's page walks every image in order. A tenant's is the union of one short walk per source
        of images it sees (its own, public, community, shared with it), each down its own index in the
        list's order and cut at the page size, so a page costs the same at 1k or 1M visible images.
        """
        caller.authorize("get_images")
        sort = _sort_names(query)
        params: dict[str, object] = {"tenant_id": caller.tenant_id, "page_rows": query.limit + 1}
        shape = PageShape(
            select_key=(self._with_locations, self._with_stores),
            is_admin=caller.is_admin,
            pin_by_range=self._db.get_bind().dialect.name == "postgresql",
            sort=sort,
            has_marker=query.marker is not None,
            filters=_filter_shape(query, params),
            visibilities=tuple(sorted(query.visibilities)) if query.visibilities is not None else None,
            member_statuses=query.member_statuses,
        )
        with reading(self._db) as connection:
            if query.marker is not None:
                after = self._marker_values(connection, caller, query.marker, sort)
                params.update({f"after_{index}": value for index, value in enumerate(after)})
            rows = connection.execute(_page_statement(shape), params).all()
        views = [
            ImageView.from_row(row, self._vault, with_locations=self._with_locations, with_stores=self._with_stores)
            for row in rows[: query.limit]
        ]
        return views, (str(views[-1].id) if len(rows) > query.limit else None)

    def _marker_values(
        self, connection: Connection, caller: Identity, marker: uuid.UUID, sort: tuple[tuple[str, bool], ...]
    ) -> Row[tuple[object, ...]]:
        """The marker image's sort keys; a marker the caller cannot see is refused (it names nothing here)."""
        statement = _marker_statement(sort, caller.is_admin)
        values = connection.execute(statement, {"marker": marker, "tenant_id": caller.tenant_id}).first()
        if values is None:
            raise InvalidMarker("The marker does not name an image in this listing.")
        return values


@dataclass(frozen=True, slots=True)
class PageShape:
    """What decides a list statement's SQL; the values it compares with are bound at execution."""

    select_key: tuple[bool, bool]  # (with locations, with stores)
    is_admin: bool
    pin_by_range: bool
    sort: tuple[tuple[str, bool], ...]  # (sort key, descending), tie-breakers included
    has_marker: bool
    filters: FilterShape
    visibilities: tuple[str, ...] | None
    member_statuses: tuple[str, ...]


@lru_cache(maxsize=PAGE_SHAPES_KEPT)
def _page_statement(shape: PageShape) -> Select[tuple[object, ...]]:
    """One page of a list of this shape: parameters tenant_id, page_rows, after_<i> and the filters' own."""
    keys = _sort_keys_of(shape.sort)
    after = [bindparam(f"after_{index}", type_=column.type) for index, (column, _) in enumerate(keys)]
    conditions = [Image.status.not_in(HIDDEN_IMAGE_STATUSES), *_filters(shape.filters)]
    visibilities = frozenset(shape.visibilities) if shape.visibilities is not None else None
    if visibilities is not None:
        conditions.append(Image.visibility.in_(shape.visibilities))
    select_all = VIEW_SELECTS[shape.select_key]
    if shape.is_admin:
        if visibilities is None:  # Glance leaves other projects' community images out by default
            conditions.append(or_(Image.owner == TENANT, Image.visibility != Visibility.COMMUNITY))
        statement = select_all.where(*conditions)
        if shape.has_marker:
            statement = statement.where(_after(keys, after))
        order = _order(keys)
    else:
        listed = _visible_page(
            visibilities,
            shape.member_statuses,
            keys,
            after if shape.has_marker else None,
            conditions,
            pin_by_range=shape.pin_by_range,
        )
        statement = select_all.join(listed, Image.id == listed.c.id)
        order = _order([(listed.c[f"k{index}"], descending) for index, (_, descending) in enumerate(keys)])
    # Never prepared: a walk's plan is chosen for the tenant and the marker at hand (see _pin), not generic.
    return statement.order_by(*order).limit(PAGE_ROWS).execution_options(**{UNPREPARED: True})


Keys = Sequence[tuple[ColumnElement[object], bool]]


def _sort_names(query: ImageQuery) -> tuple[tuple[str, bool], ...]:
    """The sort keys, then Glance's tie-breakers created_at and id where missing.

    As in Glance, the tie-breakers take the direction of the one key given, or descending after several.
    """
    keys = [(key.name, key.descending) for key in query.sort]
    tie_direction = query.sort[0].descending if len(query.sort) == 1 else True
    named = {key.name for key in query.sort}
    keys.extend((name, tie_direction) for name in ("created_at", "id") if name not in named)
    return tuple(keys)


def _sort_keys_of(sort: tuple[tuple[str, bool], ...]) -> list[tuple[ColumnElement[object], bool]]:
    return [(SORT_COLUMNS[name], descending) for name, descending in sort]


def _order(keys: Keys) -> list[ColumnElement[object]]:
    return [column.desc() if descending else column.asc() for column, descending in keys]


def _after(keys: Keys, values: Sequence[object]) -> ColumnElement[bool]:
    """Keyset paging: rows strictly after the marker's values in the sort order, so deep pages stay cheap."""
    clauses = []
    for index, (column, descending) in enumerate(keys):
        equal_before = [keys[j][0] == values[j] for j in range(index)]
        beyond = column < values[index] if descending else column > values[index]
        clauses.append(and_(*equal_before, beyond))
    first_column, first_descending = keys[0]
    # A redundant bound on the first key lets the database use its index range.
    bound = first_column <= values[0] if first_descending else first_column >= values[0]
    return and_(bound, or_(*clauses))


def _visible_page(
    asked: frozenset[str] | None,
    member_statuses: tuple[str, ...],
    keys: Keys,
    after: Sequence[object] | None,
    conditions: list[ColumnElement[bool]],
    *,
    pin_by_range: bool,
) -> Subquery:
    """(id, k0..kn) of at most a page and one from each source of images the tenant sees, in Glance's terms.

    Own images walk ix_images_owner_created_at_id; public and community images (asked for by visibility,
    community only explicitly) ix_images_visibility_created_at_id; shared images, one walk per member
    status asked for, ix_image_members_member_status_created. The union keeps each image once.
    """
    pinned: list[tuple[ColumnElement[str], object]] = [(Image.owner, TENANT)]
    for visibility in (Visibility.PUBLIC, Visibility.COMMUNITY):
        if (asked is None and visibility is Visibility.PUBLIC) or (asked is not None and visibility in asked):
            pinned.append((Image.visibility, visibility.value))
    sources = [_walk(keys, after, _pin(column, value, keys, pin_by_range), conditions) for column, value in pinned]
    if asked is None or Visibility.SHARED in asked:
        member_keys = _member_keys(keys)
        for status in member_statuses:
            membership = [
                *conditions,
                ImageMember.member == TENANT,
                ImageMember.status == status,
                Image.visibility == Visibility.SHARED,
            ]
            sources.append(_walk(member_keys, after, ([], []), membership, through_members=True))
    walks = [select(source.subquery()) for source in sources]  # SQLite: LIMIT only inside a subquery
    # With every source's page cut at limit + 1 rows, the union holds the merged page's limit + 1 rows.
    return (union(*walks) if len(walks) > 1 else walks[0]).subquery("listed")


Pin = tuple[list[ColumnElement[bool]], list[ColumnElement[object]]]  # conditions, leading ORDER BY columns


def _pin(column: ColumnElement[str], value: object, keys: Keys, by_range: bool) -> Pin:
    """A walk restricted to one value of an index's leading column, so that index alone yields the order.

    SQLite walks the index in order from an equality. PostgreSQL, given an equality, drops the column from
    the ORDER BY and may walk the all-tenants index (created_at, id) instead, filtering out every newer
    row of other owners or visibilities; a range plus the column first in the ORDER BY leaves it one index.
    """
    if not by_range:
        return [column == value], []
    return [column >= value, column <= value], [column.desc() if keys[0][1] else column.asc()]


def _walk(
    keys: Keys,
    after: Sequence[object] | None,
    pin: Pin,
    source: list[ColumnElement[bool]],
    *,
    through_members: bool = False,
) -> Select[tuple[object, ...]]:
    statement = select(Image.id.label("id"), *(column.label(f"k{index}") for index, (column, _) in enumerate(keys)))
    if through_members:
        statement = statement.select_from(ImageMember).join(Image, Image.id == ImageMember.image_id)
    pinned, leading = pin
    statement = statement.where(*source, *pinned)
    if after is not None:
        statement = statement.where(_after(keys, after))
    return statement.order_by(*leading, *_order(keys)).limit(PAGE_ROWS)


def _member_keys(keys: Keys) -> Keys:
    """The default order (created_at, id) read from the membership row, whose index holds it; else the image's."""
    if len(keys) == 2 and keys[0][0] is Image.created_at and keys[1][0] is Image.id:
        return [(ImageMember.image_created_at, keys[0][1]), (ImageMember.image_id, keys[1][1])]
    return keys


def _filter_shape(query: ImageQuery, params: dict[str, object]) -> FilterShape:
    """The filters' part of a list statement's shape; their values go into params, under _filters' names."""
    for name, values in query.equal_filters.items():
        params[f"in_{name}"] = _uuids(values) if name == "id" else list(values)
    for index, tag in enumerate(query.tags):
        params[f"tag_{index}"] = tag
    for index, (name, value) in enumerate(query.properties.items()):
        params[f"property_name_{index}"], params[f"property_value_{index}"] = name, value
    if query.size is not None:
        params["size"] = query.size
    if query.size_min is not None:
        params["size_min"] = query.size_min
    if query.size_max is not None:
        params["size_max"] = query.size_max
    for name, operator, value in query.column_filters:
        params[f"column_{name}_{operator}"] = value
    return (
        query.os_hidden,
        tuple(query.equal_filters),
        len(query.tags),
        len(query.properties),
        query.size is not None,
        query.size_min is not None,
        query.size_max is not None,
        query.protected,
        tuple((name, operator) for name, operator, _ in query.column_filters),
    )


def _filters(shape: FilterShape) -> list[ColumnElement[bool]]:
    os_hidden, equal_names, tags, properties, size, size_min, size_max, protected, columns = shape
    filters: list[ColumnElement[bool]] = [Image.os_hidden.is_(os_hidden)]
    for name in equal_names:
        column = Image.id if name == "id" else IN_FILTER_COLUMNS[name]
        filters.append(column.in_(bindparam(f"in_{name}", type_=column.type, expanding=True)))
    for index in range(tags):
        tag = bindparam(f"tag_{index}", type_=ImageTag.value.type)
        filters.append(exists().where(ImageTag.image_id == Image.id, ImageTag.value == tag))
    for index in range(properties):
        name = bindparam(f"property_name_{index}", type_=ImageProperty.name.type)
        value = bindparam(f"property_value_{index}", type_=ImageProperty.value.type)
        filters.append(
            exists().where(ImageProperty.image_id == Image.id, ImageProperty.name == name, ImageProperty.value == value)
        )
    # On the bare column (no coalesce, unlike the size sort key): images without data never match, as in Glance,
    # and an index on size could serve the condition.
    if size:
        filters.append(Image.size == bindparam("size", type_=Image.size.type))
    if size_min:
        filters.append(Image.size >= bindparam("size_min", type_=Image.size.type))
    if size_max:
        filters.append(Image.size <= bindparam("size_max", type_=Image.size.type))
    if protected is not None:
        filters.append(Image.protected.is_(protected))
    for name, operator in columns:
        column = getattr(Image, name)
        value = bindparam(f"column_{name}_{operator}", type_=column.type)
        filters.append(getattr(column, COLUMN_COMPARISONS[operator])(value))
    return filters


def _uuids(values: Sequence[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(value) for value in values]
    except ValueError as exc:
        raise InvalidQueryParameter("The id filter takes image ids.") from exc
