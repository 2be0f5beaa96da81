"""Glance -> locquota, one image at a time; pure apart from the store lookup, so it is tested without a database."""

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Table

from locations.models import (
    DATA_KEY_VERSION,
    LIVE_LOCATION_STATUSES,
    Image,
    ImageProperty,
    ImageStatus,
    ImageTag,
    Location,
    LocationStatus,
    Visibility,
)
from locations.services.glance_import.memberships import PlannedMembers, has_live_members, plan_members
from locations.services.glance_import.report import MAX_METADATA_CHARS, Finding, Tally, has_credentials, mask_url
from locations.services.glance_import.source import (
    GlanceImage,
    GlanceLocation,
    parse_flag,
    parse_non_negative_int,
    parse_timestamp,
)
from locations.stores.base import DataIdentity, StoreRegistry
from locquota.clock import Clock
from locquota.errors import LocquotaError, UnsupportedScheme

# Location status (SPEC section 8):
#
#     image_locations.status exists (Glance since Juno)   kept as it is
#     no status column (pre-Juno)                         from the image status, GLANCE_IMAGE_STATUSES below
#     either, an active image whose only data is pending_delete (`glance-scrubber --restore` leaves that)
#                                                         active again: the operator restored it
#     pre-Juno, a row soft-deleted under a live image     pending_delete: it may still hold data, Glance no
#                                                         longer served it, and the scrubber will settle it
#
# Glance image status -> (locquota image status, status of its locations where Glance has no location status).
# None: no data yet, so its locations are not imported as data. Statuses outside SPEC section 8's table:
# saving, uploading, importing -> queued: the upload (or the staged data, in Glance's staging area, not a
# store) does not move to locquota, and locquota accepts an upload only for a queued image;
# deactivated -> deactivated: the data is there, downloads stay refused but to admins.
GLANCE_IMAGE_STATUSES: dict[str, tuple[ImageStatus, LocationStatus | None]] = {
    "queued": (ImageStatus.QUEUED, None),
    "saving": (ImageStatus.QUEUED, None),
    "uploading": (ImageStatus.QUEUED, None),
    "importing": (ImageStatus.QUEUED, None),
    "active": (ImageStatus.ACTIVE, LocationStatus.ACTIVE),
    "deactivated": (ImageStatus.DEACTIVATED, LocationStatus.ACTIVE),
    "pending_delete": (ImageStatus.PENDING_DELETE, LocationStatus.PENDING_DELETE),
    "killed": (ImageStatus.KILLED, LocationStatus.DELETED),
    "deleted": (ImageStatus.DELETED, LocationStatus.DELETED),
}
UNFINISHED_UPLOADS = frozenset({"saving", "uploading", "importing"})
MAX_INT32 = 2**31 - 1
MAX_BIGINT = 2**63 - 1


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
    members: PlannedMembers = field(default_factory=PlannedMembers)
    no_data_locations: int = 0  # not imported: the image has no data (SPEC section 8)
    skipped_locations: int = 0  # not imported: duplicate or unusable URL


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
        values["visibility"] = self._visibility(row, has_live_members(glance.members), label, notes)
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
            members=plan_members(glance.members, label, notes),
        )
        self._plan_locations(glance, planned, data_status, label)
        return planned

    def _image_values(
        self, image_id: uuid.UUID, row: Mapping[str, object], status: ImageStatus, label: str, notes: Tally
    ) -> dict[str, object]:
        size = parse_non_negative_int(row.get("size"), MAX_BIGINT)
        if size is None and row.get("size") is not None:
            notes.note(Finding.SIZE_INVALID, label)
        created_at = parse_timestamp(row.get("created_at"))
        if created_at is None:
            notes.note(Finding.TIMESTAMP_UNREADABLE, label)
            created_at = self._clock.now()
        return {
            "id": image_id,
            "name": _text(row.get("name")),
            "status": status,
            "owner": row["owner"],
            "size": size,
            "virtual_size": parse_non_negative_int(row.get("virtual_size"), MAX_BIGINT),
            "checksum": _text(row.get("checksum")),
            "os_hash_algo": _text(row.get("os_hash_algo")),
            "os_hash_value": _text(row.get("os_hash_value")),
            "disk_format": _text(row.get("disk_format")),
            "container_format": _text(row.get("container_format")),
            "min_disk": parse_non_negative_int(row.get("min_disk"), MAX_INT32) or 0,
            "min_ram": parse_non_negative_int(row.get("min_ram"), MAX_INT32) or 0,
            "protected": parse_flag(row.get("protected")),
            "os_hidden": parse_flag(row.get("os_hidden")),
            "created_at": created_at,
            "updated_at": parse_timestamp(row.get("updated_at")) or created_at,
        }

    @staticmethod
    def _visibility(row: Mapping[str, object], has_members: bool, label: str, notes: Tally) -> Visibility:
        if "visibility" in row and (row["visibility"] is not None or "is_public" not in row):
            try:
                return Visibility(str(row["visibility"]))
            except ValueError:
                notes.note(Finding.VISIBILITY_UNKNOWN, label)
                return Visibility.PRIVATE
        # Before Ocata, Glance had is_public instead (and between its expand and migrate steps, a NULL
        # visibility). Its Ocata migration makes a non-public image with live members shared, else private;
        # private, an image's members would lose it.
        if parse_flag(row.get("is_public")):
            return Visibility.PUBLIC
        if has_members:
            notes.note(Finding.SHARED_BEFORE_OCATA, label)
            return Visibility.SHARED
        return Visibility.PRIVATE

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
        notes, image_deleted = planned.tally, parse_flag(glance.row.get("deleted"))
        statuses: dict[int, LocationStatus | None] = {}
        removed: set[int] = set()  # pre-Juno rows removed under a live image
        for row in glance.locations:
            status = self._location_status(row, data_status, f"{label} location #{row.id}", notes)
            if not self._has_status and status is LocationStatus.ACTIVE and row.is_deleted and not image_deleted:
                # Pre-Juno, a location removed from a live image: Glance stopped serving it, its data may remain.
                status = LocationStatus.PENDING_DELETE
                removed.add(row.id)
            statuses[row.id] = status
        keepers = _live_keepers(glance.locations, statuses, self._data_key)
        for row in glance.locations:
            where, status = f"{label} location #{row.id}", statuses[row.id]
            if status is None:
                planned.no_data_locations += 1
            elif row.url is None or not row.url.strip() or "\x00" in row.url:
                notes.note(Finding.LOCATION_URL_UNUSABLE, f"{where}: {row.url_chars} characters")
                planned.skipped_locations += 1
            elif status in LIVE_LOCATION_STATUSES and keepers[self._data_key(row.url)] != row.id:
                notes.note(Finding.LOCATION_DUPLICATE, f"{where}: same data as #{keepers[self._data_key(row.url)]}")
                planned.skipped_locations += 1
            else:
                planned.locations.append(self._location(row, status, planned, glance, where))
        self._check_data(planned, [location for location in planned.locations if location.glance_id in removed], label)

    def _check_data(self, planned: PlannedImage, removed: list[PlannedLocation], label: str) -> None:
        """Restore the data of a restored image; note what an active image without data would hide."""
        notes = planned.tally
        statuses = {location.status for location in planned.locations}
        has_data = (ImageStatus.ACTIVE, ImageStatus.DEACTIVATED)
        if planned.values["status"] in has_data and LocationStatus.ACTIVE not in statuses:
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
        identity = self._identity_of(url, store)
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
                "data_key": identity.key,  # hashed by the writer, under the deployment's key
                "data_key_version": DATA_KEY_VERSION,
                "data_inode": identity.inode,
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
            row.deleted_at or row.updated_at or parse_timestamp(glance.row.get("deleted_at")) or self._clock.now()
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

    def _data_key(self, url: str) -> str:
        """The data key of a URL (its text where no configured store owns it): spellings of one file are one."""
        try:
            return self._stores.for_url(url).identify(url).key
        except LocquotaError:
            return url

    def _identity_of(self, url: str, store_name: str) -> DataIdentity:
        """What the URL reaches, as its store names it; a store not configured here: the URL's text."""
        try:
            return self._stores.identify(url, store_name)
        except LocquotaError:
            return DataIdentity(url)

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


def _live_keepers(
    rows: list[GlanceLocation], statuses: Mapping[int, LocationStatus | None], data_key: Callable[[str], str]
) -> dict[str, int]:
    """Per piece of data (by data key), the live row of an image that stands for it.

    Its first active row, else its first pending one.

    Two live rows of one URL would charge the same data twice. Deleted rows are history, never duplicates: an
    admin may remove a location and add the same URL back.
    """
    keepers: dict[str, int] = {}
    for preferred in (LocationStatus.ACTIVE, LocationStatus.PENDING_DELETE):
        for row in rows:
            if row.url is not None and statuses[row.id] is preferred:
                keepers.setdefault(data_key(row.url), row.id)
    return keepers


def _defaulted_times(row: Mapping[str, object]) -> tuple[str, ...]:
    """The image's timestamps that the import's time stands in for (created_at; updated_at falls back to it)."""
    if parse_timestamp(row.get("created_at")) is not None:
        return ()
    return ("created_at", "updated_at") if parse_timestamp(row.get("updated_at")) is None else ("created_at",)


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
