"""A batch of planned images compared with what locquota holds; only the difference is written.

Images keep Glance's ids; locations are found again by (image id, Glance's image_locations.id), members by
(image id, project), so a re-run updates what changed and adds nothing twice.
"""

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import Select, delete, insert, select, update
from sqlalchemy.orm import Session

from locations.models import (
    LIVE_LOCATION_STATUSES,
    Image,
    ImageMember,
    ImageProperty,
    ImageTag,
    Location,
    LocationStatus,
)
from locations.services.glance_import.planner import PlannedImage
from locations.services.glance_import.report import Finding, Tally
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlNotReadableError, UrlVault

# Compared to decide whether an imported location changed; the bookkeeping follows the status.
LOCATION_FIELDS = (
    "url", "data_key_hash", "data_key_version", "data_inode", "store", "location_metadata", "status", "size_bytes",
)  # fmt: skip
BOOKKEEPING = (
    "pending_since", "scrub_after", "deleted_at", "attempts", "last_error", "claimed_by", "claim_expires_at",
)  # fmt: skip
# Compared to decide whether an imported membership changed.
MEMBER_FIELDS = ("status", "image_created_at", "created_at", "updated_at")


class BatchWriter:
    """Compares a batch of planned images with locquota's rows and writes the difference (unless dry)."""

    def __init__(self, db: Session, clock: Clock, *, dry_run: bool, vault: UrlVault = PLAINTEXT) -> None:
        self._db, self._clock, self._dry_run, self._vault = db, clock, dry_run, vault

    def _opened(self, stored: str) -> str | None:
        """The URL a stored row holds (None: unreadable; the import then rewrites it from Glance's)."""
        try:
            return self._vault.open(stored)
        except UrlNotReadableError:
            return None

    def write(self, batch: list[PlannedImage]) -> Tally:
        """Insert or update every image of the batch; the tally of what changed."""
        tally = Tally()
        ids = [planned.image_id for planned in batch]
        images = self._existing_images(ids)
        properties, tags, locations = self._existing_details(ids)
        members = self._existing_members(ids)
        self._note_shared_urls(batch, tally)
        writes: dict[str, list[dict[str, object]]] = defaultdict(list)
        for planned in batch:
            changed = self._diff_image(planned, images.get(planned.image_id), writes)
            changed |= self._diff_details(planned, properties[planned.image_id], tags[planned.image_id], writes)
            changed |= self._diff_locations(planned, locations, writes, tally)
            changed |= self._diff_members(planned, members[planned.image_id], writes, tally)
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

    def _existing_members(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, dict[str, object]]]:
        """The batch's memberships by image and project (locked: a member may be answering meanwhile)."""
        members: dict[uuid.UUID, dict[str, dict[str, object]]] = defaultdict(dict)
        table = ImageMember.__table__
        for row in self._db.execute(self._locked(select(table).where(table.c.image_id.in_(ids)))):
            members[row.image_id][row.member] = dict(row._mapping)
        return members

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
            values = {name: value for name, value in location.values.items() if name not in ("retired_at", "data_key")}
            url = str(values["url"])
            values["data_key_hash"] = self._vault.digest(str(location.values["data_key"]))
            current = existing.get((planned.image_id, location.glance_id))
            if current is not None:
                # Compared as URLs: a sealed URL differs from its plaintext, and from itself sealed again.
                current = {**current, "url": self._opened(str(current["url"]))}
            if current is None:
                writes["locations.insert"].append({**values, "url": self._vault.seal(url)})  # never plaintext with keys
                outcome = "new"
            elif current["status"] is LocationStatus.DELETED and location.status is not LocationStatus.DELETED:
                tally.note(Finding.KEPT_DELETED, location.label)
                outcome, location.status = "unchanged", LocationStatus.DELETED
            elif all(current[name] == values[name] for name in LOCATION_FIELDS):
                outcome = "unchanged"
            else:
                if current["status"] == location.status:
                    values.update({name: current[name] for name in BOOKKEEPING})  # the scrubber's, untouched
                sealed = {**values, "url": self._vault.seal(url)}
                writes["locations.update"].append({**sealed, "id": current["id"], "updated_at": self._clock.now()})
                outcome = "updated"
            changed |= outcome != "unchanged"
            tally.counts[f"locations.{outcome}"] += 1
            tally.counts[f"location.status.{location.status}"] += 1
        return changed

    def _diff_members(
        self,
        planned: PlannedImage,
        existing: dict[str, dict[str, object]],
        writes: dict[str, list[dict[str, object]]],
        tally: Tally,
    ) -> bool:
        """Glance's live memberships of the image, and no others: as its properties, Glance's are the truth."""
        changed = False
        image_created_at = planned.values["created_at"]  # after _diff_image kept a stand-in time
        for member, membership in planned.members.by_member.items():
            current = existing.get(member)
            # A time Glance did not give: the import's on the first run, kept on the next ones.
            created_at = membership.created_at or (current["created_at"] if current else self._clock.now())
            values = {
                "image_id": planned.image_id,
                "member": member,
                "status": membership.status,
                "image_created_at": image_created_at,  # must equal the image's (the member's list walks it)
                "created_at": created_at,
                "updated_at": membership.updated_at or (current["updated_at"] if current else created_at),
            }
            if current is None:
                writes["members.insert"].append(values)
                outcome = "new"
            elif all(current[name] == values[name] for name in MEMBER_FIELDS):
                outcome = "unchanged"
            else:
                writes["members.update"].append({**values, "id": current["id"]})
                outcome = "updated"
            changed |= outcome != "unchanged"
            tally.counts[f"members.{outcome}"] += 1
            tally.counts[f"member.status.{membership.status}"] += 1
        for member, current in existing.items():
            if member not in planned.members.by_member:
                writes["members.delete"].append({"id": current["id"]})
                tally.counts["members.removed"] += 1
                changed = True
        return changed

    def _note_shared_urls(self, batch: list[PlannedImage], tally: Tally) -> None:
        """Flag each location whose data (by canonical key) a live location of another image already holds."""
        live = [
            (planned.image_id, location, self._vault.digests(str(location.values["data_key"])))
            for planned in batch
            for location in planned.locations
            if location.status in LIVE_LOCATION_STATUSES
        ]
        if not live:
            return
        batch_ids = {planned.image_id for planned in batch}
        holders: dict[str, set[uuid.UUID]] = defaultdict(set)
        query = select(Location.image_id, Location.data_key_hash, Location.glance_location_id).where(
            Location.data_key_hash.in_({digest for _image, _location, digests in live for digest in digests}),
            Location.status.in_(LIVE_LOCATION_STATUSES),
        )
        for row in self._db.execute(query):
            # This batch's rows: as planned.
            if row.image_id not in batch_ids or row.glance_location_id is None:
                holders[row.data_key_hash].add(row.image_id)
        for image_id, location, digests in live:
            others = set().union(*(holders[digest] for digest in digests)) - {image_id}
            if others:
                tally.note(Finding.SHARED_URL, f"{location.label}: also in image {min(others)}")
            holders[digests[0]].add(image_id)

    def _apply(self, writes: dict[str, list[dict[str, object]]]) -> None:
        """Bulk statements, parents first (images before their properties, tags, locations and members)."""
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
        if writes["members.delete"]:
            ids = [row["id"] for row in writes["members.delete"]]
            db.execute(delete(ImageMember).where(ImageMember.id.in_(ids)).execution_options(synchronize_session=False))
        if writes["members.update"]:
            db.execute(update(ImageMember), writes["members.update"])
        if writes["members.insert"]:
            db.execute(insert(ImageMember), writes["members.insert"])
