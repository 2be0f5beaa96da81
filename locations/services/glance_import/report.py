"""What the import tells the operator: counts, findings with a few examples each, and the closing summary.

Every step reports through a Tally, and URLs are masked here, in one place: a location URL may hold credentials.
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

# Larger values are not read at all (their length is): a hostile row cannot blow up the importer's memory.
# Defined here rather than in source.py because the summary's text states it.
MAX_METADATA_CHARS = 65536
EXAMPLES_PER_FINDING = 10
MAX_EXAMPLE_CHARS = 240
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)@")


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
    # One membership is skipped; its image is imported.
    MEMBER_UNUSABLE = "member skipped: project empty, too long or with a NUL character"
    MEMBER_DUPLICATE = "member skipped: same project as another live membership of the image (the last answer kept)"
    # Imported, and worth a look.
    OUTSIDE_STORE = "flagged: URL outside every configured store (imported; locquota never deletes or serves it)"
    SCHEME_NOT_ENABLED = "flagged: URL scheme of no enabled store (imported; locquota never deletes or serves it)"
    URL_CREDENTIALS = "flagged: URL carries credentials (masked here; sealed when keys are set)"
    SHARED_URL = "flagged: URL also referenced by another image's location"
    METADATA_MALFORMED = "flagged: location metadata is not a JSON object (imported as {})"
    METADATA_TOO_LARGE = f"flagged: location metadata over {MAX_METADATA_CHARS} characters (imported as {{}})"
    SIZE_UNKNOWN = "flagged: image holds data but its size is NULL (its locations are charged 0 bytes)"
    SIZE_INVALID = "flagged: image size is not a non-negative integer (imported as NULL)"
    UNKNOWN_LOCATION_STATUS = "flagged: unknown location status (taken from the image status)"
    VISIBILITY_UNKNOWN = "flagged: unknown visibility (imported private)"
    MEMBER_UNKNOWN_STATUS = "flagged: unknown member status (imported pending)"
    TIMESTAMP_UNREADABLE = "flagged: image created_at missing or unreadable (the import's time, kept on re-runs)"
    PROPERTY_SKIPPED = "flagged: property or tag with an empty or too long name (not imported)"
    ACTIVE_WITHOUT_DATA = "flagged: active image without an active location"
    KEPT_DELETED = "flagged: location already deleted in locquota (kept deleted: deleted is final)"
    # Decisions applied, for the record.
    RESTORED = "noted: locations of an image restored by glance-scrubber --restore, made active"
    PRE_JUNO_REMOVED = "noted: pre-Juno location removed under a live image (deleted = 1), imported pending_delete"
    DEACTIVATED = "noted: deactivated image imported deactivated (downloads refused but to admins)"
    UPLOAD_ABANDONED = "noted: image in saving/uploading/importing imported queued (no data)"
    SHARED_BEFORE_OCATA = "noted: non-public image with members and no visibility (before Ocata) imported shared"


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
            f"members\t{counts['members.read']} read, {self._outcomes('members', written)},"
            f" {counts['members.skipped']} skipped, {counts['members.deleted']} not imported (deleted in Glance),"
            f" {counts['members.removed']} {'would be removed' if self.dry_run else 'removed'} (no longer in Glance)",
            "members by status\t" + self._by_prefix("member.status."),
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


def describe_error(exc: BaseException) -> str:
    """The first line of a driver's message, without statement parameters (they may hold URLs), masked."""
    origin = getattr(exc, "orig", None) or exc
    text = str(origin).strip().splitlines()[0] if str(origin).strip() else ""
    return mask_url(f"{type(origin).__name__}: {text}"[:MAX_EXAMPLE_CHARS])
