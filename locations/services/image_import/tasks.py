"""Import tasks: the row Glance shows as a task, the lease a worker holds on it, and the image's import lock.

A task is created by the import request with its lease already granted to the process that will run
it (locquota.leases): if that process dies before or while running it, the lease runs out and the
import reaper ends the task. The image carries Glance's properties: `os_glance_import_task` (the lock:
one import at a time), `os_glance_importing_to_stores` (stores still to do) and
`os_glance_failed_import` (stores that failed).
"""

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from locations.models import UNFINISHED_TASK_STATUSES, Image, ImageProperty, Task, TaskStatus
from locquota.clock import Clock
from locquota.leases import LeaseColumns, LeaseTerms, new_holder, renew

TASK_TYPE = "api_image_import"
TASK_LEASE = LeaseColumns(Task.holder, Task.lease_expires_at)
TASK_TIME_TO_LIVE = timedelta(hours=48)  # Glance's task_time_to_live: a finished task is shown this long
IMPORT_LOCK = "os_glance_import_task"
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"


def store_list(value: str | None) -> list[str]:
    """A comma-separated store list property as a list (Glance's spelling: `fast,cheap`)."""
    return [name for name in (value or "").split(",") if name]


def get_property(image: Image, name: str) -> str | None:
    """An image property's value, None if it is not set."""
    return next((prop.value for prop in image.properties if prop.name == name), None)


def set_property(image: Image, name: str, value: str | None) -> None:
    """Set (or with None remove) one image property."""
    existing = next((prop for prop in image.properties if prop.name == name), None)
    if value is None:
        if existing is not None:
            image.properties.remove(existing)
    elif existing is None:
        image.properties.append(ImageProperty(name=name, value=value))
    else:
        existing.value = value


def merge_stores(image: Image, name: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
    """Add stores to (and remove stores from) a store list property, keeping its order."""
    removed = set(remove)
    stores = [store for store in store_list(get_property(image, name)) if store not in removed]
    stores += [store for store in add if store not in stores and store not in removed]
    set_property(image, name, ",".join(stores))


class TaskLease:
    """One worker's lease on one task; what it changes later is conditional on still holding it."""

    def __init__(self, db: Session, clock: Clock, terms: LeaseTerms, task_id: uuid.UUID, holder: str) -> None:
        self._db, self._clock, self._terms = db, clock, terms
        self.task_id, self.holder = task_id, holder
        self.expires_at = clock.now()

    def hold(self) -> Task | None:
        """The task, locked until the caller's commit, if this lease still holds it."""
        return self._db.scalar(
            select(Task).where(Task.id == self.task_id, TASK_LEASE.held_by(self.holder)).with_for_update()
        )

    def renew_due(self, now: datetime) -> bool:
        """Whether half the lease is spent."""
        return self._terms.renewal_due(self.expires_at, now)

    def renew(self, *, message: str | None = None) -> bool:
        """Extend the lease (and say how far the task got); False if it was taken over: stop working."""
        now = self._clock.now()
        until = self._terms.until(now)
        if not renew(self._db, TASK_LEASE, Task.id == self.task_id, self.holder, until):
            return False
        if message is not None:
            task = self._db.get(Task, self.task_id)
            if task is not None:
                task.message, task.updated_at = message, now
        self.expires_at = until
        return True


def finish_task(task: Task, clock: Clock, status: TaskStatus, message: str) -> None:
    """A task's end: its status and message, shown for Glance's time to live, the lease released."""
    now = clock.now()
    task.status, task.message, task.updated_at = status, message[:1024], now
    task.expires_at = now + TASK_TIME_TO_LIVE
    if status is TaskStatus.SUCCESS:
        task.result = {"image_id": str(task.image_id)}
    task.holder = task.lease_expires_at = None


def shown_task(db: Session, task_id: uuid.UUID, now: datetime) -> Task | None:
    """The task, unless there is none or it has expired (GET /v2/tasks/{id})."""
    return db.scalar(select(Task).where(Task.id == task_id, (Task.expires_at.is_(None)) | (Task.expires_at >= now)))


def tasks_of_image(db: Session, image_id: uuid.UUID, now: datetime) -> list[Task]:
    """The image's tasks that have not expired, oldest first (GET /v2/images/{id}/tasks)."""
    return list(
        db.scalars(
            select(Task)
            .where(Task.image_id == image_id, (Task.expires_at.is_(None)) | (Task.expires_at >= now))
            .order_by(Task.created_at, Task.id)
        )
    )


def imports_in_flight(db: Session, now: datetime) -> tuple[int, int]:
    """How many import tasks have not ended, and how many of those hold a lease that ran out (a dead worker)."""
    row = db.execute(
        select(func.count(), func.count(case((TASK_LEASE.expired(now), 1))))
        .select_from(Task)
        .where(Task.status.in_(UNFINISHED_TASK_STATUSES))
    ).one()
    return row[0], row[1]


def renew_waiting(db: Session, task_ids: set[uuid.UUID], holder: str, until: datetime) -> None:
    """Extend holder's leases on tasks that have not started (waiting for a worker thread)."""
    db.execute(
        update(Task)
        .where(Task.id.in_(task_ids), TASK_LEASE.held_by(holder), Task.status == TaskStatus.PENDING)
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )


def run_out_task(image: Image, now: datetime) -> Task:
    """A task for an image stuck in importing without one, its lease already run out: the reaper ends it.

    (`locquota audit --fix`'s repair: the import reaper then releases staged data and returns the image to
    queued, as for any import whose worker died.)
    """
    return Task(
        id=uuid.uuid4(),
        type=TASK_TYPE,
        status=TaskStatus.PROCESSING,
        owner=image.owner,
        image_id=image.id,
        task_input={
            "image_id": str(image.id),
            "import_req": {"method": {"name": "glance-direct"}, "all_stores_must_succeed": True},
            "backend": [],
        },
        message="",
        created_at=now,
        updated_at=now,
        holder=new_holder("audit"),
        lease_expires_at=now - timedelta(seconds=1),
    )
