"""Images and their locations. Location status is internal: the API never shows it and never accepts it."""

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from locquota.crypto import plain_digest
from locquota.db import Base

# Where the scrubber's and the backlog's partial indexes apply (PostgreSQL and SQLite).
PENDING = text("status = 'pending_delete'")


class ImageStatus(StrEnum):
    """Glance's image statuses; they describe the image record."""

    QUEUED = "queued"
    SAVING = "saving"
    UPLOADING = "uploading"  # data being staged or staged, waiting for its import (glance-direct)
    IMPORTING = "importing"  # an import task is bringing the data into its stores
    ACTIVE = "active"
    DEACTIVATED = "deactivated"  # data kept and charged, downloads refused to all but admins
    KILLED = "killed"
    PENDING_DELETE = "pending_delete"
    DELETED = "deleted"


class LocationStatus(StrEnum):
    """Where one copy of the data stands; it decides what the tenant is charged for."""

    ACTIVE = "active"
    PENDING_DELETE = "pending_delete"
    DELETED = "deleted"


class Visibility(StrEnum):
    """Who may see an image, as Glance names it: private (its owner), shared (and its members), community, public."""

    PUBLIC = "public"
    PRIVATE = "private"
    SHARED = "shared"
    COMMUNITY = "community"


HIDDEN_IMAGE_STATUSES = (ImageStatus.PENDING_DELETE, ImageStatus.DELETED)
# Images on their way to data: they count towards image_count_uploading, as Glance counts them.
UPLOADING_IMAGE_STATUSES = (ImageStatus.SAVING, ImageStatus.UPLOADING, ImageStatus.IMPORTING)
LIVE_LOCATION_STATUSES = (LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE)  # their data is in a store


# locations.data_key_version: 1, data_key_hash is the hash of the store's canonical key of the data (SPEC
# section 6); 0, of the URL's text (rows written before migration 0006, until `locquota locations rekey`).
DATA_KEY_VERSION = 1
TEXT_KEY_VERSION = 0


def data_key_digest(key: str) -> str:
    """The data_key_hash of a canonical data key without encryption keys (a canonical file URL is its own key)."""
    return plain_digest(key)


def _enum(enum: type[StrEnum], length: int) -> Enum:
    # Stored by value as plain strings: readable in psql, and no native enum type to migrate.
    return Enum(enum, native_enum=False, length=length, values_callable=lambda members: [m.value for m in members])


class Image(Base):
    """A Glance image record. Rows are never removed by the API: `deleted` is a status."""

    __tablename__ = "images"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[ImageStatus] = mapped_column(_enum(ImageStatus, 32))
    visibility: Mapped[Visibility] = mapped_column(_enum(Visibility, 16))
    owner: Mapped[str] = mapped_column(String(255))
    size: Mapped[int | None] = mapped_column(BigInteger)
    virtual_size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(32))
    os_hash_algo: Mapped[str | None] = mapped_column(String(64))
    os_hash_value: Mapped[str | None] = mapped_column(String(128))
    disk_format: Mapped[str | None] = mapped_column(String(32))
    container_format: Mapped[str | None] = mapped_column(String(32))
    min_disk: Mapped[int] = mapped_column(Integer, default=0)
    min_ram: Mapped[int] = mapped_column(Integer, default=0)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    os_hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    properties: Mapped[list["ImageProperty"]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin", order_by="ImageProperty.name"
    )
    tags: Mapped[list["ImageTag"]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="selectin", order_by="ImageTag.value"
    )
    # Loaded on use: the write paths that need locations (upload, delete) touch them; reads for the API
    # go through catalog.ImageCatalog, which aggregates the active ones in SQL.
    locations: Mapped[list["Location"]] = relationship(back_populates="image", order_by="Location.id")

    __table_args__ = (
        # The tenant's image list, newest first, paged by (created_at, id): GET /v2/images.
        Index("ix_images_owner_created_at_id", "owner", "created_at", "id"),
        # The admin's list of every tenant's images, same order.
        Index("ix_images_created_at_id", "created_at", "id"),
        # Public and community images in every tenant's list, same order.
        Index("ix_images_visibility_created_at_id", "visibility", "created_at", "id"),
    )

    @property
    def active_locations(self) -> list["Location"]:
        """The locations whose data is there to serve; the only ones the API ever lists."""
        return [location for location in self.locations if location.status is LocationStatus.ACTIVE]


class ImageProperty(Base):
    """A free-form image property (Glance keeps them as strings)."""

    __tablename__ = "image_properties"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"))
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(Text)
    image: Mapped[Image] = relationship(back_populates="properties")

    __table_args__ = (
        UniqueConstraint("image_id", "name", name="uq_image_properties_image_id_name"),
        # The property=value list filter.
        Index("ix_image_properties_name_value", "name", "value", mysql_length={"value": 255}),
    )


class ImageTag(Base):
    """A tag on an image."""

    __tablename__ = "image_tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"))
    value: Mapped[str] = mapped_column(String(255))
    image: Mapped[Image] = relationship(back_populates="tags")

    __table_args__ = (
        UniqueConstraint("image_id", "value", name="uq_image_tags_image_id_value"),
        # The tag= list filter.
        Index("ix_image_tags_value", "value"),
    )


class Location(Base):
    """One copy of an image's data in one store. The API never deletes the row (soft delete)."""

    __tablename__ = "locations"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"), index=True)
    url: Mapped[str] = mapped_column(Text)  # the URL as given, or "enc:" + its Fernet token (locquota.crypto)
    # What the URL reaches, whatever its spelling: sha256 of the store's canonical data key, or its HMAC-SHA256
    # under the encryption key (locations.services.data_references decides "in use" by it, never by URL text).
    data_key_hash: Mapped[str] = mapped_column(String(64))
    data_key_version: Mapped[int] = mapped_column(
        SmallInteger, default=DATA_KEY_VERSION, server_default=text(str(DATA_KEY_VERSION))
    )
    # "device:inode" of a file store's data when the location was written: a second name (a hard link) of it.
    data_inode: Mapped[str | None] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(String(64))
    location_metadata: Mapped[dict[str, object]] = mapped_column("metadata", JSON, default=dict)
    status: Mapped[LocationStatus] = mapped_column(_enum(LocationStatus, 32))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]
    # The scrubber's bookkeeping, meaningful while the location is pending_delete.
    pending_since: Mapped[datetime | None]  # when it became pending_delete: the backlog's age
    scrub_after: Mapped[datetime | None]  # not scrubbed before this (scrub_time, then retry backoff)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # failed deletions so far
    last_error: Mapped[str | None] = mapped_column(String(1024))
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # the scrubber deleting it now
    claim_expires_at: Mapped[datetime | None]  # a dead scrubber's claim returns to the pool after this
    # The image_locations.id of the Glance row this was imported from (None: added in locquota); a re-run of
    # `locquota import-glance` finds the row again by (image_id, glance_location_id), so nothing doubles.
    glance_location_id: Mapped[int | None] = mapped_column(BigInteger)
    image: Mapped[Image] = relationship(back_populates="locations")

    __table_args__ = (
        # The scrubber's due work and the backlog (API, metrics) read only pending_delete rows: partial
        # indexes keep their cost independent of the number of active locations. status leads each one
        # because MariaDB has no partial indexes: there the walk starts at the pending_delete rows instead.
        Index(
            "ix_locations_pending_delete", "status", "scrub_after", "id", postgresql_where=PENDING, sqlite_where=PENDING
        ),
        Index(
            "ix_locations_pending_since",
            "status",
            "pending_since",
            "id",
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        ),
        # The metrics' backlog summary per store (backlog.by_store_query) answered from the index alone:
        # without the INCLUDE columns every pending row costs a random heap read (measured: 32 ms cold at
        # 1M active locations, 2.3 ms with it). SQLite and MariaDB have no INCLUDE; there the rows are read.
        Index(
            "ix_locations_pending_backlog",
            "status",
            "store",
            postgresql_include=["size_bytes", "scrub_after", "attempts", "pending_since"],
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        ),
        # "Does any other live location reference this data?" before data is deleted or a URL is added.
        Index("ix_locations_data_key_hash", "data_key_hash"),
        Index("ix_locations_data_inode", "data_inode"),
        # One row per imported Glance location: a second import updates it instead of adding another.
        Index("uq_locations_image_id_glance_location_id", "image_id", "glance_location_id", unique=True),
    )


class Upload(Base):
    """An upload in flight: the lease its request renews while bytes flow, and where the bytes go.

    The row is written with queued -> saving, before the first byte, and removed with the upload's
    outcome. A row whose lease ran out is a dead upload (a killed worker, an outage): the reaper
    (locations.services.upload_reaper) returns the image to queued and sends whatever data is at url
    or scratch_url to the pending_delete path. url and scratch_url are sealed like location URLs.
    """

    __tablename__ = "uploads"
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    store: Mapped[str | None] = mapped_column(String(64))  # None: an upload from before leases existed
    url: Mapped[str | None] = mapped_column(Text)
    scratch_url: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]


class DataKeyCollision(Base):
    """Data that live locations of more than one tenant reference, as the last `locquota locations rekey` found.

    Only rows added before data identity was decided by canonical keys can collide (an alias of another
    tenant's file); the scrubber keeps such data while any of them is live. The metrics count these rows.
    """

    __tablename__ = "data_key_collisions"
    data_key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenants: Mapped[int] = mapped_column(Integer)
    locations: Mapped[int] = mapped_column(Integer)
    found_at: Mapped[datetime]


class DataKeyLockSlot(Base):
    """A row per slot of data keys, written to lock the keys that fall in it until the writer's commit (MariaDB).

    Two transactions that add the first reference to the same data, or delete the last, must serialize.
    PostgreSQL uses an advisory lock per key; MariaDB's GET_LOCK outlives the transaction, and Galera sees
    only rows, so there the lock is an UPDATE of the key's slot (its first 16 bits) that bumps `taken`: the
    row is then in the write set that Galera certifies across nodes. Migration 0011 makes all 65,536 slots
    on MariaDB (rows inserted on demand would deadlock on InnoDB's gap locks).
    """

    __tablename__ = "data_key_lock_slots"
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    taken: Mapped[int] = mapped_column(BigInteger)


class AuditRun(Base):
    """One `locquota audit` run: when, whether it repaired, and what it found, by kind (the metrics read the last).

    The count columns are named after the finding kinds (locations.services.audit.Finding).
    """

    __tablename__ = "audit_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]  # None: still running, or it died
    fixed: Mapped[bool] = mapped_column(Boolean, default=False)  # run with --fix
    missing: Mapped[int] = mapped_column(BigInteger, default=0)
    wrong_size: Mapped[int] = mapped_column(BigInteger, default=0)
    orphan: Mapped[int] = mapped_column(BigInteger, default=0)
    partial: Mapped[int] = mapped_column(BigInteger, default=0)
    stuck: Mapped[int] = mapped_column(BigInteger, default=0)
    unreadable: Mapped[int] = mapped_column(BigInteger, default=0)
    repaired: Mapped[int] = mapped_column(BigInteger, default=0)  # findings --fix repaired
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)  # locations in stores not configured here
    unchecked_stores: Mapped[int] = mapped_column(Integer, default=0)  # stores that could not be compared


class StagedData(Base):
    """An image's data in the staging area, waiting for its glance-direct import (charged to image_stage_total).

    Written when a stage request's data is durable (PUT /v2/images/{id}/stage, or a web-download's fetch);
    removed when the import ends, its data then handed to the scrubber as a pending_delete location of
    the staging store. url is sealed like location URLs; the hashes are the staged bytes', checked again
    as they are copied into each store.
    """

    __tablename__ = "staged_data"
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"), primary_key=True)
    store: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(32))
    os_hash_value: Mapped[str] = mapped_column(String(128))
    staged_at: Mapped[datetime]


class TaskStatus(StrEnum):
    """Glance's task statuses."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILURE = "failure"


UNFINISHED_TASK_STATUSES = (TaskStatus.PENDING, TaskStatus.PROCESSING)
FINISHED_TASK_STATUSES = (TaskStatus.SUCCESS, TaskStatus.FAILURE)


class Task(Base):
    """A Glance task (`api_image_import`): what it was asked, how far it got, how it ended.

    It runs under a lease (holder, lease_expires_at; locquota.leases): a worker that dies lets it run
    out and the import reaper ends the task cleanly (locations.services.image_import.reaper).
    """

    __tablename__ = "tasks"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(30))
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus, 30))
    owner: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("images.id"), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(64))
    task_input: Mapped[dict[str, object]] = mapped_column("input", JSON)
    result: Mapped[dict[str, object] | None] = mapped_column(JSON)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]  # when a finished task stops being shown (Glance's task_time_to_live)
    holder: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)


class TaskCopy(Base):
    """Data a task is writing into a store now: where (sealed names) and the space admitted for it ahead.

    Written, with the admission of reserved_bytes to image_size_total, before the first byte moves;
    removed when the copy becomes a location, or is handed to the scrubber. A task that dies leaves
    these rows for the import reaper, so no half-copied data is ever without a record.
    """

    __tablename__ = "task_copies"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id"), index=True)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"))
    store: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    scratch_url: Mapped[str | None] = mapped_column(Text)
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime]


class MemberStatus(StrEnum):
    """A member's answer to an image shared with it (Glance's member statuses)."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class ImageMember(Base):
    """A project a shared image is shared with. Members see the image; only its owner is charged for it.

    image_created_at repeats the image's created_at (which never changes) so that a member's list walks
    ix_image_members_member_status_created in the list's default order, however many images it is shared.
    """

    __tablename__ = "image_members"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id"))
    member: Mapped[str] = mapped_column(String(255))
    status: Mapped[MemberStatus] = mapped_column(_enum(MemberStatus, 20))
    image_created_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        # One membership per project and image; also the image's member list, in order of project.
        UniqueConstraint("image_id", "member", name="uq_image_members_image_id_member"),
        Index("ix_image_members_member_status_created", "member", "status", "image_created_at", "image_id"),
    )
