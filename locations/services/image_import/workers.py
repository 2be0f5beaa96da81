"""Where import tasks run: a small thread pool in each API process, started once the request commits.

The task is written with its lease already this process's (workers.holder), so only this process runs
it unless the process dies; then the lease runs out and the import reaper ends the task. A process
that stops (a restart, a deploy) therefore never leaves an import stuck, only failed.
"""

import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import transaction

from locquota.leases import new_holder

log = logging.getLogger(__name__)


class ImportWorkers:
    """A thread pool made on first use (after a pre-forking server forked), and the holder of its leases."""

    def __init__(self, run: Callable[[uuid.UUID, str], None], threads: int) -> None:
        self._run, self._threads = run, threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._futures: set[Future[None]] = set()
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
        """Run the task on a worker thread."""
        with self._lock:
            pool = self._ensure_pool()
            future = pool.submit(self._run, task_id, self._holder)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every task submitted so far (tests and shutdown)."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result(timeout=timeout)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        if future.exception() is not None:
            log.error("an import task's worker failed", exc_info=future.exception())

    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="import")
            self._pool_pid, self._holder, self._futures = os.getpid(), new_holder("import"), set()
        return self._pool
