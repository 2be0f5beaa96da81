"""Running one import task in the background: web-download into staging, then a copy into each store.

Each copy is admitted before its data moves: one unit of work charges the image's size to
image_size_total (exactly, under the usage row lock; a copy that does not fit fails for that store
alone and charges nothing) and records the names the store will write at (a task_copies row). The
bytes then stream outside any transaction, checked against the source's size and checksum, the
task's lease renewed as they flow. A last unit turns the reservation into an active location. A copy
that fails hands whatever is at its names to the scrubber; a worker that dies leaves its lease to run
out, and the import reaper does the same (image_import.reaper). Then end_import ends the task.
"""

import hashlib
import logging
import uuid
from collections.abc import Iterator

from sqlalchemy import func, select

from locations.models import (
    LIVE_LOCATION_STATUSES,
    UNFINISHED_TASK_STATUSES,
    Image,
    ImageStatus,
    Location,
    Task,
    TaskCopy,
    TaskStatus,
)
from locations.services.image_import.ending import end_import, method_of, must_all_succeed, target_stores
from locations.services.image_import.fanout import Write, write_all
from locations.services.image_import.staging import staged_of
from locations.services.image_import.tasks import IMPORTING_TO, merge_stores
from locations.services.image_import.units import (
    CopyError,
    LeaseLost,
    LeftToReaper,
    Source,
    TaskUnits,
    why,
)
from locations.services.image_import.web_staging import download_to_staging
from locations.services.upload import HASH_ALGORITHM
from locations.stores.base import Store, UploadTarget
from locquota.crypto import UrlNotReadableError
from locquota.db import abort_and_begin
from locquota.errors import LocquotaError, QuotaExceeded
from quota.models import UNLIMITED, Resource
from quota.services.ledger import UsageLedger

log = logging.getLogger(__name__)


class ImportRun(TaskUnits):
    """One task, run by the worker that holds its lease: web-download first if asked, then each copy, then the end."""

    def run(self) -> None:
        """Run the task to its end, unless it was taken over or another worker has it."""
        try:
            with self.tm:
                task = self.lease.hold()
                if task is None or task.status not in UNFINISHED_TASK_STATUSES:
                    return
                task.status, task.updated_at = TaskStatus.PROCESSING, self.tools.clock.now()
                image_id, method = task.image_id, method_of(task)
                stores, must_succeed = target_stores(task), must_all_succeed(task)
                uri = task.task_input["import_req"]["method"].get("uri")  # type: ignore[index,union-attr]
                self.commit()
                assert image_id is not None  # noqa: S101  (import tasks always name their image)
                failed, error = self._work(image_id, method, stores, must_succeed, uri)
                self._end(failed, error)
        except (LeaseLost, LeftToReaper) as exc:
            log.warning("import task %s: %s; the import reaper ends it", self.lease.task_id, type(exc).__name__)

    def _work(
        self, image_id: uuid.UUID, method: str, stores: list[str], must_succeed: bool, uri: str | None
    ) -> tuple[dict[str, str], str | None]:
        """The copies; returns the failed stores (with why) and why the import stopped early, if it did."""
        failed: dict[str, str] = {}
        try:
            if method == "web-download":
                download_to_staging(self, image_id, str(uri))
            source = self._source(image_id, method)
            # A direct import's image turns active with its first copy; copy-image's is active throughout.
            expected = (ImageStatus.ACTIVE,) if method == "copy-image" else (ImageStatus.IMPORTING, ImageStatus.ACTIVE)
            failed.update(self._copy(image_id, stores, source, expected, must_succeed=must_succeed))
        except CopyError as exc:
            return failed, str(exc)
        except (LeaseLost, LeftToReaper):
            raise
        except Exception:
            log.exception("import task %s failed", self.lease.task_id)
            return failed, "The import failed unexpectedly; see the service's log."
        return failed, None

    # -- the source ----------------------------------------------------------------------------------

    def _source(self, image_id: uuid.UUID, method: str) -> Source:
        """The staged data (glance-direct, web-download), or the image's first readable active location."""
        abort_and_begin(self.tm)
        if method != "copy-image":
            staged = staged_of(self.db, image_id)
            if staged is None:
                raise CopyError("The image has no staged data (it was deleted meanwhile).")
            return Source(
                staged.store,
                self.tools.vault.open(staged.url),
                staged.size_bytes,
                staged.checksum,
                staged.os_hash_value,
            )
        image = self.db.get(Image, image_id)
        assert image is not None  # noqa: S101  (tasks keep their image's row)
        for location in image.active_locations:
            store = self.tools.stores.get(location.store)
            try:
                url = self.tools.vault.open(location.url)
                if store is None or not self.keys.still_names(location, store.identify(url)):
                    continue
            except (LocquotaError, UrlNotReadableError):
                continue
            sha512 = image.os_hash_value if image.os_hash_algo == HASH_ALGORITHM else None
            return Source(location.store, url, image.size or 0, image.checksum, sha512)
        raise CopyError("No location of the image can be read to copy from.")

    def _checked(self, chunks: Iterator[bytes], source: Source) -> Iterator[bytes]:
        """The source's bytes, checked against its size and strongest checksum as they pass; the lease kept alive.

        One digest, not two: sha512 when the image has one (md5 otherwise) proves the bytes are the same, and
        hashing is most of a copy's cost (benchmarks/README.md, copy-image).
        """
        digest = hashlib.new(HASH_ALGORITHM) if source.sha512 else hashlib.md5(usedforsecurity=False)
        expected, copied = source.sha512 or source.md5, 0
        for chunk in chunks:
            copied += len(chunk)
            if copied > source.size:
                raise CopyError("The source holds more bytes than the image's size.")
            digest.update(chunk)
            self.keep_alive(copied)
            yield chunk
        if copied != source.size:
            raise CopyError("The source holds fewer bytes than the image's size.")
        if expected and digest.hexdigest() != expected:
            raise CopyError("The copied bytes do not match the image's checksum.")

    # -- the copies ----------------------------------------------------------------------------------

    def _copy(
        self,
        image_id: uuid.UUID,
        store_names: list[str],
        source: Source,
        expected: tuple[ImageStatus, ...],
        *,
        must_succeed: bool,
    ) -> dict[str, str]:
        """Copy the source into the stores; the stores that failed, with why (nothing kept, nothing charged).

        Every copy is admitted first; then one read of the source feeds them all at once (fanout); then
        each lands in its own unit. With must_succeed, a refused admission stops before any data moves.
        """
        failed, admitted = self._admit_all(image_id, store_names, source, expected, must_succeed=must_succeed)
        if failed and must_succeed:
            for copy_id, _write in admitted:
                self.hand_back(copy_id, image_id)
            return failed
        writes = [write for _copy_id, write in admitted]
        if writes:
            try:
                reader = self.tools.stores[source.store].get(source.url, self.tools.chunk_bytes)
                write_all(self._checked(reader, source), writes, ready=lambda: self.keep_alive(force=True))
            except (LeaseLost, LeftToReaper):
                raise
            except Exception as exc:  # noqa: BLE001 - the read failed: it is every copy's reason
                for write in writes:
                    write.error = exc
        for copy_id, write in admitted:
            try:
                if write.error is not None or write.url is None:
                    raise write.error or CopyError("The store returned no location.")
                self._land(copy_id, image_id, write.store, write.url, source, expected)
            except (LeaseLost, LeftToReaper):
                raise
            except Exception as exc:  # noqa: BLE001 - one copy's failure is that store's alone
                self.hand_back(copy_id, image_id)
                failed[write.store.name] = why(exc)
        return failed

    def _admit_all(
        self,
        image_id: uuid.UUID,
        store_names: list[str],
        source: Source,
        expected: tuple[ImageStatus, ...],
        *,
        must_succeed: bool,
    ) -> tuple[dict[str, str], list[tuple[int, Write]]]:
        """Admit a copy per store, in order: the refused ones with why, and the admitted ones' rows and writes."""
        failed: dict[str, str] = {}
        admitted: list[tuple[int, Write]] = []
        for name in store_names:
            store = self.tools.stores.enabled(name)
            outcome = self._admit(image_id, store, source, expected) if store else "The store is no longer configured."
            if isinstance(outcome, str):
                failed[name] = outcome
                if must_succeed:
                    break
                continue
            copy_id, planned = outcome
            admitted.append((copy_id, Write(store, planned)))  # type: ignore[arg-type]
        return failed, admitted

    def _admit(
        self, image_id: uuid.UUID, store: Store, source: Source, expected: tuple[ImageStatus, ...]
    ) -> tuple[int, UploadTarget] | str:
        """One unit: the copy's bytes admitted to image_size_total and its names recorded (or why not)."""
        self.hold(self.owner(image_id))
        image = self.image(image_id)
        if image.status not in expected:
            return f"The image became {image.status} during the import."
        limits = self.limits.for_tenant(image.owner)
        per_image = limits[Resource.LOCATIONS_PER_IMAGE]
        if per_image != UNLIMITED and self._live_and_copying(image_id) >= per_image:
            return f"An image may have at most {per_image} locations."
        try:
            UsageLedger(self.db, self.tools.clock).charge(
                image.owner, {Resource.IMAGE_SIZE_TOTAL: source.size}, within=limits
            )
        except QuotaExceeded as exc:
            abort_and_begin(self.tm)
            return exc.message
        planned = store.plan_upload(image_id)
        copy_id = self.record_copy(image_id, store.name, planned, source.size)
        return copy_id, planned

    def _live_and_copying(self, image_id: uuid.UUID) -> int:
        live = self.db.scalar(
            select(func.count())
            .select_from(Location)
            .where(Location.image_id == image_id, Location.status.in_(LIVE_LOCATION_STATUSES))
        )
        copying = self.db.scalar(select(func.count()).select_from(TaskCopy).where(TaskCopy.image_id == image_id))
        return int(live or 0) + int(copying or 0)

    def _land(
        self,
        copy_id: int,
        image_id: uuid.UUID,
        store: Store,
        url: str,
        source: Source,
        expected: tuple[ImageStatus, ...],
    ) -> None:
        """One unit: the reservation becomes an active location; a glance-direct image becomes active."""
        self.hold(self.owner(image_id))
        copy = self.db.get(TaskCopy, copy_id)
        image = self.image(image_id)
        if copy is None:
            raise LeaseLost
        if image.status not in expected:
            raise CopyError(f"The image became {image.status} during the import.")
        UsageLedger(self.db, self.tools.clock).charge(image.owner, {Resource.IMAGE_SIZE_TOTAL: -copy.reserved_bytes})
        metadata: dict[str, object] = {"store": store.name} if self.tools.multi_store else {}
        self.lifecycle.add(image, url, store.identify(url), store.name, metadata, source.size, limits=None)
        self.db.delete(copy)
        if image.status is ImageStatus.IMPORTING:
            self.lifecycle.set_image_status(image, ImageStatus.ACTIVE)
            image.checksum, image.os_hash_algo, image.os_hash_value = source.md5, HASH_ALGORITHM, source.sha512
        merge_stores(image, IMPORTING_TO, remove=[store.name])
        self.commit()

    # -- the end -------------------------------------------------------------------------------------

    def _end(self, failed: dict[str, str], error: str | None) -> None:
        """One unit: the task ended (end_import); then the data of retired copies and staging deleted now."""
        abort_and_begin(self.tm)
        owner = self.db.scalar(
            select(Image.owner).join(Task, Task.image_id == Image.id).where(Task.id == self.lease.task_id)
        )
        self.hold(owner or "")
        task = self.lease.hold()
        if task is None:
            raise LeaseLost
        tools = self.tools
        retired = end_import(self.db, self.lifecycle, tools.stores, tools.vault, task, failed, error=error)
        self.commit()
        self.delete_now(retired)
