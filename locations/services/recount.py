"""The true usage of tenants, counted from the images and locations tables, for `locquota reconcile`.

Set-based: one grouped query per table for a batch of tenants, so memory stays flat however many
locations a tenant has. The rules are the lifecycle's (lifecycle.image_counts, CHARGED_SPACE).
"""

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from locations.models import (
    LIVE_LOCATION_STATUSES,
    UPLOADING_IMAGE_STATUSES,
    Image,
    Location,
    StagedData,
    Task,
    TaskCopy,
)
from locations.services.lifecycle import CHARGED_SPACE, UNCOUNTED_IMAGE_STATUSES
from locquota.clock import Clock
from locquota.scripting import UnitOfWork
from quota.models import Resource
from quota.services.reconcile import Drift, Reconciler, TenantTotals
from quota.services.usage import Space


def owners_after(db: Session, after: str | None, limit: int) -> list[str]:
    """Image owners in id order after `after` (the index on images' owner serves it)."""
    query = select(Image.owner).distinct().order_by(Image.owner).limit(limit)
    if after is not None:
        query = query.where(Image.owner > after)
    return list(db.scalars(query))


def recount(db: Session, tenant_ids: list[str]) -> list[TenantTotals]:
    """What these tenants really use now."""
    totals = {tenant_id: TenantTotals(tenant_id) for tenant_id in tenant_ids}
    counts = db.execute(
        select(
            Image.owner,
            func.sum(case((Image.status.not_in(UNCOUNTED_IMAGE_STATUSES), 1), else_=0)),
            func.sum(case((Image.status.in_(UPLOADING_IMAGE_STATUSES), 1), else_=0)),
        )
        .where(Image.owner.in_(tenant_ids))
        .group_by(Image.owner)
    )
    for owner, images, uploading in counts:
        totals[owner].totals[Resource.IMAGE_COUNT_TOTAL] = int(images or 0)
        totals[owner].totals[Resource.IMAGE_COUNT_UPLOADING] = int(uploading or 0)
    space = db.execute(
        select(
            Image.owner, Location.store, Location.status, func.sum(func.coalesce(Location.size_bytes, 0)), func.count()
        )
        .join(Location.image)
        .where(Image.owner.in_(tenant_ids), Location.status.in_(LIVE_LOCATION_STATUSES))
        .group_by(Image.owner, Location.store, Location.status)
    )
    for owner, store, status, size_bytes, locations in space:
        tenant = totals[owner]
        tenant.space[(store, CHARGED_SPACE[status])] = Space(int(size_bytes), int(locations))
        tenant.totals[Resource.IMAGE_SIZE_TOTAL] += int(size_bytes)
    # Space admitted ahead of a copy in flight is charged as the copy's data will be (SPEC section 8b).
    reserved = db.execute(
        select(Image.owner, func.sum(TaskCopy.reserved_bytes))
        .join(Task, Task.id == TaskCopy.task_id)
        .join(Image, Image.id == Task.image_id)
        .where(Image.owner.in_(tenant_ids))
        .group_by(Image.owner)
    )
    for owner, reserved_bytes in reserved:
        totals[owner].totals[Resource.IMAGE_SIZE_TOTAL] += int(reserved_bytes or 0)
    staged = db.execute(
        select(Image.owner, func.sum(StagedData.size_bytes))
        .join(Image, Image.id == StagedData.image_id)
        .where(Image.owner.in_(tenant_ids))
        .group_by(Image.owner)
    )
    for owner, staged_bytes in staged:
        totals[owner].totals[Resource.IMAGE_STAGE_TOTAL] = int(staged_bytes or 0)
    return list(totals.values())


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One reconciled batch: its tenants and their drift."""

    tenants: list[str]
    drift: list[Drift]


def reconcile_batches(unit_of_work: UnitOfWork, clock: Clock, batch_size: int, *, fix: bool) -> Iterator[BatchResult]:
    """Reconcile every tenant (an image owner, or one with a usage row), a batch per transaction."""
    after: str | None = None
    while True:
        with unit_of_work() as db:
            reconciler = Reconciler(db, clock)
            tenants = sorted(
                set(owners_after(db, after, batch_size)) | set(reconciler.tenants_after(after, batch_size))
            )
            tenants = tenants[:batch_size]
            if not tenants:
                return
            reconciler.lock(tenants)
            drift = reconciler.compare(recount(db, tenants), fix=fix)
        yield BatchResult(tenants, drift)
        after = tenants[-1]
