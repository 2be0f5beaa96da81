"""The import reaper: ends import tasks whose lease ran out (a killed worker, an outage, a restarted node).

It takes the dead task's lease over (SKIP LOCKED, then a conditional update: exactly one reaper per
task, however many nodes run one), looks at what each copy in flight left at its names (store calls,
outside any transaction), and in one unit hands that data to the scrubber, releases the copies'
reservations and ends the task as failed (ending.end_import: staged data released, the image back to
queued when nothing landed, the lock removed). A store that cannot answer leaves the task for a later
pass. Runs beside the upload reaper: before every scrub-daemon pass, in `locquota scrub` and `locquota reap`.
"""

import logging
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

from pyramid.request import Request
from sqlalchemy import select

from locations.models import UNFINISHED_TASK_STATUSES, Image, Task, TaskCopy
from locations.services.data_references import DataKeys, DataReferences
from locations.services.image_import.ending import end_import
from locations.services.image_import.tasks import TASK_LEASE, TaskLease
from locations.services.image_import.units import ImportTools
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrubbing import delete_now
from locations.services.upload_leases import FoundData, find_data, retire_found
from locations.services.upload_reaper import ReapReport, UploadReaper
from locations.stores.base import StoreError
from locquota.db import commit_and_begin
from locquota.leases import new_holder, take_over
from locquota.write_conflicts import run_and_commit
from quota.models import Resource
from quota.services.ledger import UsageLedger

log = logging.getLogger(__name__)
STOPPED = "The worker running this import stopped (its lease ran out); nothing it wrote was kept."


class ImportReaper:
    """One reaper; request() yields a request whose tm the reaper's units of work run in."""

    def __init__(
        self, request: Callable[[], AbstractContextManager[Request]], tools: ImportTools, *, batch_size: int
    ) -> None:
        self._request, self._tools, self._batch_size = request, tools, batch_size
        self.holder = new_holder("import-reaper")

    def run_once(self, stop: threading.Event | None = None) -> int:
        """End every import whose lease has run out; how many were ended."""
        stop = stop or threading.Event()
        ended = 0
        with self._request() as request, request.tm:
            while not stop.is_set():
                taken = self._take_over(request)
                if not taken:
                    break
                for task_id in taken:
                    ended += self._end(request, task_id)
        return ended

    def _take_over(self, request: Request) -> list[uuid.UUID]:
        def take() -> list[uuid.UUID]:
            now = self._tools.clock.now()
            unfinished = Task.status.in_(UNFINISHED_TASK_STATUSES)
            until = self._tools.terms.until(now)
            return take_over(request.db, TASK_LEASE, Task.id, unfinished, self.holder, now, until, self._batch_size)

        return run_and_commit(request.tm, take)

    def _end(self, request: Request, task_id: uuid.UUID) -> int:
        """One dead task ended; 0 if a store could not say what its copies left (a later pass tries again)."""
        db, tools = request.db, self._tools
        copies = list(db.scalars(select(TaskCopy).where(TaskCopy.task_id == task_id).order_by(TaskCopy.id)))
        db.expunge_all()
        found: dict[int, list[FoundData]] = {}
        for copy in copies:
            try:
                found[copy.id] = find_data(tools.stores, tools.vault, copy)
            except StoreError as exc:
                log.warning("import task %s: a copy's store cannot be examined now (%s)", task_id, exc)
                return 0
        ids = run_and_commit(request.tm, lambda: self._settle(request, task_id, found))  # again after a conflict
        if ids is None:
            return 0
        if ids:
            checkpoint = lambda: commit_and_begin(request.tm)  # noqa: E731
            delete_now(db, tools.clock, tools.stores, tools.scrub_policy, checkpoint, ids, vault=tools.vault)
            commit_and_begin(request.tm)
        log.warning(
            "import task %s: its lease ran out; ended as failed, %s piece(s) of data to scrub", task_id, len(ids)
        )
        return 1

    def _settle(self, request: Request, task_id: uuid.UUID, found: dict[int, list[FoundData]]) -> list[int] | None:
        """The task ended and its copies' data pending_delete; the location ids to delete, None if not ours now."""
        db, tools = request.db, self._tools
        owner = db.scalar(select(Image.owner).join(Task, Task.image_id == Image.id).where(Task.id == task_id))
        lifecycle = LocationLifecycle(db, tools.clock, vault=tools.vault)
        lifecycle.lock_usage([owner or ""])
        lease = TaskLease(db, tools.clock, tools.terms, task_id, self.holder)
        task = lease.hold()
        if task is None:
            return None
        image = db.get(Image, task.image_id)
        references = DataReferences(db, DataKeys(tools.stores, tools.vault))
        retired = []
        for copy in db.scalars(select(TaskCopy).where(TaskCopy.task_id == task_id)):
            UsageLedger(db, tools.clock).charge(image.owner, {Resource.IMAGE_SIZE_TOTAL: -copy.reserved_bytes})  # type: ignore[union-attr]
            retired += retire_found(lifecycle, references, image, copy.store, found.get(copy.id, []))  # type: ignore[arg-type]
            db.delete(copy)
        db.flush()
        ids = [location.id for location in retired]
        return ids + end_import(db, lifecycle, tools.stores, tools.vault, task, {}, error=STOPPED)


class Reapers:
    """The upload reaper, then the import reaper: what runs before every scrub pass and as `locquota reap`."""

    def __init__(self, uploads: UploadReaper, imports: ImportReaper) -> None:
        self._uploads, self._imports = uploads, imports

    def run_once(self, stop: threading.Event | None = None) -> ReapReport:
        """End dead uploads, then dead imports; what both did."""
        report = self._uploads.run_once(stop)
        report.imports = self._imports.run_once(stop)
        if report.uploads or report.imports:
            log.info(
                "reap pass: %s uploads and %s import tasks ended, %s pieces of data to scrub",
                report.uploads,
                report.imports,
                report.locations,
            )
        return report
