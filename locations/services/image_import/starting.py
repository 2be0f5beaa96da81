"""POST /v2/images/{id}/import: Glance's checks, then a task whose lease is this process's, and the image's lock.

Everything the caller can get wrong is answered here, before any task exists (400, 403, 404, 409);
what can only fail while data moves (a web server that answers 404, a copy past the quota) fails the
task instead, reported in os_glance_failed_import and the task's message.
"""

import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session

from locations.import_schema import ImportRequest
from locations.models import Image, ImageStatus, Task, TaskStatus
from locations.services.image_import.staging import staged_of
from locations.services.image_import.tasks import FAILED_IMPORT, IMPORT_LOCK, IMPORTING_TO, TASK_TYPE, set_property
from locations.services.images import ImageService
from locations.services.lifecycle import LocationLifecycle
from locations.stores.base import StoreRegistry
from locquota.clock import Clock
from locquota.errors import (
    ImportInProgress,
    InvalidBody,
    InvalidImageStatus,
    NotStaged,
    StoreNotEnabled,
    StoreReadOnly,
)
from locquota.identity import Identity
from locquota.leases import LeaseTerms
from quota.services.limits import LimitService

# The status each method needs (Glance's import_image): staged data, no data yet, or data to copy.
NEEDED_STATUS = {
    "glance-direct": ImageStatus.UPLOADING,
    "web-download": ImageStatus.QUEUED,
    "copy-image": ImageStatus.ACTIVE,
}


class ImportService:
    """Starts imports; the task runs after this request commits (image_import.workers)."""

    def __init__(
        self,
        db: Session,
        images: ImageService,
        stores: StoreRegistry,
        clock: Clock,
        limits: LimitService,
        terms: LeaseTerms,
        *,
        check_url: Callable[[str], None],
        multi_store: bool,
    ) -> None:
        self._db, self._images, self._stores, self._clock = db, images, stores, clock
        self._limits, self._terms, self._check_url, self._multi_store = limits, terms, check_url, multi_store
        self._lifecycle = LocationLifecycle(db, clock)

    def start(
        self, caller: Identity, image_id: uuid.UUID, asked: ImportRequest, holder: str, request_id: str | None
    ) -> Task | None:
        """The import's task, leased to holder; None when a copy-image has nothing left to copy."""
        rule = "copy_image" if asked.method == "copy-image" else "modify_image"
        image = self._images.get(caller, image_id, rule, for_update=True)
        needed = NEEDED_STATUS[asked.method]
        if image.status is not needed:
            raise InvalidImageStatus(
                f"Image status {image.status} cannot be the target of a {asked.method} import (needs {needed})."
            )
        if not image.container_format or not image.disk_format:
            raise InvalidImageStatus("container_format and disk_format need to be set before import.")
        if any(prop.name == IMPORT_LOCK for prop in image.properties):
            raise ImportInProgress("A prior import of this image is still in progress.")
        if asked.method == "glance-direct" and staged_of(self._db, image.id) is None:
            raise NotStaged("The image's data is still being staged; import it once staging has ended.")
        stores = self._targets(image, asked)
        if not stores:
            return None  # copy-image with all_stores: the image is in every store already (Glance: 202, no task)
        if asked.uri is not None:
            self._check_url(asked.uri)
        now = self._clock.now()
        task = Task(
            id=uuid.uuid4(),
            type=TASK_TYPE,
            status=TaskStatus.PENDING,
            owner=caller.tenant_id or image.owner,
            image_id=image.id,
            user_id=caller.user_id,
            request_id=request_id,
            task_input={
                "image_id": str(image.id),
                "import_req": _as_glance_body(asked),
                "backend": stores,
            },
            message="",
            created_at=now,
            updated_at=now,
            holder=holder,
            lease_expires_at=self._terms.until(now),
        )
        self._db.add(task)
        if asked.method != "copy-image":  # copy-image leaves an active image active
            limits = self._limits.for_tenant(image.owner)
            self._lifecycle.change_image_status(image.id, image.owner, needed, ImageStatus.IMPORTING, limits=limits)
            self._db.expire(image, ["status", "updated_at"])
        set_property(image, IMPORT_LOCK, str(task.id))
        set_property(image, IMPORTING_TO, ",".join(stores))
        set_property(image, FAILED_IMPORT, "")
        self._db.flush()
        return task

    def _targets(self, image: Image, asked: ImportRequest) -> list[str]:
        """The stores to import into (Glance's get_stores_from_request, then copy-image's rules)."""
        if not self._multi_store:
            return [self._stores.default.name]
        if asked.all_stores:
            names = [store.name for store in self._stores if not store.is_read_only]
        else:
            names = list(asked.stores or (self._stores.default.name,))
        for name in names:
            store = self._stores.enabled(name)
            if store is None:
                raise StoreNotEnabled(f"Store {name[:64]!r} is not one of this deployment's stores.")
            if store.is_read_only:
                raise StoreReadOnly(f"Store {name!r} is read-only: data cannot be imported into it.")
        if asked.method != "copy-image":
            return names
        present = {location.store for location in image.active_locations}
        if asked.all_stores:
            return [name for name in names if name not in present]
        already = [name for name in names if name in present]
        if already:
            raise InvalidBody(f"Image is already present at store {already[0]!r}.")
        return names


def _as_glance_body(asked: ImportRequest) -> dict[str, object]:
    """The request as Glance records it in the task's input."""
    method: dict[str, object] = {"name": asked.method}
    if asked.uri is not None:
        method["uri"] = asked.uri
    body: dict[str, object] = {"method": method, "all_stores_must_succeed": asked.all_stores_must_succeed}
    if asked.all_stores:
        body["all_stores"] = True
    if asked.stores is not None:
        body["stores"] = list(asked.stores)
    return body
