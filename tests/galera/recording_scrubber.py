"""A scrubber process for the Galera tests, built as `locquota scrub` builds it, whose store writes down each deletion.

    python recording_scrubber.py INI DELETIONS

Prints `ready <worker>` once built and waits for a line on stdin, so that the parent releases every scrubber at
once (on Galera a table lock on one node holds no other node's sessions). Then it scrubs until nothing is due,
printing `batch <n>` after each recorded batch and `outcomes <json>` at the end. Every call of the store's
delete appends `<worker> <url>` to DELETIONS (one write with O_APPEND: lines from several processes and threads
never interleave), so the parent counts what the store was asked to delete, not what the scrubbers report.
"""

import json
import os
import sys

from locations.scrubber import Scrubber
from locations.services.factories import scrub_policy
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.scripting import LazyApp


class RecordingStore:
    """The file store, with each deletion written down before it is done, under the name of the worker asking."""

    def __init__(self, inner: object, log_fd: int, worker: str = "") -> None:
        self._inner, self._log_fd, self.worker = inner, log_fd, worker

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def delete(self, url: str) -> None:
        os.write(self._log_fd, f"{self.worker} {url}\n".encode())
        self._inner.delete(url)


def main(ini: str, deletions: str) -> None:
    app = LazyApp(ini)
    try:
        settings = app.registry["locquota.settings"]
        with app.request() as request:
            stores = request.find_service(StoreRegistry)
        log_fd = os.open(deletions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        store = RecordingStore(stores[stores.default.name], log_fd)
        scrubber = Scrubber(
            app.unit_of_work(), StoreRegistry({store.name: store}, store.name), Clock(), scrub_policy(settings),
            batch_size=settings.scrub_batch_size, pool_size=settings.scrub_pool_size,
            vault=app.registry["locquota.url_vault"],
        )  # fmt: skip
        store.worker = scrubber.worker
        print("ready", scrubber.worker, flush=True)
        if not sys.stdin.readline():
            sys.exit("the parent went away before the release")
        report = scrubber.run_once(on_batch=lambda size: print("batch", size, flush=True))
        print("outcomes", json.dumps(dict(report.outcomes)), flush=True)
    finally:
        app.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
