"""The runs of `locquota audit`: one row each, with what it found by kind; the metrics read the last finished one."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import AuditRun
from locations.services.audit import Finding
from locquota.clock import Clock


def start_audit(db: Session, clock: Clock, *, fix: bool) -> int:
    """Record a run that has started; its counts are written when it finishes."""
    counts = dict.fromkeys((kind.value for kind in Finding), 0)
    run = AuditRun(started_at=clock.now(), fixed=fix, repaired=0, skipped=0, unchecked_stores=0, **counts)
    db.add(run)
    db.flush()
    return run.id


def finish_audit(
    db: Session,
    clock: Clock,
    run_id: int,
    found: Mapping[Finding, int],
    *,
    repaired: int,
    skipped: int,
    unchecked_stores: int,
) -> None:
    """Record what a run found (and, with --fix, repaired)."""
    run = db.get_one(AuditRun, run_id)
    run.finished_at = clock.now()
    for kind in Finding:
        setattr(run, kind.value, found.get(kind, 0))
    run.repaired, run.skipped, run.unchecked_stores = repaired, skipped, unchecked_stores


@dataclass(frozen=True, slots=True)
class LastAudit:
    """What the last finished `locquota audit` found, for the metrics (all 0 if none ever finished)."""

    finished_at: datetime | None
    findings: dict[Finding, int]


def last_audit(db: Session) -> LastAudit:
    """The last finished run (one row read by primary key order: the table holds one row a run)."""
    run = db.scalars(
        select(AuditRun).where(AuditRun.finished_at.is_not(None)).order_by(AuditRun.id.desc()).limit(1)
    ).first()
    if run is None:
        return LastAudit(None, dict.fromkeys(Finding, 0))
    return LastAudit(run.finished_at, {kind: int(getattr(run, kind.value)) for kind in Finding})
