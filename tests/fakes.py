"""Fakes for failure tests, named as such, and the wiring that puts them in an app or a scrubber.

`FakeFailingStore` is a real file store whose deletes fail or hang on demand; everything else it does
is the real FileStore's work on a real directory.
"""

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Self

from pyramid.router import Router
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from locations.services.data_references import DataKeys, DataReferences
from locations.services.scrubbing import ScrubPolicy
from locations.stores.base import DataIdentity, StoredData, StoreError, StoreRegistry, UploadTarget
from locations.stores.file import FileStore
from locquota.app import configure
from locquota.clock import Clock
from locquota.crypto import PLAINTEXT
from locquota.scripting import UnitOfWork

# How long a held delete waits for release() before failing: a safety net so a broken test fails
# instead of hanging, never a timing the tests rely on.
HOLD_LIMIT_SECONDS = 30

# The scrub timing the lifecycle tests run with, as settings and as the policy a Scrubber takes.
SCRUB_TIME, RETRY_BASE, RETRY_MAX, LEASE = 60, 30, 100, 300
POLICY = ScrubPolicy(
    lease=timedelta(seconds=LEASE), retry_base=timedelta(seconds=RETRY_BASE), retry_max=timedelta(seconds=RETRY_MAX)
)


def scrub_settings(settings: dict[str, str], *, delayed_delete: bool) -> dict[str, str]:
    """The test deployment with the lifecycle tests' scrub timing."""
    return {
        **settings,
        "locquota.delayed_delete": str(delayed_delete).lower(),
        "locquota.scrub_time": str(SCRUB_TIME),
        "locquota.scrub_lease_seconds": str(LEASE),
        "locquota.scrub_retry_base_seconds": str(RETRY_BASE),
        "locquota.scrub_retry_max_seconds": str(RETRY_MAX),
    }


class FakeFailingStore:
    """A FileStore whose deletes fail (`fail_deletes = N`: the next N raise StoreError) or wait on demand.

    `after_add`, if set, runs when an upload's data is in place, before the upload records it.

    `hold_deletes()` makes every delete wait until `release()`; `delete_started` is set as soon as a
    delete is in flight, so a test can act while the scrubber is deleting, without sleeping.
    """

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.name, self.scheme, self.schemes = inner.name, inner.scheme, inner.schemes
        self.description, self.is_read_only = inner.description, inner.is_read_only
        self.fail_deletes = 0
        self.after_add: Callable[[], None] | None = None  # runs once the data is in place, before add returns
        self.delete_calls: list[str] = []  # every URL a delete was asked for, failed or not
        self.delete_started = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()

    @classmethod
    def at(cls, root: Path, name: str = "file") -> Self:
        """A fake over a real file store rooted at root."""
        return cls(FileStore(name, {"datadir": str(root)}))

    @property
    def root(self) -> Path:
        """The real store's root directory."""
        return self.inner.root

    def hold_deletes(self) -> None:
        """From now on every delete waits for release()."""
        self.delete_started.clear()
        self._released.clear()

    def release(self) -> None:
        """Let held deletes go on."""
        self._released.set()

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """The real store's upload names."""
        return self.inner.plan_upload(image_id)

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = lambda: None) -> str:
        """The real store's add, then after_add (a test acts between the data landing and its commit)."""
        url = self.inner.add(target, chunks, ready)
        if self.after_add is not None:
            self.after_add()
        return url

    def inventory(self) -> Iterator[StoredData]:
        """The real store's inventory."""
        return self.inner.inventory()

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """The real store's get."""
        return self.inner.get(url, chunk_bytes)

    def get_size(self, url: str) -> int:
        """The real store's size of the data at url."""
        return self.inner.get_size(url)

    def validate_url(self, url: str) -> None:
        """The real store's URL check."""
        self.inner.validate_url(url)

    def identify(self, url: str) -> DataIdentity:
        """The real store's data identity."""
        return self.inner.identify(url)

    def path_for(self, url: str) -> Path:
        """The real store's checked path for url."""
        return self.inner.path_for(url)

    def delete(self, url: str) -> None:
        """Wait if held, fail if told to, else the real store's delete (which still refuses outside its root)."""
        with self._lock:
            self.delete_calls.append(url)
            failing = self.fail_deletes > 0
            if failing:
                self.fail_deletes -= 1
        self.delete_started.set()
        if not self._released.wait(HOLD_LIMIT_SECONDS):
            raise StoreError("fake store: a held delete was never released")
        if failing:
            raise StoreError("fake store: injected delete failure")
        self.inner.delete(url)


def registry_of(store: FakeFailingStore) -> StoreRegistry:
    """A store registry holding only the fake, as the default `file` store."""
    return StoreRegistry({store.name: store}, store.name)


def references_on(db: Session, store: FakeFailingStore | FileStore) -> DataReferences:
    """The shared-data decisions over one store, without URL encryption, as a scrubber's claim takes them."""
    return DataReferences(db, DataKeys(StoreRegistry({store.name: store}, store.name), PLAINTEXT))


def build_app_with_store(settings: dict[str, str], store: FakeFailingStore, clock: Clock) -> Router:
    """The real app with the fake store and the test clock registered over the included services."""
    config = configure(settings)
    config.register_service(registry_of(store), iface=StoreRegistry)
    config.register_service(clock, iface=Clock)
    return config.make_wsgi_app()


def unit_of_work_on(source: Engine | sessionmaker) -> UnitOfWork:
    """Transactions for a Scrubber in a test: each `with` yields a session, commits on exit, rolls back on error.

    Given the app's session factory (`registry["locquota.session_factory"]`), its commits also drop
    cached usage, as the real CLI's do.
    """
    factory: Callable[[], Session] = (
        source if isinstance(source, sessionmaker) else sessionmaker(bind=source, expire_on_commit=False)
    )

    @contextmanager
    def unit() -> Iterator[Session]:
        with factory() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    return unit
