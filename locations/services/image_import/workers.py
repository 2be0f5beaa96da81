"""Where import tasks run: a small thread pool in each API process, started once the request commits.

The task is written with its lease already this process's (workers.holder), so only this process runs
it unless the process dies; then the lease runs out and the import reaper ends the task. A process
that stops (a restart, a deploy) therefore never leaves an import stuck, only failed. Tasks waiting
for a free thread keep their leases: a keeper thread renews them every third of a lease, so a busy
process's queue is never mistaken for a dead one.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import transaction

from locquota.leases import new_holder

log = logging.getLogger(__name__)

KeepQueued = Callable[[set[uuid.UUID], str], None]  # (task ids, holder): renew the leases of tasks not started


class ImportWorkers:
    """A thread pool made on first use (after a pre-forking server forked), and the holder of its leases."""

    def __init__(
        self, run: Callable[[uuid.UUID, str], None], threads: int, *, keep_queued: KeepQueued, every_seconds: float
    ) -> None:
        self._run, self._threads, self._keep_queued, self._every = run, threads, keep_queued, every_seconds
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._futures: set[Future[None]] = set()
        self._queued: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._holder = ""

    @property
    def holder(self) -> str:
        """The lease holder of the tasks this process runs (one per process: a forked child gets its own)."""
        with self._lock:
            self._ensure_pool()
            return self._holder

    def after_commit(self, transaction_: transaction.interfaces.ITransaction, task_id: uuid.UUID) -> None:
        """Run the task once the transaction that wrote it has committed (not at all if it aborts)."""
        transaction_.addAfterCommitHook(lambda committed: committed and self.submit(task_id))

    def submit(self, task_id: uuid.UUID) -> None:
        """Run the task on a worker thread; until one is free, its lease is kept alive."""
        with self._lock:
            pool = self._ensure_pool()
            self._queued.add(task_id)
            future = pool.submit(self._start, task_id, self._holder)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every task submitted so far (tests and shutdown)."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result(timeout=timeout)

    def _start(self, task_id: uuid.UUID, holder: str) -> None:
        with self._lock:
            self._queued.discard(task_id)  # from here the task renews its own lease
        self._run(task_id, holder)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        if future.exception() is not None:
            log.error("an import task's worker failed", exc_info=future.exception())

    def _keep(self, pid: int) -> None:
        """Renew the leases of tasks waiting for a thread, every third of a lease, while this process lives."""
        while os.getpid() == pid:
            time.sleep(self._every)  # the keeper's pace
            with self._lock:
                waiting, holder = set(self._queued), self._holder
            if waiting:
                try:
                    self._keep_queued(waiting, holder)
                except Exception:  # a database outage: the next round tries again, the leases are longer
                    log.exception("import: the leases of %s waiting tasks could not be renewed", len(waiting))

    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="import")
            self._pool_pid, self._holder = os.getpid(), new_holder("import")
            self._futures, self._queued = set(), set()
            keeper = threading.Thread(target=self._keep, args=(self._pool_pid,), name="import-keeper", daemon=True)
            keeper.start()
        return self._pool
