"""`locquota audit`: compare every store with the database, report what disagrees, repair it with --fix.

See docs/audit.md. The walks are locations.services.audit, the repairs locations.services.audit_fix;
this module only runs them in order, shows progress and prints the report.
"""

import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import click
from sqlalchemy.exc import SQLAlchemyError

from locations.reaping import reapers
from locations.services.audit import AuditBatch, Auditor, AuditTally, Finding, Found
from locations.services.audit_fix import AuditRepairs, Repair
from locations.services.audit_runs import finish_audit, start_audit
from locations.services.glance_import import describe_error
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.scripting import LazyApp

AUDIT_BATCH = 500
GRACE_SECONDS = 3600
MAX_GRACE_SECONDS = 10 * 365 * 86400  # a bound timedelta arithmetic survives
REPAIR_NOTES = {
    Repair.FIXED: "fixed",
    Repair.CHANGED: "changed since it was found: left alone",
    Repair.KEPT: "not repaired",
}


@dataclass
class AuditReport:
    """What one run found and repaired; each finding is printed as it comes unless the report is JSON."""

    fix: bool
    echo: bool
    found: Counter[Finding] = field(default_factory=Counter)
    repaired: Counter[Finding] = field(default_factory=Counter)
    findings: list[tuple[Found, Repair | None]] = field(default_factory=list)

    def add(self, found: Found, repair: Repair | None) -> None:
        """Count one finding (and what --fix did with it)."""
        self.found[found.kind] += 1
        if repair is Repair.FIXED:
            self.repaired[found.kind] += 1
        if self.echo:
            click.echo(describe(found, repair))
        else:
            self.findings.append((found, repair))


def describe(found: Found, repair: Repair | None) -> str:
    """One tab-separated line: the kind, where, what, and what --fix did. Never a location's URL."""
    parts = [found.kind.value]
    if found.store is not None:
        parts.append(f"store {found.store}")
    if found.location_id is not None:
        parts.append(f"location {found.location_id}")
    if found.image_id is not None:
        parts.append(f"image {found.image_id}")
    if found.owner is not None:
        parts.append(f"owner {found.owner}")
    if found.url is not None:
        parts += [found.url, f"{found.size_bytes} bytes"]
    elif found.kind is Finding.MISSING and found.expected_bytes is not None:
        parts.append(f"expected {found.expected_bytes} bytes")
    parts.append(found.detail)
    if repair is not None:
        parts.append(REPAIR_NOTES[repair])
    return "\t".join(parts)


def as_json(found: Found, repair: Repair | None) -> dict[str, object]:
    """One finding in the JSON report."""
    return {
        "kind": found.kind.value,
        "store": found.store,
        "location_id": found.location_id,
        "image_id": str(found.image_id) if found.image_id is not None else None,
        "owner": found.owner,
        "url": found.url,
        "size_bytes": found.size_bytes,
        "expected_bytes": found.expected_bytes,
        "detail": found.detail,
        "repairable": found.is_repairable,
        "repair": repair.value if repair is not None else None,
    }


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds") + "Z"


@click.command()
@click.option("--fix", is_flag=True, help="Repair what is found (see docs/audit.md); without it, only report.")
@click.option("--json", "json_report", is_flag=True, help="Print one JSON document: the counts and every finding.")
@click.option(
    "--grace-seconds",
    type=click.IntRange(min=0, max=MAX_GRACE_SECONDS),
    default=GRACE_SECONDS,
    show_default=True,
    help="Data modified, and upload leases run out, more recently than this are not judged (uploads in flight).",
)
@click.option("--batch-size", type=click.IntRange(min=1, max=10000), default=AUDIT_BATCH, show_default=True)
@click.pass_obj
@click.pass_context
def audit(ctx: click.Context, app: LazyApp, fix: bool, json_report: bool, grace_seconds: int, batch_size: int) -> None:
    """Compare every store with the database: lost, corrupt, orphaned and partial data, stuck uploads.

    Exit status 1 when anything was found (with --fix too: it reports what it found and what it
    repaired) or a store could not be compared, 0 when the stores and the database agree. Safe while the
    service runs. The last run's counts are kept for the metrics (locquota_audit_findings).
    """
    settings, vault = app.registry["locquota.settings"], app.registry["locquota.url_vault"]
    with app.request() as request:
        stores, clock = request.find_service(StoreRegistry), request.find_service(Clock)
    unit_of_work = app.unit_of_work()
    reaper = reapers(app)
    audited = [name for name, _ in settings.backends] + ([stores.staging.name] if stores.staging else [])
    auditor = Auditor(
        unit_of_work, stores, audited, clock,
        grace=timedelta(seconds=grace_seconds), batch_size=batch_size, vault=vault,
    )  # fmt: skip
    repairs = AuditRepairs(unit_of_work, stores, clock, reaper.run_once, vault=vault) if fix else None
    report = AuditReport(fix=fix, echo=not json_report)
    try:
        with unit_of_work() as db:
            run_id = start_audit(db, clock, fix=fix)
        _walk(auditor, repairs, report)
        with unit_of_work() as db:
            finish_audit(
                db, clock, run_id, report.found, repaired=sum(report.repaired.values()),
                skipped=auditor.tally.skipped, unchecked_stores=len(auditor.tally.unchecked),
            )  # fmt: skip
    except SQLAlchemyError as exc:
        # Every repair is its own committed unit: a re-run finds what is left.
        raise click.ClickException(f"audit stopped ({describe_error(exc)}); run it again") from exc
    if json_report:
        document = {
            "run_id": run_id,
            "started_at": _timestamp(auditor.now),
            "finished_at": _timestamp(clock.now()),
            "fix": fix,
            "grace_seconds": grace_seconds,
            "found": {kind.value: report.found[kind] for kind in Finding},
            "fixed": {kind.value: report.repaired[kind] for kind in Finding},
            "checked": _checked(auditor.tally),
            "unchecked_stores": [{"store": item.store, "reason": item.reason} for item in auditor.tally.unchecked],
            "findings": [as_json(found, repair) for found, repair in report.findings],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _summarise(report, auditor.tally)
    if report.found or auditor.tally.unchecked:
        ctx.exit(1)


def _walk(auditor: Auditor, repairs: AuditRepairs | None, report: AuditReport) -> None:
    """The stores, then the locations, then the stuck uploads.

    Whether a store listed data decides whether its missing data may be marked lost; the reaper takes the
    data of stuck uploads, which they name, so it is never an orphan meanwhile.
    """
    hidden = not sys.stderr.isatty()  # a progress bar only for a person watching

    def record(batches: Iterable[AuditBatch]) -> None:
        for batch in batches:
            for found in batch.findings:
                report.add(found, repairs.repair(found) if repairs is not None else None)

    for name in auditor.store_names:
        # An inventory's length is unknown until it is walked: the bar counts batches.
        with click.progressbar(auditor.stored_data(name), label=f"store {name}", file=sys.stderr, hidden=hidden) as bar:
            record(bar)
    length = auditor.count_locations()
    with click.progressbar(length=length, label="locations", file=sys.stderr, hidden=hidden) as bar:
        for batch in auditor.locations():
            record([batch])
            bar.update(batch.scanned)
    stuck = [found for batch in auditor.stuck_images() for found in batch.findings]
    ended = repairs.end_stuck(stuck) if repairs is not None and stuck else {}
    for found in stuck:
        report.add(found, ended.get(found.image_id) if repairs is not None else None)


def _checked(tally: AuditTally) -> dict[str, int]:
    return {
        "locations": tally.locations,
        "skipped_locations": tally.skipped,
        "stored_data": tally.stored,
        "too_recent": tally.too_recent,
    }


def _summarise(report: AuditReport, tally: AuditTally) -> None:
    """One line per kind with its count (and what was fixed), what was looked at, and what to do next."""
    for kind in Finding:
        fixed = f"  fixed {report.repaired[kind]}" if report.fix else ""
        click.echo(f"{kind.value:<11}{report.found[kind]:>8}{fixed}")
    skipped = f" ({tally.skipped} in stores not configured here: skipped)" if tally.skipped else ""
    recent = f" ({tally.too_recent} too recent to judge)" if tally.too_recent else ""
    click.echo(f"checked {tally.locations} live locations{skipped} and {tally.stored} pieces of stored data{recent}")
    for item in tally.unchecked:
        click.echo(f"warning: store {item.store} was not compared: {item.reason}", err=True)
    total = sum(report.found.values())
    if total and report.fix:
        fixed = sum(report.repaired.values())
        click.echo(f"repaired {fixed} of {total} findings; run locquota audit again after the scrubber's next pass")
    elif total:
        click.echo("run with --fix to repair (see docs/audit.md)")
