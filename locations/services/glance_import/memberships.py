"""Glance image_members -> locquota image_members, one image at a time; pure, so it is tested without a database.

An image's live memberships are what Glance would show (deleted rows are history, not imported), one per
project: locquota keeps (image, member) unique, Glance only (image, member, deleted_at), which lets two live
rows of one project through.
"""

from dataclasses import dataclass, field
from datetime import datetime

from locations.models import ImageMember, MemberStatus
from locations.services.glance_import.report import Finding, Tally
from locations.services.glance_import.source import GlanceMember

MEMBER_CHARS: int = ImageMember.__table__.c.member.type.length  # type: ignore[attr-defined]


@dataclass(slots=True)
class PlannedMember:
    """What one Glance membership becomes; a timestamp Glance did not give is None (the import's time stands in)."""

    glance_id: int
    status: MemberStatus
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(slots=True)
class PlannedMembers:
    """An image's memberships by project, and how many of its rows are left out (and why, in counts)."""

    by_member: dict[str, PlannedMember] = field(default_factory=dict)
    skipped: int = 0  # unusable project, or a second live row of one project
    deleted: int = 0  # deleted in Glance: not imported

    @property
    def rows(self) -> int:
        """Every Glance row these stand for, imported or not."""
        return len(self.by_member) + self.skipped + self.deleted


def has_live_members(rows: list[GlanceMember]) -> bool:
    """Whether Glance would list any member of the image (what its Ocata migration asked to make an image shared)."""
    return any(not row.is_deleted for row in rows)


def plan_members(rows: list[GlanceMember], label: str, notes: Tally) -> PlannedMembers:
    """The image's live memberships by project; the skipped ones reported in notes."""
    planned = PlannedMembers()
    kept: dict[str, GlanceMember] = {}
    for row in rows:
        if row.is_deleted:
            planned.deleted += 1
            continue
        member = row.member
        if member is None or not member.strip() or "\x00" in member or len(member) > MEMBER_CHARS:
            notes.note(Finding.MEMBER_UNUSABLE, f"{label} member #{row.id}: {row.member_chars} characters")
            planned.skipped += 1
            continue
        other = kept.get(member)
        if other is None:
            kept[member] = row
            continue
        stays, goes = (row, other) if _answered_later(row, other) else (other, row)
        notes.note(Finding.MEMBER_DUPLICATE, f"{label} member #{goes.id}: same project as #{stays.id}")
        planned.skipped += 1
        kept[member] = stays
    for member, row in kept.items():
        planned.by_member[member] = PlannedMember(
            glance_id=row.id,
            status=_status(row, label, notes),
            created_at=row.created_at,
            updated_at=row.updated_at or row.created_at,
        )
    return planned


def _answered_later(row: GlanceMember, other: GlanceMember) -> bool:
    """Of two live rows of one project, the one changed last holds its latest answer (the later row on a tie)."""

    def when(member: GlanceMember) -> tuple[datetime, int]:
        return (member.updated_at or member.created_at or datetime.min, member.id)

    return when(row) > when(other)


def _status(row: GlanceMember, label: str, notes: Tally) -> MemberStatus:
    try:
        return MemberStatus(str(row.status))
    except ValueError:
        notes.note(Finding.MEMBER_UNKNOWN_STATUS, f"{label} member #{row.id}: status {str(row.status)[:40]!r}")
        return MemberStatus.PENDING
