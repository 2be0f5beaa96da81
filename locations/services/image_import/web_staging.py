"""web-download's first step: the URL's bytes streamed into the staging store, then recorded as staged.

The write is recorded (a task_copies row, no space reserved: staging is admitted when the size is known)
before the first byte; the bytes are cut off past what is left of image_stage_total or the image size
cap; one unit then admits them to image_stage_total exactly and records them as staged data.
"""

import hashlib
import uuid
from collections.abc import Iterator

from locations.models import ImageStatus, StagedData, TaskCopy
from locations.services.image_import.units import CopyError, LeaseLost, LeftToReaper, TaskUnits, why
from locations.services.upload import HASH_ALGORITHM
from quota.models import Resource
from quota.services.ledger import UsageLedger

# -- web-download --------------------------------------------------------------------------------


def download_to_staging(units: TaskUnits, image_id: uuid.UUID, uri: str) -> None:
    """Fetch the URL into the staging store and record it as staged (admitted to image_stage_total)."""
    staging = units.tools.stores.staging
    if staging is None:
        raise CopyError("There is no staging area to download into.")
    units.hold(units.owner(image_id))
    image = units.image(image_id)
    if image.status is not ImageStatus.IMPORTING:
        raise CopyError(f"The image became {image.status} during the import.")
    limits = units.limits.for_tenant(image.owner)
    left = UsageLedger(units.db, units.tools.clock).remaining(image.owner, Resource.IMAGE_STAGE_TOTAL, limits)
    most = units.tools.size_cap_bytes if left is None else min(left, units.tools.size_cap_bytes)
    planned = staging.plan_upload(image_id)
    copy_id = units.record_copy(image_id, staging.name, planned, 0)
    md5, sha512, size = hashlib.md5(usedforsecurity=False), hashlib.new(HASH_ALGORITHM), 0

    def counted(chunks: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            size += len(chunk)
            md5.update(chunk)
            sha512.update(chunk)
            units.keep_alive(size)
            yield chunk

    try:
        url = staging.add(planned, counted(units.tools.download(uri, most)), ready=lambda: units.keep_alive(force=True))
        _stage(units, copy_id, image_id, url, size, md5.hexdigest(), sha512.hexdigest())
    except (LeaseLost, LeftToReaper):
        raise
    except Exception as exc:
        units.hand_back(copy_id, image_id)
        raise CopyError(why(exc)) from exc


def _stage(units: TaskUnits, copy_id: int, image_id: uuid.UUID, url: str, size: int, md5: str, sha512: str) -> None:
    """One unit: the downloaded bytes admitted to image_stage_total and recorded as staged."""
    units.hold(units.owner(image_id))
    copy = units.db.get(TaskCopy, copy_id)
    image = units.image(image_id)
    if copy is None:
        raise LeaseLost
    if image.status is not ImageStatus.IMPORTING:
        raise CopyError(f"The image became {image.status} during the import.")
    limits = units.limits.for_tenant(image.owner)
    UsageLedger(units.db, units.tools.clock).charge(image.owner, {Resource.IMAGE_STAGE_TOTAL: size}, within=limits)
    units.db.add(
        StagedData(
            image_id=image_id,
            store=copy.store,
            url=copy.url,
            size_bytes=size,
            checksum=md5,
            os_hash_value=sha512,
            staged_at=units.tools.clock.now(),
        )
    )
    image.size = size
    units.db.delete(copy)
    units.commit()
