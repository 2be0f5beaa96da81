"""Operator commands of the locations package: scrub, reap, restore, purge, reconcile, import-glance, locations."""

import os
import signal
import sys
import threading
import uuid
from datetime import timedelta
from types import FrameType

import click
from prometheus_client import start_http_server
from sqlalchemy.exc import SQLAlchemyError

from locations.reaping import reapers
from locations.scrubber import Scrubber
from locations.services.data_references import DataKeys
from locations.services.data_rekey import record_collisions, rekey_batches, rows_to_rekey
from locations.services.deletion import DeletionService
from locations.services.factories import scrub_policy
from locations.services.glance_import import (
    GlanceImporter,
    GlanceSource,
    GlanceSourceError,
    TargetNotReadyError,
    describe_error,
)
from locations.services.purge import purge_deleted_locations, purge_expired_tasks
from locations.services.recount import reconcile_batches
from locations.services.upload_reaper import ReapReport
from locations.services.url_encryption import reseal_batches, rows_to_scan, scrub_old_copies
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import UrlVault
from locquota.errors import LocquotaError
from locquota.scripting import LazyApp
from locquota.settings import SettingsError
from quota.services.reconcile import Reconciler

PURGE_BATCH = 1000
RECONCILE_BATCH = 500
IMPORT_BATCH = 500
RESEAL_BATCH = 500
REKEY_BATCH = 500


def serve_metrics(address: str, port: int) -> None:
    """Serve the scrubber's counters over HTTP, from a daemon thread (prometheus_client's own server)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # In multiprocess mode the values live in files that the API's /metrics sums; serving this
        # process's registry here would show nothing. Pick one.
        raise click.UsageError("--metrics-port serves this process alone: unset PROMETHEUS_MULTIPROC_DIR for it")
    try:
        start_http_server(port, addr=address)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on {address}:{port}: {exc}") from exc


def _stop_on_sigterm() -> threading.Event:
    """SIGTERM and SIGINT let the batch in flight finish, then the command exits cleanly."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


@click.command()
@click.option("--daemon", is_flag=True, help="Keep scrubbing, waking every locquota.wakeup_time seconds.")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    help="Serve this process's scrubber metrics for Prometheus on this port (with --daemon).",
)
@click.option("--metrics-address", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.pass_obj
def scrub(app: LazyApp, daemon: bool, metrics_port: int | None, metrics_address: str) -> None:
    """Delete the data of pending_delete locations whose scrub time has passed (safe on every node)."""
    settings = app.registry["locquota.settings"]  # the app first: it makes the series a first scrape must see
    if metrics_port is not None:
        serve_metrics(metrics_address, metrics_port)
    with app.request() as request:
        stores, clock = request.find_service(StoreRegistry), request.find_service(Clock)
    scrubber = Scrubber(
        app.unit_of_work(), stores, clock, scrub_policy(settings),
        batch_size=settings.scrub_batch_size, pool_size=settings.scrub_pool_size,
        vault=app.registry["locquota.url_vault"],
    )  # fmt: skip
    reaper = reapers(app)
    stop = _stop_on_sigterm()
    if daemon:
        click.echo(f"scrubber {scrubber.worker}: waking every {settings.wakeup_time_seconds} s")
        scrubber.run_forever(stop, settings.wakeup_time_seconds, reaper)
        return
    _echo_reaped(reaper.run_once(stop))
    if sys.stdout.isatty():
        with click.progressbar(length=scrubber.count_due(), label="scrubbing") as bar:
            report = scrubber.run_once(stop, on_batch=bar.update)
    else:
        report = scrubber.run_once(stop)
    counts = ", ".join(f"{outcome} {count}" for outcome, count in sorted(report.outcomes.items())) or "nothing due"
    click.echo(f"scrubbed in {report.batches} batches: {counts}")


def _echo_reaped(report: ReapReport) -> None:
    if report.uploads:
        click.echo(f"reaped {report.uploads} uploads whose lease ran out: {report.locations} pieces of data to scrub")
    if report.imports:
        click.echo(f"ended {report.imports} import tasks whose lease ran out")


@click.command()
@click.pass_obj
def reap(app: LazyApp) -> None:
    """End uploads and imports whose lease ran out: their data to the scrubber (`scrub` runs this too)."""
    report = reapers(app).run_once(_stop_on_sigterm())
    _echo_reaped(report)
    if not report.uploads and not report.imports:
        click.echo("no upload or import lease has run out")


@click.command()
@click.argument("image_id", type=click.UUID)
@click.pass_obj
def restore(app: LazyApp, image_id: uuid.UUID) -> None:
    """Return a pending_delete image to active before the scrubber deletes its data."""
    try:
        with app.request() as request, request.tm:
            request.find_service(DeletionService).restore(image_id)
    except LocquotaError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"restored {image_id}")


@click.command()
@click.option("--older-than", "days", type=click.IntRange(min=0), required=True, help="Age in days since deletion.")
@click.pass_obj
def purge(app: LazyApp, days: int) -> None:
    """Remove the rows of locations deleted more than DAYS days ago, and of import tasks no longer shown."""
    with app.request() as request:
        clock = request.find_service(Clock)
    count = purge_deleted_locations(app.unit_of_work(), clock, timedelta(days=days), PURGE_BATCH)
    tasks = purge_expired_tasks(app.unit_of_work(), clock, PURGE_BATCH)
    click.echo(f"purged {count} deleted location rows and {tasks} expired import task rows")


@click.command()
@click.option("--fix", is_flag=True, help="Repair the drift found (without it, only report).")
@click.option(
    "--check",
    is_flag=True,
    help="Only report, record nothing, and exit 1 if any figure drifted (for cron and monitoring).",
)
@click.option("--batch-size", type=click.IntRange(min=1, max=10000), default=RECONCILE_BATCH, show_default=True)
@click.pass_obj
def reconcile(app: LazyApp, fix: bool, check: bool, batch_size: int) -> None:
    """Recount every tenant's usage from the locations table; report drift, and repair it with --fix.

    Safe while the service runs: each batch of tenants is locked while it is recounted. The drift
    found is kept in the database (usage_drift) for the metrics until the next run; with --check the
    database is left exactly as it was (each batch is rolled back) and drift makes the exit status 1.
    """
    if fix and check:
        raise click.UsageError("--check changes nothing and --fix repairs: choose one")
    with app.request() as request, request.tm:
        clock = request.find_service(Clock)
        reconciler = Reconciler(request.db, clock)
        run_id, total = (None if check else reconciler.start_run()), reconciler.count_tenants()
    unit_of_work = app.rolled_back_unit_of_work() if check else app.unit_of_work()
    tenants = drifted = figures = 0
    with click.progressbar(length=total, label="reconciling", file=sys.stderr) as bar:
        for batch in reconcile_batches(unit_of_work, clock, batch_size, fix=fix):
            tenants += len(batch.tenants)
            drifted += len({drift.tenant_id for drift in batch.drift})
            figures += len(batch.drift)
            for drift in batch.drift:
                figures_of = f"{drift.tenant_id}\t{drift.figure}"
                click.echo(f"drift\t{figures_of}\trecorded {drift.recorded}\tactual {drift.actual}")
            bar.update(len(batch.tenants))
    if run_id is not None:
        with app.request() as request, request.tm:
            Reconciler(request.db, clock).finish_run(run_id, tenants=tenants, drifted_tenants=drifted, repaired=fix)
    outcome = "found (run with --fix to repair)"
    if fix:
        outcome = "repaired"
    elif check:
        outcome = "found (checked only: nothing recorded)"
    click.echo(f"reconciled {tenants} tenants: {figures} drifted figures in {drifted} tenants {outcome}")
    if check and figures:
        raise click.exceptions.Exit(1)


@click.command("import-glance")
@click.argument("url")
@click.option("--dry-run", is_flag=True, help="Read, map and compare, and report; write nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=10000),
    default=IMPORT_BATCH,
    show_default=True,
    help="Images per transaction (and tenants per usage recount).",
)
@click.pass_obj
def import_glance(app: LazyApp, url: str, dry_run: bool, batch_size: int) -> None:
    """Import images, locations and members from the Glance database at URL (sqlite:///, postgresql://, mysql://).

    Safe to run again: images keep Glance's ids, and rows already imported are updated, never doubled.
    At the end every imported tenant's usage is recounted and set. See docs/import.md.
    """
    settings = app.registry["locquota.settings"]
    with app.request() as request:
        stores, clock = request.find_service(StoreRegistry), request.find_service(Clock)
    try:
        source = GlanceSource(url)
    except GlanceSourceError as exc:
        raise click.ClickException(str(exc)) from exc
    importer = GlanceImporter(
        app.unit_of_work(), stores, clock,
        scrub_delay=timedelta(seconds=settings.scrub_time_seconds), batch_size=batch_size, dry_run=dry_run,
        vault=app.registry["locquota.url_vault"],
    )  # fmt: skip
    kind = "usage from Glance's rows (dry run)" if dry_run else "usage"
    try:
        with source:
            click.echo(f"importing from {source.display_url}{' (dry run)' if dry_run else ''}")
            with click.progressbar(length=source.count_images(), label="images", file=sys.stderr) as bar:
                report = importer.import_images(source, on_batch=bar.update)
            with click.progressbar(length=source.count_owners(), label="usage", file=sys.stderr) as bar:
                for lines in importer.settle_usage(source, report):
                    for line in lines:
                        click.echo(
                            f"{kind}\t{line.tenant_id}\timage_size_total {line.image_size_total}"
                            f"\timage_count_total {line.image_count_total}"
                        )
                    bar.update(len(lines))
    except TargetNotReadyError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        # A lost connection or a locked database: what is committed is whole batches; a re-run goes on from it.
        raise click.ClickException(f"import stopped ({describe_error(exc)}); run it again to finish") from exc
    for line in report.summary():
        click.echo(line)


@click.group()
def locations() -> None:
    """Location rows: data keys (docs/lifecycle.md), URL encryption and key rotation (docs/encryption.md)."""


def data_keys(app: LazyApp) -> DataKeys:
    """The deployment's stores and URL key ring, as the re-keying and re-sealing passes need them."""
    with app.request() as request:
        return DataKeys(request.find_service(StoreRegistry), app.registry["locquota.url_vault"])


def rekey_all(app: LazyApp, batch_size: int, *, everything: bool) -> None:
    """Re-key rows from their stores' canonical keys (progress on stderr), then report data shared across tenants."""
    unit_of_work, keys = app.unit_of_work(), data_keys(app)
    changed = unkeyed = 0
    try:
        with click.progressbar(
            length=rows_to_rekey(unit_of_work, everything=everything), label="re-keying", file=sys.stderr
        ) as bar:
            for batch in rekey_batches(unit_of_work, keys, batch_size, everything=everything):
                changed, unkeyed = changed + batch.changed, unkeyed + batch.unkeyed
                bar.update(batch.scanned)
        with app.request() as request, request.tm:
            collisions = record_collisions(request.db, request.find_service(Clock))
    except SQLAlchemyError as exc:
        # Whole batches are committed; a re-run picks up the rows still to do.
        raise click.ClickException(f"stopped ({describe_error(exc)}); run it again to finish") from exc
    for collision in collisions:
        ids = ",".join(str(location_id) for location_id in collision.location_ids)
        click.echo(f"collision\t{collision.data_key_hash[:16]}\ttenants {','.join(collision.tenants)}\tlocations {ids}")
    unkeyed_note = f"; {unkeyed} rows keep their URL's text as key (see the log)" if unkeyed else ""
    click.echo(f"re-keyed {changed} locations{unkeyed_note}; data reached by more than one tenant: {len(collisions)}")


@locations.command()
@click.option(
    "--all", "everything", is_flag=True, help="Every row, not only those not keyed yet (after a store moves)."
)
@click.option("--batch-size", type=click.IntRange(min=1, max=10000), default=REKEY_BATCH, show_default=True)
@click.pass_obj
def rekey(app: LazyApp, everything: bool, batch_size: int) -> None:
    """Key every location by its store's canonical data key, and report data shared across tenants.

    Resumable and safe while the service runs; `locquota db upgrade` runs it after the schema migration.
    """
    rekey_all(app, batch_size, everything=everything)


def _reseal(app: LazyApp, batch_size: int, *, plaintext_only: bool, label: str) -> tuple[int, int]:
    """Run one pass with a progress bar on stderr; (rows re-sealed, rows no key opens)."""
    vault: UrlVault = app.registry["locquota.url_vault"]
    if not vault.is_enabled:
        raise click.ClickException(
            "no location encryption key is configured: set LOCQUOTA_LOCATION_ENCRYPTION_KEYS "
            "or locquota.location_encryption_key_file (see docs/encryption.md)"
        )
    unit_of_work = app.unit_of_work()
    resealed = unreadable = 0
    total = rows_to_scan(unit_of_work, plaintext_only=plaintext_only)
    try:
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            for batch in reseal_batches(unit_of_work, data_keys(app), batch_size, plaintext_only=plaintext_only):
                resealed, unreadable = resealed + batch.resealed, unreadable + batch.unreadable
                bar.update(batch.scanned)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        # Whole batches are committed; a re-run picks up the rows still to do.
        raise click.ClickException(f"stopped ({describe_error(exc)}); run it again to finish") from exc
    return resealed, unreadable


def _unreadable_note(unreadable: int) -> str:
    return f"; {unreadable} rows no configured key opens (left as they are, see the log)" if unreadable else ""


@locations.command()
@click.option("--batch-size", type=click.IntRange(min=1, max=10000), default=RESEAL_BATCH, show_default=True)
@click.pass_obj
def encrypt(app: LazyApp, batch_size: int) -> None:
    """Seal every plaintext location URL under the primary key (resumable; safe while the service runs)."""
    resealed, unreadable = _reseal(app, batch_size, plaintext_only=True, label="encrypting")
    scrub_old_copies(app.registry["locquota.engine"])
    click.echo(f"encrypted {resealed} location URLs{_unreadable_note(unreadable)}")


@locations.command("rotate-key")
@click.option("--batch-size", type=click.IntRange(min=1, max=10000), default=RESEAL_BATCH, show_default=True)
@click.pass_obj
def rotate_key(app: LazyApp, batch_size: int) -> None:
    """Re-seal every location URL not under the primary key (the first of the ring) and re-hash it."""
    resealed, unreadable = _reseal(app, batch_size, plaintext_only=False, label="rotating")
    scrub_old_copies(app.registry["locquota.engine"])
    click.echo(f"re-sealed {resealed} location URLs under the primary key{_unreadable_note(unreadable)}")
    if unreadable:
        raise click.ClickException("some rows are unreadable: keep the old keys in the ring until they are dealt with")
