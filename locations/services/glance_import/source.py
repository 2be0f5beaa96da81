"""Reading Glance's database, never writing it: one read-only transaction, keyset batches of images.

Each batch comes with its images' locations, properties, tags and members, read with SQLAlchemy Core, so memory
stays flat however large the database. Values are taken as the driver gives them and made sense of here.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Self
from urllib.parse import quote

from sqlalchemy import Column, Engine, MetaData, String, Table, case, create_engine, func, inspect, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.types import NullType

from locations.services.glance_import.report import MAX_METADATA_CHARS, describe_error

IMAGE_COLUMNS = (
    "id", "name", "size", "status", "created_at", "updated_at", "deleted_at", "deleted", "disk_format",
    "container_format", "checksum", "owner", "min_disk", "min_ram", "protected", "virtual_size", "visibility",
    "is_public", "os_hidden", "os_hash_algo", "os_hash_value",
)  # fmt: skip
LOCATION_COLUMNS = (
    "id",
    "image_id",
    "value",
    "created_at",
    "updated_at",
    "deleted_at",
    "deleted",
    "meta_data",
    "status",
)
PROPERTY_COLUMNS = ("image_id", "name", "value", "deleted")
TAG_COLUMNS = ("image_id", "value", "deleted")
MEMBER_COLUMNS = ("id", "image_id", "member", "status", "created_at", "updated_at", "deleted")
# Larger values are not read at all (their length is): a hostile row cannot blow up the importer's memory.
MAX_URL_CHARS = 4096
MAX_MEMBER_CHARS = 255  # Glance's image_members.member, and locquota's
# image_members.status came in Grizzly, NULL on the rows it found until Juno's migration made them pending: a
# missing or NULL status is what Glance's own upgrades make of it.
MEMBER_STATUS_UNSET = "pending"


class GlanceSourceError(Exception):
    """The Glance database cannot be read (bad URL, unreachable, not a Glance schema); nothing was written."""


@dataclass(slots=True)
class GlanceLocation:
    """One image_locations row as read (url and meta_data are None when too long to read)."""

    id: int
    url: str | None
    url_chars: int
    status: str | None
    is_deleted: bool
    meta_text: str | None
    meta_chars: int
    created_at: datetime | None
    updated_at: datetime | None
    deleted_at: datetime | None


@dataclass(slots=True)
class GlanceMember:
    """One image_members row as read (member is None when longer than MAX_MEMBER_CHARS: not read)."""

    id: int
    member: str | None
    member_chars: int
    status: str
    is_deleted: bool
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(slots=True)
class GlanceImage:
    """One images row with its locations and members, and its properties and tags as (name, value, deleted)."""

    row: dict[str, object]
    locations: list[GlanceLocation] = field(default_factory=list)
    properties: list[tuple[object, object, bool]] = field(default_factory=list)
    tags: list[tuple[object, bool]] = field(default_factory=list)
    members: list[GlanceMember] = field(default_factory=list)


def _source_engine(url: str) -> Engine:
    """A read-only engine on Glance's database; mysql:// uses PyMySQL, SQLite is opened read-only."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise GlanceSourceError("not a database URL (expected sqlite:///, postgresql:// or mysql://)") from exc
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    options: dict[str, object] = {}
    if backend in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{backend}+pymysql")
        # A consistent snapshot across every batch, and a session that cannot write.
        options = {
            "isolation_level": "REPEATABLE READ",
            "connect_args": {"init_command": "SET SESSION TRANSACTION READ ONLY"},
        }
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg") if driver in ("psycopg2", "psycopg", "") else parsed
        options = {
            "isolation_level": "REPEATABLE READ",
            "connect_args": {"options": "-c default_transaction_read_only=on"},
        }
    elif backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise GlanceSourceError("a SQLite Glance database must be a file: sqlite:////path/to/glance.sqlite")
        # mode=ro: never written, and a mistyped path fails instead of creating an empty database.
        parsed = parsed.set(database=f"file:{quote(parsed.database)}", query={"mode": "ro", "uri": "true"})
    else:
        raise GlanceSourceError(f"unsupported database {backend!r} (expected sqlite, postgresql or mysql)")
    try:
        return create_engine(parsed, **options)
    except (NoSuchModuleError, ImportError) as exc:
        raise GlanceSourceError(f"no driver for {parsed.drivername}") from exc


class GlanceSource:
    """Glance's images, locations, properties, tags and members, read in batches over one connection."""

    def __init__(self, url: str) -> None:
        self.display_url = _display_url(url)
        self._engine = _source_engine(url)
        try:
            self._connection: Connection = self._engine.connect()
            present = self._columns()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise GlanceSourceError(f"{self.display_url}: cannot read it ({describe_error(exc)})") from exc
        for table, needed in (("images", ("id", "status", "owner")), ("image_locations", ("id", "image_id", "value"))):
            missing = [name for name in needed if name not in present.get(table, set())]
            if missing:
                self.close()
                raise GlanceSourceError(f"{self.display_url}: not a Glance database (no {table}.{missing[0]})")
        self.has_location_status = "status" in present["image_locations"]
        self._images = _table("images", IMAGE_COLUMNS, present["images"])
        self._locations = _table("image_locations", LOCATION_COLUMNS, present["image_locations"])
        self._properties = _table("image_properties", PROPERTY_COLUMNS, present.get("image_properties", set()))
        self._tags = _table("image_tags", TAG_COLUMNS, present.get("image_tags", set()))
        self._members = _table("image_members", MEMBER_COLUMNS, present.get("image_members", set()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the read transaction and release the connection."""
        self._connection.close()
        self._engine.dispose()

    def _columns(self) -> dict[str, set[str]]:
        inspector = inspect(self._connection)
        tables = set(inspector.get_table_names())
        return {
            name: {column["name"] for column in inspector.get_columns(name)}
            for name in ("images", "image_locations", "image_properties", "image_tags", "image_members")
            if name in tables
        }

    def count_images(self) -> int:
        """How many image rows Glance has (for the progress bar)."""
        return int(self._connection.scalar(select(func.count()).select_from(self._images)) or 0)

    def count_without_id(self) -> int:
        """Image rows whose id is NULL (SQLite admits it in a text primary key): reported, never read."""
        return int(self._connection.scalar(select(func.count()).where(self._images.c.id.is_(None))) or 0)

    def count_owners(self) -> int:
        """How many tenants own Glance images (for the usage progress bar)."""
        owner = self._images.c.owner
        return int(self._connection.scalar(select(func.count(owner.distinct()))) or 0)

    def batches(self, batch_size: int) -> Iterator[list[GlanceImage]]:
        """Every image with its rows, in id order, batch_size images at a time (keyset: no OFFSET)."""
        images = self._images
        after: str | None = None
        while True:
            query = select(*images.c).where(images.c.id.is_not(None)).order_by(images.c.id).limit(batch_size)
            if after is not None:
                query = query.where(images.c.id > after)
            rows = [dict(row._mapping) for row in self._connection.execute(query)]
            if not rows:
                return
            after = rows[-1]["id"]
            by_id = {str(row["id"]): GlanceImage(row) for row in rows}
            self._attach(by_id)
            yield list(by_id.values())

    def _attach(self, by_id: dict[str, GlanceImage]) -> None:
        ids = list(by_id)
        # MySQL compares ids without case (or accents): a row may name its image otherwise than the images row
        # does. Case is folded; a row matching no image of the batch at all goes to a sink and is dropped.
        folded = {image_id.lower(): image for image_id, image in by_id.items()}
        unmatched = GlanceImage({})

        def owner_of(image_id: object) -> GlanceImage:
            return by_id.get(str(image_id)) or folded.get(str(image_id).lower(), unmatched)

        locations = self._locations
        url, meta = locations.c.value, locations.c.get("meta_data")
        columns = [
            locations.c.id,
            locations.c.image_id,
            case((func.length(url) <= MAX_URL_CHARS, url), else_=None).label("url"),
            func.length(url).label("url_chars"),
            *(
                locations.c[name]
                for name in ("status", "deleted", "created_at", "updated_at", "deleted_at")
                if name in locations.c
            ),
        ]
        if meta is not None:
            columns += [
                case((func.length(meta) <= MAX_METADATA_CHARS, meta), else_=None).label("meta_text"),
                func.length(meta).label("meta_chars"),
            ]
        query = select(*columns).where(locations.c.image_id.in_(ids)).order_by(locations.c.id)
        for row in self._connection.execute(query):
            values = row._mapping
            owner_of(row.image_id).locations.append(
                GlanceLocation(
                    id=int(row.id),
                    url=values["url"],
                    url_chars=int(values["url_chars"] or 0),
                    status=values.get("status"),
                    is_deleted=parse_flag(values.get("deleted")),
                    meta_text=values.get("meta_text"),
                    meta_chars=int(values.get("meta_chars") or 0),
                    created_at=parse_timestamp(values.get("created_at")),
                    updated_at=parse_timestamp(values.get("updated_at")),
                    deleted_at=parse_timestamp(values.get("deleted_at")),
                )
            )
        if {"image_id", "name"} <= set(self._properties.c.keys()):
            props = self._properties.c
            query = select(props.image_id, props.name, *(props[name] for name in ("value", "deleted") if name in props))
            for row in self._connection.execute(query.where(props.image_id.in_(ids))):
                values = row._mapping
                owner_of(row.image_id).properties.append(
                    (row.name, values.get("value"), parse_flag(values.get("deleted")))
                )
        if {"image_id", "value"} <= set(self._tags.c.keys()):
            tags = self._tags.c
            query = select(tags.image_id, tags.value, *(tags[name] for name in ("deleted",) if name in tags))
            for row in self._connection.execute(query.where(tags.image_id.in_(ids))):
                owner_of(row.image_id).tags.append((row.value, parse_flag(row._mapping.get("deleted"))))
        self._attach_members(ids, owner_of)

    def _attach_members(self, ids: list[str], owner_of: Callable[[object], GlanceImage]) -> None:
        """The batch's image_members rows, deleted ones too (counted), in id order; a long member is not read."""
        members = self._members.c
        if not {"id", "image_id", "member"} <= set(members.keys()):
            return  # no image_members table (a hand-made or trimmed database): nothing shared
        # Characters, not bytes: MySQL's length() counts bytes, SQLite has no char_length().
        chars = func.length if self._connection.dialect.name == "sqlite" else func.char_length
        columns = [
            members.id,
            members.image_id,
            case((chars(members.member) <= MAX_MEMBER_CHARS, members.member), else_=None).label("member"),
            chars(members.member).label("member_chars"),
            *(members[name] for name in ("status", "deleted", "created_at", "updated_at") if name in members),
        ]
        query = select(*columns).where(members.image_id.in_(ids)).order_by(members.id)
        for row in self._connection.execute(query):
            values, status = row._mapping, row._mapping.get("status")
            owner_of(row.image_id).members.append(
                GlanceMember(
                    id=int(row.id),
                    member=None if row.member is None else str(row.member),
                    member_chars=int(values["member_chars"] or 0),
                    status=MEMBER_STATUS_UNSET if status is None else str(status),
                    is_deleted=parse_flag(values.get("deleted")),
                    created_at=parse_timestamp(values.get("created_at")),
                    updated_at=parse_timestamp(values.get("updated_at")),
                )
            )

    def owners(self, batch_size: int) -> Iterator[list[str]]:
        """Every distinct image owner, in order, batch_size at a time: the tenants the import touched."""
        owner = self._images.c.owner
        after: str | None = None
        while True:
            query = select(owner).where(owner.is_not(None)).distinct().order_by(owner).limit(batch_size)
            if after is not None:
                query = query.where(owner > after)
            owners = [str(value) for value in self._connection.scalars(query)]
            if not owners:
                return
            yield owners
            after = owners[-1]


def _table(name: str, wanted: Iterable[str], present: set[str]) -> Table:
    """Glance's table with the columns this Glance has, untyped: values come as the driver gives them."""
    columns = [Column(column, String() if column in ("id", "image_id", "owner") else NullType()) for column in wanted]
    return Table(name, MetaData(), *(column for column in columns if column.name in present))


def _display_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a database URL>"


def parse_flag(value: object) -> bool:
    """A Glance flag column (deleted, protected, ...) as the driver gives it: bool, 0/1, or text such as 'true'."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes", "y")
    return bool(value)


def parse_timestamp(value: object) -> datetime | None:
    """A naive UTC datetime from what the driver gives (datetime, or SQLite's text); None if unreadable."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, str):
        try:
            return parse_timestamp(datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    return None


def parse_non_negative_int(value: object, maximum: int) -> int | None:
    """A non-negative integer up to maximum, or None (absent, or not such an integer: "1.5", -3, "big")."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    elif isinstance(value, float | Decimal) and math.isfinite(value) and value == int(value):
        number = int(value)
    else:
        return None
    return number if 0 <= number <= maximum else None
