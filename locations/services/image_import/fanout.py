"""One read of the source, written into several stores at once: each copy's bytes are read and checked once.

Each store's write runs on a thread of its own, fed through a small bounded queue (memory stays flat in
the image size). The caller's thread reads, checks and renews the task's lease; the writers never touch
the database. A store calls `ready` when its data is durable, just before it links it in place: each
writer then waits until every writer is durable or has failed, the caller renews the lease once for
all of them (its `ready`), and only then do they link (or, if the lease was lost, fail without linking).
A writer that fails drops out; the others go on. If the read fails, every writer is told to fail.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from locations.stores.base import Store, UploadTarget

QUEUE_CHUNKS = 8  # per store: how far a writer may lag behind the read
_END, _ABORT = object(), object()


class WriteAbortedError(Exception):
    """The write was called off (the read failed, or the lease was lost before linking)."""


@dataclass
class Write:
    """One store's write: where, and (once done) the URL it wrote or why it failed."""

    store: Store
    planned: UploadTarget
    url: str | None = None
    error: BaseException | None = None
    _queue: "queue.Queue[object]" = field(default_factory=lambda: queue.Queue(QUEUE_CHUNKS))
    _durable: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)


def write_all(chunks: Iterable[bytes], writes: list[Write], ready: Callable[[], None]) -> None:
    """Stream chunks into every write's store at once; each Write ends with its url or its error.

    Raises what reading chunks or `ready` raised, after every writer has stopped.
    """
    go, called_off = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=_write, args=(write, go, called_off), name=f"copy-{write.store.name}", daemon=True)
        for write in writes
    ]
    for thread in threads:
        thread.start()
    try:
        for chunk in chunks:
            for write in writes:
                _put(write, chunk)
            if all(write._done.is_set() for write in writes):
                break  # every store failed: reading the rest would feed nobody
        for write in writes:
            _put(write, _END)
        for write in writes:  # every writer durable (waiting in ready) or finished
            while not (write._durable.wait(0.1) or write._done.is_set()):
                pass
        ready()
    except BaseException:
        called_off.set()
        go.set()  # writers waiting in ready fail now, without linking
        for write in writes:
            _put(write, _ABORT)
        raise
    finally:
        go.set()
        for thread in threads:
            thread.join()


def _put(write: Write, item: object) -> None:
    """Hand the writer an item, unless it has stopped (a failed writer no longer reads its queue)."""
    while not write._done.is_set():
        try:
            write._queue.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _write(write: Write, go: threading.Event, called_off: threading.Event) -> None:
    def drained() -> Iterator[bytes]:
        while (item := write._queue.get()) is not _END:
            if item is _ABORT:
                raise WriteAbortedError("The read of the source failed.")
            yield item  # type: ignore[misc]

    def linked_only_if_still_ours() -> None:
        write._durable.set()
        go.wait()
        if called_off.is_set():
            raise WriteAbortedError("The task's lease was lost before the data was linked.")

    try:
        write.url = write.store.add(write.planned, drained(), ready=linked_only_if_still_ours)
    except BaseException as exc:  # noqa: BLE001 - recorded for the caller, which hands the write back
        write.error = exc
    finally:
        write._done.set()
