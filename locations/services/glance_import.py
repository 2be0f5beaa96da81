"""`locquota import-glance`: images and locations from a Glance database (SQLite, PostgreSQL, MySQL/MariaDB).

Glance's rows are read with SQLAlchemy Core, in keyset batches of images (with their locations, properties and
tags), so memory stays flat however large the database. Each batch is mapped (`Planner`, pure), compared
with what locquota already holds, and written in one transaction. Images keep Glance's ids; locations are
found again by (image id, Glance's image_locations.id), so a re-run updates what changed and adds nothing twice.
Usage is not charged row by row: at the end every imported tenant is recounted and repaired, as `locquota
reconcile --fix` would. Nothing is ever written to Glance's database. docs/import.md is the operator's guide,
with every decision below explained.

Location status (SPEC section 8):

    image_locations.status exists (Glance since Juno)   kept as it is
    no status column (pre-Juno)                         from the image status, GLANCE_IMAGE_STATUSES below
    either, an active image whose only data is pending_delete (`glance-scrubber --restore` leaves that)
                                                        active again: the operator restored it
    pre-Juno, a row soft-deleted under a live image     pending_delete: it may still hold data, Glance no
                                                        longer served it, and the scrubber will settle it
"""

import json
import math
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Self
from urllib.parse import quote

from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    Select,
    String,
    Table,
    case,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from locations.models import (
    LIVE_LOCATION_STATUSES,
    Image,
    ImageProperty,
    ImageStatus,
    ImageTag,
    Location,
    LocationStatus,
    Visibility,
    url_digest,
)
from locations.services.lifecycle import image_counts
from locations.services.recount import recount
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.errors import LocquotaError, UnsupportedScheme
from locquota.scripting import UnitOfWork
from quota.models import Resource, UsageDrift
from quota.services.reconcile import Reconciler

# Glance image status -> (locquota image status, status of its locations where Glance has no location status).
# None: no data yet, so its locations are not imported as data. Statuses outside SPEC section 8's table:
# saving, uploading, importing -> queued: the upload (or the staged data, in Glance's staging area, not a
# store) does not move to locquota, and locquota accepts an upload only for a queued image;
# deactivated -> active: the data is there (locquota has no deactivation).
GLANCE_IMAGE_STATUSES: dict[str, tuple[ImageStatus, LocationStatus | None]] = {
    "queued": (ImageStatus.QUEUED, None),
    "saving": (ImageStatus.QUEUED, None),
    "uploading": (ImageStatus.QUEUED, None),
    "importing": (ImageStatus.QUEUED, None),
    "active": (ImageStatus.ACTIVE, LocationStatus.ACTIVE),
    "deactivated": (ImageStatus.ACTIVE, LocationStatus.ACTIVE),
    "pending_delete": (ImageStatus.PENDING_DELETE, LocationStatus.PENDING_DELETE),
    "killed": (ImageStatus.KILLED, LocationStatus.DELETED),
    "deleted": (ImageStatus.DELETED, LocationStatus.DELETED),
}
UNFINISHED_UPLOADS = frozenset({"saving", "uploading", "importing"})
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
# Larger values are not read at all (their length is): a hostile row cannot blow up the importer's memory.
MAX_METADATA_CHARS = 65536
MAX_URL_CHARS = 4096
MAX_INT32 = 2**31 - 1
MAX_BIGINT = 2**63 - 1
EXAMPLES_PER_FINDING = 10
FIRST_ANALYZE = 1000  # images written before the first ANALYZE of the tables the import fills
ANALYZED_TABLES = ("images", "image_properties", "image_tags", "locations")
MAX_EXAMPLE_CHARS = 240
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)@")


class GlanceSourceError(Exception):
    """The Glance database cannot be read (bad URL, unreachable, not a Glance schema); nothing was written."""


class TargetNotReadyError(Exception):
    """locquota's database lacks what the import needs (not migrated); nothing was written."""


class Finding(StrEnum):
    """Something the summary reports, with how many rows it concerned. The value is the summary's text."""

    # The image and everything of it is skipped.
    IMAGE_BAD_ID = "skipped: image id is not a UUID"
    IMAGE_NO_OWNER = "skipped: image has no owner (project)"
    IMAGE_UNKNOWN_STATUS = "skipped: unknown image status"
    IMAGE_VALUE_TOO_LONG = "skipped: a value is longer than locquota's column"
    IMAGE_WRITE_FAILED = "skipped: the database refused the image"
    # One location is skipped; its image is imported.
    LOCATION_DUPLICATE = "location skipped: same URL as another live location of the image (charged once)"
    LOCATION_URL_UNUSABLE = "location skipped: URL empty, too long or with a NUL character"
    # Imported, and worth a look.
    OUTSIDE_STORE = "flagged: URL outside every configured store (imported; locquota never deletes or serves it)"
    SCHEME_NOT_ENABLED = "flagged: URL scheme of no enabled store (imported; locquota never deletes or serves it)"
    URL_CREDENTIALS = "flagged: URL carries credentials (masked here, stored as is)"
    SHARED_URL = "flagged: URL also referenced by another image's location"
    METADATA_MALFORMED = "flagged: location metadata is not a JSON object (imported as {})"
    METADATA_TOO_LARGE = f"flagged: location metadata over {MAX_METADATA_CHARS} characters (imported as {{}})"
    SIZE_UNKNOWN = "flagged: image holds data but its size is NULL (its locations are charged 0 bytes)"
    SIZE_INVALID = "flagged: image size is not a non-negative integer (imported as NULL)"
    UNKNOWN_LOCATION_STATUS = "flagged: unknown location status (taken from the image status)"
    VISIBILITY_UNKNOWN = "flagged: unknown visibility (imported private)"
    TIMESTAMP_UNREADABLE = "flagged: image created_at missing or unreadable (the import's time, kept on re-runs)"
    PROPERTY_SKIPPED = "flagged: property or tag with an empty or too long name (not imported)"
    ACTIVE_WITHOUT_DATA = "flagged: active image without an active location"
    KEPT_DELETED = "flagged: location already deleted in locquota (kept deleted: deleted is final)"
    # Decisions applied, for the record.
    RESTORED = "noted: locations of an image restored by glance-scrubber --restore, made active"
    PRE_JUNO_REMOVED = "noted: pre-Juno location removed under a live image (deleted = 1), imported pending_delete"
    DEACTIVATED = "noted: deactivated image imported active"
    UPLOAD_ABANDONED = "noted: image in saving/uploading/importing imported queued (no data)"


def mask_url(url: str) -> str:
    """A URL fit to print: user:password@ masked, cut short. Never print or log a location URL without it."""
    masked = USERINFO.sub(r"\1***@", url) if "://" in url and "@" in url else url
    return masked if len(masked) <= MAX_EXAMPLE_CHARS else masked[:MAX_EXAMPLE_CHARS] + "..."


def has_credentials(url: str) -> bool:
    """Whether the URL has a user-info part (swift+https://user:key@..., s3://access:secret@...)."""
    return USERINFO.match(url) is not None


@dataclass
class Tally:
    """Counts and findings, with a few examples each; a batch's tally joins the report once it is committed."""

    counts: Counter[str] = field(default_factory=Counter)
    findings: Counter[Finding] = field(default_factory=Counter)
    examples: dict[Finding, list[str]] = field(default_factory=dict)

    def note(self, finding: Finding, example: str, count: int = 1) -> None:
        """Record a finding about count rows, keeping the first examples (which must hold no raw URL)."""
        self.findings[finding] += count
        kept = self.examples.setdefault(finding, [])
        if len(kept) < EXAMPLES_PER_FINDING:
            kept.append(example)

    def merge(self, other: "Tally") -> None:
        """Add another tally's counts and findings to this one."""
        self.counts.update(other.counts)
        for finding, count in other.findings.items():
            self.findings[finding] += count
            kept = self.examples.setdefault(finding, [])
            kept.extend(other.examples.get(finding, [])[: EXAMPLES_PER_FINDING - len(kept)])


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
class GlanceImage:
    """One images row with its locations, and its properties and tags as (name, value, deleted)."""

    row: dict[str, object]
    locations: list[GlanceLocation] = field(default_factory=list)
    properties: list[tuple[object, object, bool]] = field(default_factory=list)
    tags: list[tuple[object, bool]] = field(default_factory=list)


@dataclass(slots=True)
class PlannedLocation:
    """What one Glance location becomes: the locations row's values (bookkeeping by status)."""

    glance_id: int
    status: LocationStatus
    values: dict[str, object]
    label: str  # for examples: image id and Glance location id, never the URL


@dataclass(slots=True)
class PlannedImage:
    """What one Glance image becomes in locquota, and what the summary should say about it."""

    image_id: uuid.UUID
    owner: str
    glance_status: str
    values: dict[str, object]
    properties: dict[str, str]
    tags: set[str]
    locations: list[PlannedLocation]
    tally: Tally
    defaulted: tuple[str, ...] = ()  # timestamps Glance did not give: the import's time stands in
    no_data_locations: int = 0  # not imported: the image has no data (SPEC section 8)
    skipped_locations: int = 0  # not imported: duplicate or unusable URL


@dataclass(frozen=True, slots=True)
class TenantUsageLine:
    """A tenant's usage after the import (or, on a dry run, what Glance's rows would give)."""

    tenant_id: str
    image_size_total: int
    image_count_total: int


@dataclass
class ImportReport:
    """What the import did: counts by outcome and status, the findings, the time it took."""

    dry_run: bool
    has_location_status: bool
    tally: Tally = field(default_factory=Tally)
    tenants: int = 0
    seconds: float = 0.0

    def summary(self) -> list[str]:
        """The lines the command prints at the end."""
        counts = self.tally.counts
        images_read, locations_read = counts["images.read"], counts["locations.read"]
        rate = images_read / self.seconds if self.seconds else 0.0
        schema = (
            "image_locations.status present: location statuses kept"
            if self.has_location_status
            else "no image_locations.status (pre-Juno): location statuses from the image status"
        )
        written = "would be imported" if self.dry_run else "imported"
        lines = [
            f"summary{' (dry run: nothing written)' if self.dry_run else ''}",
            f"schema\t{schema}",
            f"images\t{images_read} read, {self._outcomes('images', written)}, {counts['images.skipped']} skipped",
            "image statuses\t" + self._by_prefix("image.status."),
            f"locations\t{locations_read} read, {self._outcomes('locations', written)},"
            f" {counts['locations.skipped']} skipped, {counts['locations.no_data']} not imported (no data)",
            "locations by status\t" + self._by_prefix("location.status."),
            f"tenants\t{self.tenants} ({'usage from Glance rows' if self.dry_run else 'usage recounted and set'})",
        ]
        for finding in sorted(self.tally.findings, key=list(Finding).index):
            lines.append(f"{self.tally.findings[finding]}\t{finding.value}")
            lines += [f"\te.g. {example}" for example in self.tally.examples.get(finding, [])]
        if not self.tally.findings:
            lines.append("nothing skipped or flagged")
        lines.append(f"took {self.seconds:.1f} s ({rate:.0f} images/s)")
        return lines

    def _outcomes(self, kind: str, written: str) -> str:
        counts = self.tally.counts
        total = sum(counts[f"{kind}.{outcome}"] for outcome in ("new", "updated", "unchanged"))
        parts = ", ".join(f"{counts[f'{kind}.{outcome}']} {outcome}" for outcome in ("new", "updated", "unchanged"))
        return f"{total} {written} ({parts})"

    def _by_prefix(self, prefix: str) -> str:
        found = sorted(
            (key.removeprefix(prefix), count) for key, count in self.tally.counts.items() if key.startswith(prefix)
        )
        return ", ".join(f"{name} {count}" for name, count in found) or "none"


# --- reading Glance -----------------------------------------------------------------------------------------------


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
    """Glance's images, locations, properties and tags, read in batches over one connection."""

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
            for name in ("images", "image_locations", "image_properties", "image_tags")
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
                    is_deleted=_flag(values.get("deleted")),
                    meta_text=values.get("meta_text"),
                    meta_chars=int(values.get("meta_chars") or 0),
                    created_at=_timestamp(values.get("created_at")),
                    updated_at=_timestamp(values.get("updated_at")),
                    deleted_at=_timestamp(values.get("deleted_at")),
                )
            )
        if {"image_id", "name"} <= set(self._properties.c.keys()):
            props = self._properties.c
            query = select(props.image_id, props.name, *(props[name] for name in ("value", "deleted") if name in props))
            for row in self._connection.execute(query.where(props.image_id.in_(ids))):
                values = row._mapping
                owner_of(row.image_id).properties.append((row.name, values.get("value"), _flag(values.get("deleted"))))
        if {"image_id", "value"} <= set(self._tags.c.keys()):
            tags = self._tags.c
            query = select(tags.image_id, tags.value, *(tags[name] for name in ("deleted",) if name in tags))
            for row in self._connection.execute(query.where(tags.image_id.in_(ids))):
                owner_of(row.image_id).tags.append((row.value, _flag(row._mapping.get("deleted"))))

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


def describe_error(exc: BaseException) -> str:
    """The first line of a driver's message, without statement parameters (they may hold URLs), masked."""
    origin = getattr(exc, "orig", None) or exc
    text = str(origin).strip().splitlines()[0] if str(origin).strip() else ""
    return mask_url(f"{type(origin).__name__}: {text}"[:MAX_EXAMPLE_CHARS])


def _is_outage(exc: DBAPIError) -> bool:
    """The database is gone or busy (not this row's fault): stop rather than fail every image alike."""
    return isinstance(exc, OperationalError) or exc.connection_invalidated


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes", "y")
    return bool(value)


def _timestamp(value: object) -> datetime | None:
    """A naive UTC datetime from what the driver gives (datetime, or SQLite's text); None if unreadable."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, str):
        try:
            return _timestamp(datetime.fromisoformat(value.strip()))
        except ValueError:
            return None
    return None


def _integer(value: object, maximum: int) -> int | None:
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


# --- mapping --------------------------------------------------------------------------------------------------------


class Planner:
    """Maps one Glance image (and its rows) to what locquota should hold; pure apart from the store lookup."""

    def __init__(
        self, stores: StoreRegistry, clock: Clock, scrub_delay: timedelta, *, has_location_status: bool
    ) -> None:
        self._stores, self._clock, self._scrub_delay = stores, clock, scrub_delay
        self._has_status = has_location_status

    def plan(self, glance: GlanceImage, tally: Tally) -> PlannedImage | None:
        """The planned image, or None if it is skipped (the reason goes to tally)."""
        row = glance.row
        raw_id, status = str(row.get("id") or ""), str(row.get("status") or "")
        try:
            image_id = uuid.UUID(raw_id)
        except ValueError:
            tally.note(Finding.IMAGE_BAD_ID, f"image {raw_id[:64]!r}")
            return None
        label = f"image {image_id}"
        owner = row.get("owner")
        if not isinstance(owner, str) or not owner.strip():
            tally.note(Finding.IMAGE_NO_OWNER, label)
            return None
        if status not in GLANCE_IMAGE_STATUSES:
            tally.note(Finding.IMAGE_UNKNOWN_STATUS, f"{label}: status {status[:40]!r}")
            return None
        image_status, data_status = GLANCE_IMAGE_STATUSES[status]
        notes = Tally()
        values = self._image_values(image_id, row, image_status, label, notes)
        too_long = _too_long(Image.__table__, values)
        if too_long:
            tally.note(Finding.IMAGE_VALUE_TOO_LONG, f"{label}: {too_long}")
            return None
        if status == "deactivated":
            notes.note(Finding.DEACTIVATED, label)
        elif status in UNFINISHED_UPLOADS:
            notes.note(Finding.UPLOAD_ABANDONED, f"{label}: {status}")
        planned = PlannedImage(
            image_id=image_id,
            owner=owner,
            glance_status=status,
            values=values,
            properties=self._properties(glance, label, notes),
            tags=self._tags(glance, label, notes),
            locations=[],
            tally=notes,
            defaulted=_defaulted_times(row),
        )
        self._plan_locations(glance, planned, data_status, label)
        return planned

    def _image_values(
        self, image_id: uuid.UUID, row: Mapping[str, object], status: ImageStatus, label: str, notes: Tally
    ) -> dict[str, object]:
        size = _integer(row.get("size"), MAX_BIGINT)
        if size is None and row.get("size") is not None:
            notes.note(Finding.SIZE_INVALID, label)
        created_at = _timestamp(row.get("created_at"))
        if created_at is None:
            notes.note(Finding.TIMESTAMP_UNREADABLE, label)
            created_at = self._clock.now()
        return {
            "id": image_id,
            "name": _text(row.get("name")),
            "status": status,
            "visibility": self._visibility(row, label, notes),
            "owner": row["owner"],
            "size": size,
            "virtual_size": _integer(row.get("virtual_size"), MAX_BIGINT),
            "checksum": _text(row.get("checksum")),
            "os_hash_algo": _text(row.get("os_hash_algo")),
            "os_hash_value": _text(row.get("os_hash_value")),
            "disk_format": _text(row.get("disk_format")),
            "container_format": _text(row.get("container_format")),
            "min_disk": _integer(row.get("min_disk"), MAX_INT32) or 0,
            "min_ram": _integer(row.get("min_ram"), MAX_INT32) or 0,
            "protected": _flag(row.get("protected")),
            "os_hidden": _flag(row.get("os_hidden")),
            "created_at": created_at,
            "updated_at": _timestamp(row.get("updated_at")) or created_at,
        }

    @staticmethod
    def _visibility(row: Mapping[str, object], label: str, notes: Tally) -> Visibility:
        if "visibility" in row:
            try:
                return Visibility(str(row["visibility"]))
            except ValueError:
                notes.note(Finding.VISIBILITY_UNKNOWN, label)
                return Visibility.PRIVATE
        # Before Mitaka, Glance had is_public instead.
        return Visibility.PUBLIC if _flag(row.get("is_public")) else Visibility.PRIVATE

    @staticmethod
    def _properties(glance: GlanceImage, label: str, notes: Tally) -> dict[str, str]:
        properties: dict[str, str] = {}
        for name, value, is_deleted in glance.properties:
            if is_deleted:
                continue  # removed in Glance: not imported as live
            if not isinstance(name, str) or not name or len(name) > ImageProperty.__table__.c.name.type.length:
                notes.note(Finding.PROPERTY_SKIPPED, f"{label}: property")
                continue
            properties[name] = "" if value is None else str(value)
        return properties

    @staticmethod
    def _tags(glance: GlanceImage, label: str, notes: Tally) -> set[str]:
        tags: set[str] = set()
        for value, is_deleted in glance.tags:
            if is_deleted:
                continue
            if not isinstance(value, str) or not value or len(value) > ImageTag.__table__.c.value.type.length:
                notes.note(Finding.PROPERTY_SKIPPED, f"{label}: tag")
                continue
            tags.add(value)
        return tags

    def _plan_locations(
        self, glance: GlanceImage, planned: PlannedImage, data_status: LocationStatus | None, label: str
    ) -> None:
        notes, image_deleted = planned.tally, _flag(glance.row.get("deleted"))
        statuses: dict[int, LocationStatus | None] = {}
        removed: set[int] = set()  # pre-Juno rows removed under a live image
        for row in glance.locations:
            status = self._location_status(row, data_status, f"{label} location #{row.id}", notes)
            if not self._has_status and status is LocationStatus.ACTIVE and row.is_deleted and not image_deleted:
                # Pre-Juno, a location removed from a live image: Glance stopped serving it, its data may remain.
                status = LocationStatus.PENDING_DELETE
                removed.add(row.id)
            statuses[row.id] = status
        keepers = _live_keepers(glance.locations, statuses)
        for row in glance.locations:
            where, status = f"{label} location #{row.id}", statuses[row.id]
            if status is None:
                planned.no_data_locations += 1
            elif row.url is None or not row.url.strip() or "\x00" in row.url:
                notes.note(Finding.LOCATION_URL_UNUSABLE, f"{where}: {row.url_chars} characters")
                planned.skipped_locations += 1
            elif status in LIVE_LOCATION_STATUSES and keepers[row.url] != row.id:
                notes.note(Finding.LOCATION_DUPLICATE, f"{where}: same URL as #{keepers[row.url]}")
                planned.skipped_locations += 1
            else:
                planned.locations.append(self._location(row, status, planned, glance, where))
        self._check_data(planned, [location for location in planned.locations if location.glance_id in removed], label)

    def _check_data(self, planned: PlannedImage, removed: list[PlannedLocation], label: str) -> None:
        """Restore the data of a restored image; note what an active image without data would hide."""
        notes = planned.tally
        statuses = {location.status for location in planned.locations}
        if planned.values["status"] is ImageStatus.ACTIVE and LocationStatus.ACTIVE not in statuses:
            if LocationStatus.PENDING_DELETE in statuses:
                # glance-scrubber --restore made the image active but left its locations pending_delete: Glance
                # then served it without data, and its scrubber skips it. The operator meant it restored.
                restored = [loc for loc in planned.locations if loc.status is LocationStatus.PENDING_DELETE]
                for location in restored:
                    self._set_status(location, LocationStatus.ACTIVE)
                notes.note(Finding.RESTORED, label, count=len(restored))
            else:
                notes.note(Finding.ACTIVE_WITHOUT_DATA, label)
        for location in removed:
            if location.status is LocationStatus.PENDING_DELETE:
                notes.note(Finding.PRE_JUNO_REMOVED, location.label)
        if planned.values["size"] is None and statuses & set(LIVE_LOCATION_STATUSES):
            notes.note(Finding.SIZE_UNKNOWN, label)

    def _location_status(
        self, row: GlanceLocation, data_status: LocationStatus | None, where: str, notes: Tally
    ) -> LocationStatus | None:
        """Glance's own location status where it has one; else the one the image status implies."""
        if self._has_status:
            try:
                return LocationStatus(str(row.status))
            except ValueError:
                notes.note(Finding.UNKNOWN_LOCATION_STATUS, f"{where}: status {str(row.status)[:40]!r}")
        return data_status

    def _location(
        self, row: GlanceLocation, status: LocationStatus, planned: PlannedImage, glance: GlanceImage, where: str
    ) -> PlannedLocation:
        url = row.url or ""
        notes = planned.tally
        store = self._store_of(url, row, where, notes)
        if has_credentials(url):
            notes.note(Finding.URL_CREDENTIALS, f"{where}: {mask_url(url)}")
        image_values = planned.values
        created_at = row.created_at or image_values["created_at"]
        location = PlannedLocation(
            glance_id=row.id,
            status=status,
            values={
                "image_id": planned.image_id,
                "glance_location_id": row.id,
                "url": url,
                "url_hash": url_digest(url),
                "store": store,
                "location_metadata": self._metadata(row, where, notes),
                "size_bytes": image_values["size"],
                "created_at": created_at,
                "updated_at": row.updated_at or created_at,
            },
            label=where,
        )
        # When it left service in Glance: the scrubber's clock starts there (scrub_time, as Glance's).
        location.values["retired_at"] = (
            row.deleted_at or row.updated_at or _timestamp(glance.row.get("deleted_at")) or self._clock.now()
        )
        self._set_status(location, status)
        return location

    def _set_status(self, location: PlannedLocation, status: LocationStatus) -> None:
        """The status and the bookkeeping that goes with it (as LocationLifecycle.move leaves them)."""
        values, retired_at = location.values, location.values["retired_at"]
        location.status = values["status"] = status
        values.update(
            pending_since=None, scrub_after=None, deleted_at=None, attempts=0, last_error=None,
            claimed_by=None, claim_expires_at=None,
        )  # fmt: skip
        if status is LocationStatus.PENDING_DELETE:
            values["pending_since"], values["scrub_after"] = retired_at, retired_at + self._scrub_delay
        elif status is LocationStatus.DELETED:
            values["deleted_at"] = retired_at

    def _store_of(self, url: str, row: GlanceLocation, where: str, notes: Tally) -> str:
        """The configured store that owns url; else Glance's store name, prefixed: `glance:<name>`."""
        try:
            return self._stores.for_url(url).name
        except LocquotaError as exc:
            finding = Finding.SCHEME_NOT_ENABLED if isinstance(exc, UnsupportedScheme) else Finding.OUTSIDE_STORE
            notes.note(finding, f"{where}: {mask_url(url)}")
        glance_store = None
        if row.meta_text:
            try:
                glance_store = _json(row.meta_text).get("store")
            except (ValueError, AttributeError, RecursionError):  # RecursionError: [[[[... nested past the stack
                glance_store = None
        name = glance_store if isinstance(glance_store, str) and glance_store else url.partition(":")[0] or "unknown"
        return f"glance:{name}"[: Location.__table__.c.store.type.length]

    @staticmethod
    def _metadata(row: GlanceLocation, where: str, notes: Tally) -> dict[str, object]:
        if row.meta_chars > MAX_METADATA_CHARS:
            notes.note(Finding.METADATA_TOO_LARGE, f"{where}: {row.meta_chars} characters")
            return {}
        if row.meta_text is None or not row.meta_text.strip():
            return {}
        try:
            metadata = _json(row.meta_text)
        except (ValueError, RecursionError):
            metadata = None
        if not isinstance(metadata, dict):
            notes.note(Finding.METADATA_MALFORMED, where)
            return {}
        return metadata


def _live_keepers(rows: list[GlanceLocation], statuses: Mapping[int, LocationStatus | None]) -> dict[str, int]:
    """Per URL, the one live row of an image that stands for the data: its first active row, else its first pending.

    Two live rows of one URL would charge the same data twice. Deleted rows are history, never duplicates: an
    admin may remove a location and add the same URL back.
    """
    keepers: dict[str, int] = {}
    for preferred in (LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE):
        for row in rows:
            if row.url is not None and statuses[row.id] is preferred:
                keepers.setdefault(row.url, row.id)
    return keepers


def _defaulted_times(row: Mapping[str, object]) -> tuple[str, ...]:
    """The image's timestamps that the import's time stands in for (created_at; updated_at falls back to it)."""
    if _timestamp(row.get("created_at")) is not None:
        return ()
    return ("created_at", "updated_at") if _timestamp(row.get("updated_at")) is None else ("created_at",)


def _json(text: str) -> Any:
    """Strict JSON: NaN and Infinity, which Python reads but PostgreSQL's json refuses, are malformed here."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _too_long(table: Table, values: Mapping[str, object]) -> str:
    """The first value longer than its column allows ('' if none): PostgreSQL would refuse the whole batch."""
    for name, value in values.items():
        length = getattr(table.c[name].type, "length", None)
        if isinstance(value, str) and length is not None and len(value) > length:
            return f"{name} has {len(value)} characters (at most {length})"
    return ""


# --- writing --------------------------------------------------------------------------------------------------------

# Compared to decide whether an imported location changed; the bookkeeping follows the status.
LOCATION_FIELDS = ("url", "url_hash", "store", "location_metadata", "status", "size_bytes")
BOOKKEEPING = (
    "pending_since", "scrub_after", "deleted_at", "attempts", "last_error", "claimed_by", "claim_expires_at",
)  # fmt: skip


class BatchWriter:
    """Compares a batch of planned images with locquota's rows and writes the difference (unless dry)."""

    def __init__(self, db: Session, clock: Clock, *, dry_run: bool) -> None:
        self._db, self._clock, self._dry_run = db, clock, dry_run

    def write(self, batch: list[PlannedImage]) -> Tally:
        """Insert or update every image of the batch; the tally of what changed."""
        tally = Tally()
        ids = [planned.image_id for planned in batch]
        images = self._existing_images(ids)
        properties, tags, locations = self._existing_details(ids)
        self._note_shared_urls(batch, tally)
        writes: dict[str, list[dict[str, object]]] = defaultdict(list)
        for planned in batch:
            changed = self._diff_image(planned, images.get(planned.image_id), writes)
            changed |= self._diff_details(planned, properties[planned.image_id], tags[planned.image_id], writes)
            changed |= self._diff_locations(planned, locations, writes, tally)
            outcome = "new" if planned.image_id not in images else "updated" if changed else "unchanged"
            tally.counts[f"images.{outcome}"] += 1
        if not self._dry_run:
            self._apply(writes)
        return tally

    def _locked(self, query: Select[Any]) -> Select[Any]:
        """Rows about to be rewritten are locked (PostgreSQL); a dry run locks nothing."""
        return query if self._dry_run else query.with_for_update()

    def _existing_images(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, object]]:
        table = Image.__table__
        query = self._locked(select(table).where(table.c.id.in_(ids)))
        return {row.id: dict(row._mapping) for row in self._db.execute(query)}

    def _existing_details(
        self, ids: list[uuid.UUID]
    ) -> tuple[
        dict[uuid.UUID, dict[str, tuple[int, str]]],
        dict[uuid.UUID, dict[str, int]],
        dict[tuple[uuid.UUID, int], dict[str, object]],
    ]:
        properties: dict[uuid.UUID, dict[str, tuple[int, str]]] = defaultdict(dict)
        for row in self._db.execute(
            select(ImageProperty.id, ImageProperty.image_id, ImageProperty.name, ImageProperty.value).where(
                ImageProperty.image_id.in_(ids)
            )
        ):
            properties[row.image_id][row.name] = (row.id, row.value)
        tags: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
        for row in self._db.execute(
            select(ImageTag.id, ImageTag.image_id, ImageTag.value).where(ImageTag.image_id.in_(ids))
        ):
            tags[row.image_id][row.value] = row.id
        columns = [Location.id, Location.image_id, Location.glance_location_id]
        columns += [getattr(Location, name) for name in (*LOCATION_FIELDS, *BOOKKEEPING)]
        query = self._locked(
            select(*columns).where(Location.image_id.in_(ids), Location.glance_location_id.is_not(None))
        )
        locations = {(row.image_id, row.glance_location_id): dict(row._mapping) for row in self._db.execute(query)}
        return properties, tags, locations

    def _diff_image(
        self, planned: PlannedImage, existing: dict[str, object] | None, writes: dict[str, list[dict[str, object]]]
    ) -> bool:
        if existing is not None:
            # The first import's stand-in times stay: a re-run must not see a change in them.
            planned.values.update({name: existing[name] for name in planned.defaulted})
        if existing is None:
            writes["images.insert"].append(planned.values)
            return True
        if all(existing[name] == value for name, value in planned.values.items()):
            return False
        writes["images.update"].append(planned.values)
        return True

    def _diff_details(
        self,
        planned: PlannedImage,
        properties: dict[str, tuple[int, str]],
        tags: dict[str, int],
        writes: dict[str, list[dict[str, object]]],
    ) -> bool:
        changed = False
        for name, (row_id, value) in properties.items():
            if name not in planned.properties:
                writes["properties.delete"].append({"id": row_id})
            elif planned.properties[name] != value:
                writes["properties.update"].append({"id": row_id, "value": planned.properties[name]})
            else:
                continue
            changed = True
        for name, value in planned.properties.items():
            if name not in properties:
                writes["properties.insert"].append({"image_id": planned.image_id, "name": name, "value": value})
                changed = True
        for value, row_id in tags.items():
            if value not in planned.tags:
                writes["tags.delete"].append({"id": row_id})
                changed = True
        for value in sorted(planned.tags - tags.keys()):
            writes["tags.insert"].append({"image_id": planned.image_id, "value": value})
            changed = True
        return changed

    def _diff_locations(
        self,
        planned: PlannedImage,
        existing: dict[tuple[uuid.UUID, int], dict[str, object]],
        writes: dict[str, list[dict[str, object]]],
        tally: Tally,
    ) -> bool:
        changed = False
        tally.counts["locations.no_data"] += planned.no_data_locations
        for location in planned.locations:
            values = {name: value for name, value in location.values.items() if name != "retired_at"}
            current = existing.get((planned.image_id, location.glance_id))
            if current is None:
                writes["locations.insert"].append(values)
                outcome = "new"
            elif current["status"] is LocationStatus.DELETED and location.status is not LocationStatus.DELETED:
                tally.note(Finding.KEPT_DELETED, location.label)
                outcome, location.status = "unchanged", LocationStatus.DELETED
            elif all(current[name] == values[name] for name in LOCATION_FIELDS):
                outcome = "unchanged"
            else:
                if current["status"] == location.status:
                    values.update({name: current[name] for name in BOOKKEEPING})  # the scrubber's, untouched
                writes["locations.update"].append({**values, "id": current["id"], "updated_at": self._clock.now()})
                outcome = "updated"
            changed |= outcome != "unchanged"
            tally.counts[f"locations.{outcome}"] += 1
            tally.counts[f"location.status.{location.status}"] += 1
        return changed

    def _note_shared_urls(self, batch: list[PlannedImage], tally: Tally) -> None:
        """Flag each location whose URL a live location of another image already holds (counted once per pair)."""
        live = [
            (planned.image_id, location)
            for planned in batch
            for location in planned.locations
            if location.status in LIVE_LOCATION_STATUSES
        ]
        if not live:
            return
        batch_ids = {planned.image_id for planned in batch}
        holders: dict[str, set[uuid.UUID]] = defaultdict(set)
        query = select(Location.image_id, Location.url, Location.glance_location_id).where(
            Location.url_hash.in_({location.values["url_hash"] for _image, location in live}),
            Location.status.in_(LIVE_LOCATION_STATUSES),
        )
        for row in self._db.execute(query):
            if row.image_id not in batch_ids or row.glance_location_id is None:  # this batch's rows: as planned
                holders[row.url].add(row.image_id)
        for image_id, location in live:
            url = str(location.values["url"])
            others = holders[url] - {image_id}
            if others:
                tally.note(Finding.SHARED_URL, f"{location.label}: also in image {min(others)}")
            holders[url].add(image_id)

    def _apply(self, writes: dict[str, list[dict[str, object]]]) -> None:
        """Bulk statements, parents first (images before their properties, tags and locations)."""
        db = self._db
        for name, model in (("properties", ImageProperty), ("tags", ImageTag)):
            if writes[f"{name}.delete"]:
                ids = [row["id"] for row in writes[f"{name}.delete"]]
                db.execute(delete(model).where(model.id.in_(ids)).execution_options(synchronize_session=False))
        if writes["images.insert"]:
            db.execute(insert(Image), writes["images.insert"])
        if writes["images.update"]:
            db.execute(update(Image), writes["images.update"])
        for name, model in (("properties", ImageProperty), ("tags", ImageTag)):
            if writes[f"{name}.update"]:
                db.execute(update(model), writes[f"{name}.update"])
            if writes[f"{name}.insert"]:
                db.execute(insert(model), writes[f"{name}.insert"])
        if writes["locations.insert"]:
            db.execute(insert(Location), writes["locations.insert"])
        if writes["locations.update"]:
            db.execute(update(Location), writes["locations.update"])


# --- the import -----------------------------------------------------------------------------------------------------


class GlanceImporter:
    """Imports a Glance database batch by batch, then sets the imported tenants' usage from a recount."""

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        stores: StoreRegistry,
        clock: Clock,
        *,
        scrub_delay: timedelta,
        batch_size: int,
        dry_run: bool,
    ) -> None:
        self._unit_of_work, self._stores, self._clock = unit_of_work, stores, clock
        self._scrub_delay, self._batch_size, self._dry_run = scrub_delay, batch_size, dry_run
        self._started = time.monotonic()
        self._dry_usage: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._written, self._analyze_at = 0, FIRST_ANALYZE

    def import_images(self, source: GlanceSource, on_batch: Callable[[int], None] = lambda _n: None) -> ImportReport:
        """Read, map and write every image; the report of what was done (usage is set by settle_usage)."""
        self._started = time.monotonic()
        self._check_target()
        report = ImportReport(dry_run=self._dry_run, has_location_status=source.has_location_status)
        planner = Planner(self._stores, self._clock, self._scrub_delay, has_location_status=source.has_location_status)
        if unidentified := source.count_without_id():
            report.tally.note(Finding.IMAGE_BAD_ID, "images with a NULL id", count=unidentified)
            report.tally.counts.update({"images.read": unidentified, "images.skipped": unidentified})
            on_batch(unidentified)
        for glance_batch in source.batches(self._batch_size):
            tally, planned = Tally(), []
            for glance in glance_batch:
                tally.counts["images.read"] += 1
                tally.counts["locations.read"] += len(glance.locations)
                image = planner.plan(glance, tally)
                if image is None:
                    tally.counts["images.skipped"] += 1
                    tally.counts["locations.skipped"] += len(glance.locations)
                    continue
                tally.counts[f"image.status.{image.glance_status} -> {image.values['status']}"] += 1
                planned.append(image)
            tally.merge(self._write(planned))
            report.tally.merge(tally)
            self._analyze_if_grown(len(planned))
            on_batch(len(glance_batch))
        report.seconds = time.monotonic() - self._started
        return report

    def _check_target(self) -> None:
        """Refuse before any batch if locquota's schema predates the import (every image would fail alike)."""
        with self._unit_of_work() as db:
            columns = {column["name"] for column in inspect(db.connection()).get_columns(Location.__tablename__)}
        if "glance_location_id" not in columns:
            raise TargetNotReadyError("locquota's database is not at the newest revision: run `locquota db upgrade`")

    def _analyze_if_grown(self, written: int) -> None:
        """ANALYZE the tables being filled each time the images written double (PostgreSQL).

        Into an empty database, the planner's statistics say "empty" until autovacuum catches up, and the
        per-batch lookups of existing rows turn into sequential scans: the import slowed down fourfold between
        40k and 70k images before this. Doubling keeps it to a handful of ANALYZEs (each samples, cheaply).
        """
        self._written += written
        if self._dry_run or self._written < self._analyze_at:
            return
        self._analyze_at = 2 * self._written
        with self._unit_of_work() as db:
            if db.get_bind().dialect.name == "postgresql":
                db.execute(text(f"ANALYZE {', '.join(ANALYZED_TABLES)}"))

    def _write(self, planned: list[PlannedImage]) -> Tally:
        """One transaction for the batch; if the database refuses it, each image alone, skipping the refused.

        A lost connection or a locked database (OperationalError) ends the import instead: every image would
        fail alike, and what is committed is safe to build on (re-run the import).
        """
        try:
            return self._write_images(planned)
        except DBAPIError as exc:
            if _is_outage(exc):
                raise
        tally = Tally()
        for image in planned:
            try:
                tally.merge(self._write_images([image]))
            except DBAPIError as exc:
                if _is_outage(exc):
                    raise
                tally.note(Finding.IMAGE_WRITE_FAILED, f"image {image.image_id}: {describe_error(exc)}")
                tally.counts["images.skipped"] += 1
                skipped = len(image.locations) + image.no_data_locations + image.skipped_locations
                tally.counts["locations.skipped"] += skipped
        return tally

    def _write_images(self, planned: list[PlannedImage]) -> Tally:
        tally = Tally()
        if not planned:
            return tally
        with self._unit_of_work() as db:
            tally.merge(BatchWriter(db, self._clock, dry_run=self._dry_run).write(planned))
        for image in planned:
            tally.merge(image.tally)
            tally.counts["locations.skipped"] += image.skipped_locations
            if self._dry_run:
                self._tally_usage(image)
        return tally

    def _tally_usage(self, image: PlannedImage) -> None:
        """A dry run's usage: the lifecycle's rules applied to the planned rows (the real run recounts)."""
        usage = self._dry_usage[image.owner]
        usage[0] += sum(
            int(location.values["size_bytes"] or 0)
            for location in image.locations
            if location.status in LIVE_LOCATION_STATUSES
        )
        usage[1] += image_counts(image.values["status"])[Resource.IMAGE_COUNT_TOTAL]  # type: ignore[arg-type]

    def settle_usage(self, source: GlanceSource, report: ImportReport) -> Iterator[list[TenantUsageLine]]:
        """Recount every tenant that owns a Glance image and repair its usage, a batch of tenants at a time.

        The repair is the one `locquota reconcile --fix` makes, but it is not drift: the rows it records in
        usage_drift in this transaction are removed again, so the drift metric and its alert stay quiet.
        """
        for tenants in source.owners(self._batch_size):
            if self._dry_run:
                lines = [TenantUsageLine(tenant, *self._dry_usage.get(tenant, (0, 0))) for tenant in tenants]
            else:
                lines = self._settle(tenants)
            report.tenants += len(lines)
            yield lines
        report.seconds = time.monotonic() - self._started

    def _settle(self, tenants: list[str]) -> list[TenantUsageLine]:
        with self._unit_of_work() as db:
            reconciler = Reconciler(db, self._clock)
            reconciler.lock(tenants)
            before = db.scalar(select(func.max(UsageDrift.id))) or 0
            actual = recount(db, tenants)
            reconciler.compare(actual, fix=True)
            db.execute(delete(UsageDrift).where(UsageDrift.id > before, UsageDrift.tenant_id.in_(tenants)))
        return [
            TenantUsageLine(
                totals.tenant_id, totals.totals[Resource.IMAGE_SIZE_TOTAL], totals.totals[Resource.IMAGE_COUNT_TOTAL]
            )
            for totals in actual
        ]
