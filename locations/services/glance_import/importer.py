"""The import run: every batch read, planned and written in a transaction of its own, then usage settled.

Usage is not charged row by row: at the end every imported tenant is recounted and repaired, as `locquota
reconcile --fix` would.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta

from sqlalchemy import delete, func, inspect, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from locations.models import LIVE_LOCATION_STATUSES, ImageMember, Location
from locations.services.glance_import.planner import PlannedImage, Planner
from locations.services.glance_import.report import Finding, ImportReport, Tally, TenantUsageLine, describe_error
from locations.services.glance_import.source import GlanceSource
from locations.services.glance_import.writer import BatchWriter
from locations.services.lifecycle import image_counts
from locations.services.recount import recount
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.scripting import UnitOfWork
from quota.models import Resource, UsageDrift
from quota.services.reconcile import Reconciler

FIRST_ANALYZE = 1000  # images written before the first ANALYZE of the tables the import fills
ANALYZED_TABLES = ("images", "image_properties", "image_tags", "locations", "image_members")


class TargetNotReadyError(Exception):
    """locquota's database lacks what the import needs (not migrated); nothing was written."""


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
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._unit_of_work, self._stores, self._clock, self._vault = unit_of_work, stores, clock, vault
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
                tally.counts["members.read"] += len(glance.members)
                image = planner.plan(glance, tally)
                if image is None:
                    tally.counts["images.skipped"] += 1
                    tally.counts["locations.skipped"] += len(glance.locations)
                    tally.counts["members.skipped"] += len(glance.members)
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
            inspector = inspect(db.connection())
            columns = {column["name"] for column in inspector.get_columns(Location.__tablename__)}
            has_members = inspector.has_table(ImageMember.__tablename__)
        if "glance_location_id" not in columns or not has_members:
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
                tally.counts["members.skipped"] += image.members.rows
        return tally

    def _write_images(self, planned: list[PlannedImage]) -> Tally:
        tally = Tally()
        if not planned:
            return tally
        with self._unit_of_work() as db:
            tally.merge(BatchWriter(db, self._clock, dry_run=self._dry_run, vault=self._vault).write(planned))
        for image in planned:
            tally.merge(image.tally)
            tally.counts["locations.skipped"] += image.skipped_locations
            tally.counts["members.skipped"] += image.members.skipped
            tally.counts["members.deleted"] += image.members.deleted
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


def _is_outage(exc: DBAPIError) -> bool:
    """The database is gone or busy (not this row's fault): stop rather than fail every image alike."""
    return isinstance(exc, OperationalError) or exc.connection_invalidated
