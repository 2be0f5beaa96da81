"""The scrubber process: claims due pending_delete locations in batches and deletes their data.

Run it on every API node at once (`locquota scrub --daemon`): claims keep the workers apart, a dead
worker's claims expire, and a batch is the most a crash can leave half done. Memory stays flat
however long the backlog: at most two batches are held at a time, the one being recorded and the next,
claimed beside that record (on PostgreSQL; one at a time on SQLite).
"""

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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
    release,
)
from locations.services.upload_reaper import ReapReport
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT, UrlVault
from locquota.scripting import UnitOfWork
from locquota.write_conflicts import run_unit
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


# The cyclic collector's youngest-generation threshold during a pass (CPython's default is 700): a batch makes
# a few thousand objects that live until its record, and each young collection would walk them again.
PASS_GC_THRESHOLD = 20_000


class _Collector:
    """The process's one cyclic garbage collector, spared while any pass runs (tests run several in threads).

    A pass allocates rows, claims and statements by the hundred thousand, and each collection of the oldest
    generation walks every tracked object: measured at a fifth of the scrubber's CPU over 30k locations, most
    of it walking the imported application. Frozen while passes run, those objects are skipped; thawed after
    the last one, whatever among them became garbage meanwhile is collected as usual: nothing is kept for good.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passes = 0
        self._thresholds = gc.get_threshold()

    @contextmanager
    def spared(self) -> Iterator[None]:
        """Freeze what exists and collect less often for the pass; the last pass out restores both."""
        with self._lock:
            self._passes += 1
            if self._passes == 1:
                self._thresholds = gc.get_threshold()
                gc.set_threshold(PASS_GC_THRESHOLD, *self._thresholds[1:])
            gc.freeze()
        try:
            yield
        finally:
            with self._lock:
                self._passes -= 1
                if self._passes == 0:
                    gc.unfreeze()
                    gc.set_threshold(*self._thresholds)


_COLLECTOR = _Collector()


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
        """Scrub batch after batch until nothing is due (or stop is set; the batch in flight finishes).

        While a batch is recorded, the next one is claimed on another connection, so the two transactions'
        round trips overlap: at most two batches are claimed at once, and the next one waits for no
        deletion, only for the record beside it. Once stop is set, a batch claimed ahead is given back.
        """
        stop = stop or threading.Event()
        report = ScrubReport()
        with (
            _COLLECTOR.spared(),
            ThreadPoolExecutor(self._pool_size, thread_name_prefix="scrub") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="scrub-claim") as claimer,
        ):
            claims, overlaps = self._first_claim(stop)
            while claims:
                started = time.perf_counter()
                deletions = self._delete_all(pool, claims)
                ahead = claimer.submit(self._claim) if overlaps and not stop.is_set() else None
                try:
                    recorded = self._record(claims, deletions)
                    self._tally(report, claims, deletions, recorded)
                    SCRUB_BATCH_DURATION.observe(time.perf_counter() - started)
                    if on_batch is not None:
                        on_batch(len(claims))
                except BaseException:
                    self._give_back_when_claimed(ahead)
                    raise
                claims = self._next_claims(ahead, stop)
        SCRUB_LAST_SUCCESS.set_to_current_time()
        log.info("scrub pass by %s: %s", self.worker, dict(report.outcomes))
        return report

    def _first_claim(self, stop: threading.Event) -> tuple[list[Claim], bool]:
        """The pass's first batch, and whether the database lets a claim run beside a record.

        SQLite has one writer at a time (and a transaction whose snapshot went stale may not write at all):
        there the next batch is claimed after the record, as one worker would.
        """
        if stop.is_set():
            return [], False
        return run_unit(self._unit, lambda db: (self._claim_in(db), db.get_bind().dialect.name != "sqlite"))

    def _next_claims(self, ahead: Future[list[Claim]] | None, stop: threading.Event) -> list[Claim]:
        """The batch claimed ahead, or one claimed now; none once stop is set (a batch claimed ahead is given back).

        A claim made beside a record cannot take what that record gives back (a lease run out, shared data
        released): the pass only ends when a claim made after the last record finds nothing.
        """
        if ahead is not None:
            claims = ahead.result()
            if stop.is_set():
                self._give_back(claims)
                return []
            if claims:
                return claims
        return [] if stop.is_set() else self._claim()

    def _claim(self) -> list[Claim]:
        return run_unit(self._unit, self._claim_in)

    def _claim_in(self, db: Session) -> list[Claim]:
        references = DataReferences(db, self._keys)
        return claim(db, self._clock, references, self.worker, self._policy, limit=self._batch_size)

    def _record(self, claims: list[Claim], deletions: list[Deletion]) -> list[bool]:
        """The batch's outcomes in one unit; run again after a write conflict (it writes only claims still held)."""
        return run_unit(self._unit, lambda db: self._record_in(db, claims, deletions))

    def _record_in(self, db: Session, claims: list[Claim], deletions: list[Deletion]) -> list[bool]:
        lifecycle = LocationLifecycle(db, self._clock, vault=self._vault)
        references = DataReferences(db, self._keys)
        # The whole batch in a constant number of statements, its locks taken in the one order
        # every writer uses (tenants' usage, then data keys): two scrubbers never deadlock.
        return record_batch(db, self._clock, lifecycle, references, self.worker, self._policy, claims, deletions)

    def _give_back(self, claims: list[Claim]) -> None:
        """Release claims whose data was not touched: due again at once, for any worker."""
        if not claims:
            return
        released = run_unit(self._unit, lambda db: release(db, self.worker, [item.location_id for item in claims]))
        log.info("scrubber %s: gave back %s claims it had not started on", self.worker, released)

    def _give_back_when_claimed(self, ahead: Future[list[Claim]] | None) -> None:
        """On the way out of a failed pass: release the batch claimed ahead, else its claims expire."""
        if ahead is None:
            return
        try:
            self._give_back(ahead.result())
        except Exception:
            log.exception("scrubber %s: the batch claimed ahead is left to its lease", self.worker)

    @staticmethod
    def _tally(report: ScrubReport, claims: list[Claim], deletions: list[Deletion], recorded: list[bool]) -> None:
        for item, deletion, done in zip(claims, deletions, recorded, strict=True):
            count(item, deletion, recorded=done)  # after the commit: only what was written counts
            # A lost claim or a released shared location is not a deletion.
            outcome = deletion.outcome
            counted = outcome if done or outcome in (Outcome.FAILED, Outcome.EXPIRED) else Outcome.REQUEUED
            report.outcomes[counted] += 1
        report.batches += 1

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
