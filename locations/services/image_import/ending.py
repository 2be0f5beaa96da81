"""How an import ends, whether its worker finished it or the reaper took it over: one transaction.

stores not finished                     failed (reason given)
some failed, all_stores_must_succeed    the copies this task made are retired (to the scrubber)
glance-direct / web-download            staged data released; no copy landed: image back to queued
image                                   os_glance_importing_to_stores "", failed ones added to
os_glance_failed_import, the import lock removed
task                                    success if a copy landed and none had to, else failure
"""

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from locations.models import Image, ImageStatus, LocationStatus, Task, TaskStatus
from locations.services.image_import.staging import release_staged
from locations.services.image_import.tasks import (
    FAILED_IMPORT,
    IMPORT_LOCK,
    IMPORTING_TO,
    finish_task,
    get_property,
    merge_stores,
    set_property,
    store_list,
)
from locations.services.lifecycle import LocationLifecycle
from locations.stores.base import StoreRegistry
from locquota.crypto import UrlVault


def method_of(task: Task) -> str:
    """The import method a task runs."""
    return str(task.task_input["import_req"]["method"]["name"])  # type: ignore[index]


def must_all_succeed(task: Task) -> bool:
    """Whether one failed store fails the whole import (Glance's default: yes)."""
    return bool(task.task_input["import_req"].get("all_stores_must_succeed", True))  # type: ignore[union-attr]


def target_stores(task: Task) -> list[str]:
    """The stores the import was asked to bring the data into."""
    return [str(name) for name in task.task_input["backend"]]  # type: ignore[union-attr]


def end_import(
    db: Session,
    lifecycle: LocationLifecycle,
    stores: StoreRegistry,
    vault: UrlVault,
    task: Task,
    failed: dict[str, str],
    *,
    error: str | None = None,
) -> list[int]:
    """End the task (locked, still held by the caller, owner's usage locked); the ids of locations to delete now.

    failed: store -> why, for the stores that failed; error: why the import stopped before its stores.
    """
    image = db.scalars(select(Image).where(Image.id == task.image_id).with_for_update()).one()
    failed = dict(failed)
    unfinished = [store for store in store_list(get_property(image, IMPORTING_TO)) if store not in failed]
    if error is not None:  # the import stopped early (a failed download, a dead worker): they failed with it
        failed.update(dict.fromkeys(unfinished, error))
    # Without an error, stores left unfinished were called off because another had to succeed and did not:
    # not failures of their own (as in Glance, only the store that failed is named in os_glance_failed_import).
    landed = [store for store in target_stores(task) if store not in failed and store not in unfinished]
    retired = []
    if failed and must_all_succeed(task) and landed:
        # All or nothing: the copies this task made leave service (Glance leaves their data behind).
        for location in image.locations:
            if (
                location.status is LocationStatus.ACTIVE
                and location.store in landed
                and location.created_at >= task.created_at
            ):
                lifecycle.retire(location, delay=timedelta(0))
                retired.append(location)
        landed = []
    if method_of(task) != "copy-image":
        retired += release_staged(db, lifecycle, stores, vault, image)
        if image.status in (ImageStatus.IMPORTING, ImageStatus.ACTIVE) and not image.active_locations:
            lifecycle.set_image_status(image, ImageStatus.QUEUED)
            image.size = image.checksum = image.os_hash_algo = image.os_hash_value = None
    set_property(image, IMPORTING_TO, "")
    merge_stores(image, FAILED_IMPORT, add=failed)
    if get_property(image, IMPORT_LOCK) == str(task.id):
        set_property(image, IMPORT_LOCK, None)
    succeeded = bool(landed) and not (failed and must_all_succeed(task))
    message = "" if not failed else "; ".join(f"{store}: {why}" for store, why in failed.items())
    if error and not failed:
        message = error
    finish_task(task, lifecycle.clock, TaskStatus.SUCCESS if succeeded else TaskStatus.FAILURE, message)
    db.flush()
    return [location.id for location in retired]
