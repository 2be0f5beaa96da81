"""The reaper: ends uploads whose lease ran out (a killed worker, a database outage, a lost request).

It takes the dead upload's lease over first, in its own unit of work, so the request that held it
(should it still be alive) can neither renew nor land it. Then, per upload: what is at the names the
upload recorded is looked up in the store, and one unit of work returns the image to queued,
releases image_count_uploading, records that data as pending_delete locations due now, and removes
the lease (upload_leases.hand_over). The scrubber deletes the data exactly once. Run by the scrubber
daemon before each pass, and as `locquota reap`. A reaper that dies mid-way leaves its own lease to
run out: the next one takes over again.
"""

import logging
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy import select, true
from sqlalchemy.orm import Session

from locations.models import Image, Upload
from locations.services.data_references import DataKeys, DataReferences
from locations.services.lifecycle import LocationLifecycle
from locations.services.upload_leases import UPLOAD_LEASE, FoundData, find_data, hand_over
from locations.stores.base import StoreError, StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.leases import LeaseTerms, new_holder, take_over
from locquota.scripting import UnitOfWork
from locquota.write_conflicts import run_unit
from metrics.instruments import UPLOADS_REAPED

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    """What one pass did."""

    uploads: int = 0  # dead uploads ended
    locations: int = 0  # pieces of their data sent to the scrubber
    imports: int = 0  # dead import tasks ended (image_import.reaper)


@dataclass(frozen=True, slots=True)
class _Taken:
    image_id: uuid.UUID
    owner: str
    upload: Upload  # detached copy: store and sealed names


class UploadReaper:
    """One reaper; `unit_of_work()` yields a session inside a transaction that commits on exit."""

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        stores: StoreRegistry,
        clock: Clock,
        terms: LeaseTerms,
        *,
        batch_size: int,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._unit, self._stores, self._clock, self._terms = unit_of_work, stores, clock, terms
        self._batch_size, self._vault = batch_size, vault
        self.holder = new_holder("reaper")

    def run_once(self, stop: threading.Event | None = None) -> ReapReport:
        """End every upload whose lease has run out, batch after batch (stop: after the batch in flight)."""
        stop = stop or threading.Event()
        report = ReapReport()
        while not stop.is_set():
            taken = self._take_over()
            if not taken:
                break
            for item in taken:
                try:
                    found = find_data(self._stores, self._vault, item.upload)  # store calls: outside a transaction
                except StoreError as exc:
                    # The store cannot say what is there now: this lease (now the reaper's) runs out again
                    # and a later pass looks again. Nothing is concluded from a store that is down.
                    log.warning("image %s: its upload's store cannot be examined now (%s)", item.image_id, exc)
                    continue
                sent = self._hand_over(item, found)
                if sent is None:
                    continue
                report.uploads += 1
                report.locations += sent
                UPLOADS_REAPED.inc()
                log.warning(
                    "image %s: upload lease ran out; image back to queued, %s piece(s) of data sent to the scrubber",
                    item.image_id,
                    sent,
                )
        return report

    def _take_over(self) -> list[_Taken]:
        """Take up to a batch of run-out leases (SKIP LOCKED: reapers on every node stay apart)."""
        return run_unit(self._unit, self._take_over_in)

    def _take_over_in(self, db: Session) -> list[_Taken]:
        now = self._clock.now()
        until = self._terms.until(now)
        ids = take_over(db, UPLOAD_LEASE, Upload.image_id, true(), self.holder, now, until, self._batch_size)
        if not ids:
            return []
        rows = db.execute(
            select(Upload, Image.owner)
            .join(Image, Image.id == Upload.image_id)
            .where(Upload.image_id.in_(ids), UPLOAD_LEASE.held_by(self.holder))
            .order_by(Image.owner, Upload.image_id)
        ).all()
        db.expunge_all()
        return [_Taken(upload.image_id, owner, upload) for upload, owner in rows]

    def _hand_over(self, item: _Taken, found: list[FoundData]) -> int | None:
        """One unit: the upload ended and its data pending_delete; None if another reaper has it now."""
        return run_unit(self._unit, lambda db: self._hand_over_in(db, item, found))

    def _hand_over_in(self, db: Session, item: _Taken, found: list[FoundData]) -> int | None:
        lifecycle = LocationLifecycle(db, self._clock, vault=self._vault)
        lifecycle.lock_usage([item.owner])  # usage first, as every writer locks
        upload = db.scalar(
            select(Upload).where(Upload.image_id == item.image_id, UPLOAD_LEASE.held_by(self.holder)).with_for_update()
        )
        if upload is None:
            return None
        image = db.scalars(select(Image).where(Image.id == item.image_id).with_for_update()).one()
        references = DataReferences(db, DataKeys(self._stores, self._vault))
        return len(hand_over(db, lifecycle, references, upload, image, found))
