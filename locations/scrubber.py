"""The scrubber process: claims due pending_delete locations in batches and deletes their data.

Run it on every API node at once (`locquota scrub --daemon`): claims keep the workers apart, a dead
worker's claims expire, and a batch is the most a crash can leave half done. Memory stays flat
however long the backlog: one batch is held at a time.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Protocol

from sqlalchemy import func, select

from locations.models import Location
from locations.services.data_references import DataKeys, DataReferences
from locations.services.lifecycle import LocationLifecycle
from locations.services.scrub_recording import record_batch
from locations.services.scrubbing import (
    Claim,
    Deletion,
    Outcome,
    ScrubPolicy,
    claim,
    count,
    delete_data,
    due_filter,
    new_worker_id,
)
from locations.services.upload_reaper import ReapReport
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.scripting import UnitOfWork
from metrics.instruments import SCRUB_BATCH_DURATION, SCRUB_LAST_SUCCESS

log = logging.getLogger(__name__)


class Reaper(Protocol):
    """What ends dead uploads and imports before each pass (image_import.reaper.Reapers)."""

    def run_once(self, stop: threading.Event | None = None) -> ReapReport:
        """One pass over every lease that ran out."""
        ...


@dataclass
class ScrubReport:
    """What one pass did, by outcome."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    batches: int = 0

    @property
    def deleted(self) -> int:
        """Locations marked deleted (their data deleted, or kept for another reference)."""
        return self.outcomes[Outcome.DELETED] + self.outcomes[Outcome.SHARED]


class Scrubber:
    """One worker. `unit_of_work()` yields a session inside a transaction that commits on exit."""

    def __init__(
        self,
        unit_of_work: UnitOfWork,
        stores: StoreRegistry,
        clock: Clock,
        policy: ScrubPolicy,
        *,
        batch_size: int,
        pool_size: int,
        worker: str | None = None,
        vault: UrlVault = PLAINTEXT,
    ) -> None:
        self._unit, self._stores, self._clock, self._policy = unit_of_work, stores, clock, policy
        self._keys = DataKeys(stores, vault)
        self._vault = vault
        self._batch_size, self._pool_size = batch_size, pool_size
        self.worker = worker or new_worker_id()

    def count_due(self) -> int:
        """How many locations are due now (for a progress bar)."""
        with self._unit() as db:
            return db.scalar(select(func.count()).select_from(Location).where(*due_filter(self._clock.now()))) or 0

    def run_once(
        self, stop: threading.Event | None = None, on_batch: Callable[[int], None] | None = None
    ) -> ScrubReport:
        """Scrub batch after batch until nothing is due (or stop is set; the batch in flight finishes)."""
        stop = stop or threading.Event()
        report = ScrubReport()
        with ThreadPoolExecutor(self._pool_size, thread_name_prefix="scrub") as pool:
            for claims in self._batches(stop):
                started = time.perf_counter()
                deletions = self._delete_all(pool, claims)
                with self._unit() as db:
                    lifecycle = LocationLifecycle(db, self._clock, vault=self._vault)
                    references = DataReferences(db, self._keys)
                    # The whole batch in a constant number of statements, its locks taken in the one order
                    # every writer uses (tenants' usage, then data keys): two scrubbers never deadlock.
                    recorded = record_batch(
                        db, self._clock, lifecycle, references, self.worker, self._policy, claims, deletions
                    )
                for item, deletion, done in zip(claims, deletions, recorded, strict=True):
                    count(item, deletion, recorded=done)  # after the commit: only what was written counts
                    # A lost claim or a released shared location is not a deletion.
                    outcome = deletion.outcome
                    counted = outcome if done or outcome in (Outcome.FAILED, Outcome.EXPIRED) else Outcome.REQUEUED
                    report.outcomes[counted] += 1
                SCRUB_BATCH_DURATION.observe(time.perf_counter() - started)
                report.batches += 1
                if on_batch is not None:
                    on_batch(len(claims))
        SCRUB_LAST_SUCCESS.set_to_current_time()
        log.info("scrub pass by %s: %s", self.worker, dict(report.outcomes))
        return report

    def _delete_all(self, pool: ThreadPoolExecutor, claims: list[Claim]) -> list[Deletion]:
        """Each claim's deletion, pool_size of them in flight.

        Each thread takes the next claim as soon as it is done with one: a task per thread rather than a
        future per claim, whose handing over between threads cost more CPU than a file's unlink.
        """
        pending: SimpleQueue[int] = SimpleQueue()
        for number in range(len(claims)):
            pending.put(number)
        deletions: list[Deletion | None] = [None] * len(claims)

        def work() -> None:
            while True:
                try:
                    number = pending.get_nowait()
                except Empty:
                    return
                deletions[number] = delete_data(self._stores, self._clock, self._policy, claims[number])

        for task in [pool.submit(work) for _ in range(min(self._pool_size, len(claims)))]:
            task.result()  # a worker's exception ends the pass here, as before recording anything
        return deletions  # type: ignore[return-value]  (every slot is filled once the tasks are done)

    def _batches(self, stop: threading.Event) -> Iterator[list[Claim]]:
        while not stop.is_set():
            with self._unit() as db:
                claims = claim(
                    db, self._clock, DataReferences(db, self._keys), self.worker, self._policy, limit=self._batch_size
                )
            if not claims:
                return
            yield claims

    def run_forever(self, stop: threading.Event, wakeup_seconds: float, reaper: Reaper | None = None) -> None:
        """Pass after pass, sleeping wakeup_seconds between them, until stop is set (SIGTERM).

        With a reaper, each pass first ends the uploads whose lease ran out: their data is due at once,
        so the same pass deletes it.
        """
        while not stop.is_set():
            try:
                if reaper is not None:
                    reaper.run_once(stop)
                self.run_once(stop)
            except Exception:
                # A database outage must not end the daemon: log it and try again at the next wake-up.
                log.exception("scrub pass failed; retrying in %s s", wakeup_seconds)
            stop.wait(wakeup_seconds)
