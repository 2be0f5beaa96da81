"""The `rbd` store: image data as RBD images in one pool of one Ceph cluster, as Glance's rbd store keeps them.

Locations are spelled as Glance writes them, rbd://<fsid>/<pool>/<image>/snap (the protected snapshot `snap` is
what Nova and Cinder clone from), or in Glance's old form rbd://<image> (this cluster, the configured pool). The
data key is rbd://<fsid>/<pool>/<image>: the snapshot is no part of the data's identity (deleting removes the
whole image). Keys are also the URLs of the inventory and of scratch images.

An upload writes a scratch image `<image-id>.<hex>.partial`, snapshots and protects it, and renames it to
`<image-id>` only after ready(): librbd's rename refuses a name that is taken, so data is never overwritten, and
the final name appears complete, snapshot included, in one step.
"""

import errno
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC
from types import ModuleType
from typing import Any

from locations.stores.base import (
    DataIdentity,
    StoredData,
    StoreDuplicateError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
    UploadTarget,
)
from locations.stores.options import StoreOptions
from locations.stores.rbd_names import FSID, IMAGE_NAME, SNAPSHOT, UNSET_FSID, RbdLocation, RbdLocations

log = logging.getLogger(__name__)

# glance_store's own names, so that a Glance backend section moves over by renaming its prefix.
OPTIONS = (
    "rbd_store_pool",
    "rbd_store_user",
    "rbd_store_ceph_conf",
    "rbd_store_chunk_size",
    "rados_connect_timeout",
    "rbd_thin_provisioning",  # blocks of zeros are not written: RBD reads its holes as zeros
)
DEFAULT_POOL = "images"
DEFAULT_CEPH_CONF = "/etc/ceph/ceph.conf"
DEFAULT_CHUNK_MIB = 8
MAX_CHUNK_MIB = 32  # librbd's largest object size (order 25)
DEFAULT_TIMEOUT_SECONDS = 5  # Glance's -1 waits for ever: a cluster that is down would hang every caller
# The one timeout bounds connecting and every later monitor and OSD request, as Glance sets it.
TIMEOUT_SETTINGS = ("client_mount_timeout", "rados_mon_op_timeout", "rados_osd_op_timeout")
MIB = 1 << 20
MAX_RESIZE_STEP_BYTES = 8 << 30  # Glance's cap on how far an image of unknown size grows at once
DIRECTORY_OBJECT = "rbd_directory"  # the pool's name -> id map of format-2 images, one omap key per image
DIRECTORY_PREFIX = "name_"
DIRECTORY_PAGE = 256

_open_stores: "weakref.WeakSet[RbdStore]" = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    """A forked child has none of its parent's librados threads: it connects again, behind a fresh lock."""
    for store in list(_open_stores):
        store.forget_connection()


os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _ceph_modules(name: str) -> tuple[ModuleType, ModuleType]:
    """Debian's rados and rbd modules (not on PyPI), imported only when an rbd store is configured."""
    try:
        import rados  # noqa: PLC0415
        import rbd  # noqa: PLC0415
    except ImportError:
        raise ValueError(
            f"locquota.store.{name}: the rbd store needs Ceph's Python modules: "
            "apt-get install python3-rbd, then run scripts/ceph-python-modules"
        ) from None
    return rados, rbd


class RbdStore:
    """One pool of a Ceph cluster, through librados and librbd, as the configured Ceph user."""

    scheme = "rbd"
    schemes = ("rbd",)
    is_read_only = False

    def __init__(self, name: str, options: Mapping[str, str]) -> None:
        settings = StoreOptions(name, options, OPTIONS)
        self.name = name
        self.description = settings.description
        self.pool = settings.text("rbd_store_pool", DEFAULT_POOL)
        self.user = settings.text("rbd_store_user", "") or None  # None: librados's own default, client.admin
        self.conf_path = settings.text("rbd_store_ceph_conf", DEFAULT_CEPH_CONF)
        chunk_mib = settings.integer("rbd_store_chunk_size", DEFAULT_CHUNK_MIB, minimum=1)
        if chunk_mib > MAX_CHUNK_MIB or chunk_mib & (chunk_mib - 1):
            raise ValueError(f"{settings.key('rbd_store_chunk_size')} = {chunk_mib}: a power of two up to 32 (MiB)")
        self.chunk_bytes = chunk_mib * MIB  # the RBD object size, and what one write sends
        self.timeout_seconds = settings.integer("rados_connect_timeout", DEFAULT_TIMEOUT_SECONDS, minimum=1)
        self.is_thin = settings.boolean("rbd_thin_provisioning", default=False)
        if not os.path.isfile(self.conf_path):
            raise ValueError(f"{settings.key('rbd_store_ceph_conf')} = {self.conf_path!r}: no such file")
        self._rados, self._rbd = _ceph_modules(name)
        self.locations = RbdLocations(self.pool, self._cluster_fsid)
        self._fsid: str | None = None
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._cluster_pid = 0
        self._failed_at = float("-inf")  # when the last connection attempt failed (time.monotonic)
        _open_stores.add(self)

    # URLs ------------------------------------------------------------------------------------------------------

    def validate_url(self, url: str) -> None:
        """Raise LocationOutsideStore unless url names an image of this store's pool in this cluster."""
        self.locations.parse(url)

    def identify(self, url: str) -> DataIdentity:
        """rbd://<fsid>/<pool>/<image>, without the network when ceph.conf names the cluster's fsid."""
        return DataIdentity(self.locations.parse(url).key)

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """Glance's own URL for the image, and a scratch image no image id can be named."""
        return self.locations.upload_target(image_id)

    # The cluster -----------------------------------------------------------------------------------------------

    def _cluster_fsid(self) -> str:
        """The cluster's fsid: ceph.conf's, read locally (no network), until a connection tells the cluster's own."""
        if self._fsid is None:
            with self._calls("reading ceph.conf"):
                handle = self._rados.Rados(conffile=self.conf_path, rados_id=self.user)
                try:
                    configured = str(handle.conf_get("fsid") or "").lower()
                finally:
                    handle.shutdown()
            if FSID.fullmatch(configured) and configured != UNSET_FSID:
                self._fsid = configured
            else:
                self._connected()  # sets self._fsid
        assert self._fsid is not None  # noqa: S101  (set by either branch)
        return self._fsid

    def _connected(self) -> Any:
        """The cluster handle of this process (librados is thread-safe): connected on first use and after a fork.

        Threads that queued behind an attempt that failed fail with it, rather than each waiting out a timeout.
        """
        cluster = self._cluster
        if cluster is not None and self._cluster_pid == os.getpid():
            return cluster
        queued_at = time.monotonic()
        with self._lock:
            if self._cluster is None or self._cluster_pid != os.getpid():
                if self._failed_at >= queued_at:
                    raise StoreError(f"rbd store {self.name}: connecting to the cluster failed a moment ago")
                try:
                    self._cluster, self._cluster_pid = self._connect(), os.getpid()
                except StoreError:
                    self._failed_at = time.monotonic()
                    raise
            return self._cluster

    def _connect(self) -> Any:
        with self._calls("connecting to the cluster"):
            cluster = self._rados.Rados(conffile=self.conf_path, rados_id=self.user)
        try:
            with self._calls("connecting to the cluster"):
                for setting in TIMEOUT_SETTINGS:
                    cluster.conf_set(setting, str(self.timeout_seconds))
                cluster.connect()
                fsid = str(cluster.get_fsid()).lower()
            if self._fsid is not None and fsid != self._fsid:
                raise StoreError(f"rbd store {self.name}: the cluster's fsid is not the one ceph.conf names")
        except BaseException:
            cluster.shutdown()
            raise
        self._fsid = fsid
        return cluster

    def forget_connection(self) -> None:
        """Drop the handle without shutting it down: after a fork it belongs to the parent."""
        self._lock = threading.Lock()
        self._cluster, self._cluster_pid = None, 0

    @contextmanager
    def _pool(self, operation: str) -> Iterator[Any]:
        """An I/O context on the store's pool, closed afterwards (cheap: the handle keeps the maps)."""
        cluster = self._connected()
        with self._calls(operation):
            ioctx = cluster.open_ioctx(self.pool)
        try:
            yield ioctx
        finally:
            ioctx.close()

    @contextmanager
    def _calls(self, operation: str) -> Iterator[None]:
        """Turn librados and librbd errors into StoreError naming the store and the operation (never a URL or a key)."""
        try:
            yield
        except self._rbd.ImageNotFound as exc:
            raise StoreNotFoundError(f"rbd store {self.name}: {operation}: no such image") from exc
        except (self._rados.Error, self._rbd.Error) as exc:
            code = getattr(exc, "errno", None)
            error = StoreFullError if code in (errno.ENOSPC, errno.EDQUOT) else StoreError
            reason = errno.errorcode.get(abs(code), str(code)) if isinstance(code, int) else "error"
            raise error(f"rbd store {self.name}: {operation} failed ({type(exc).__name__}, {reason})") from exc

    # Data ------------------------------------------------------------------------------------------------------

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = lambda: None) -> str:
        """Write the scratch image and its snapshot, then rename it to the final name if that name is free.

        What chunks or ready() raise goes through unchanged, after the scratch image is removed (if the
        cluster allows it now; the upload reaper finds it by its recorded name otherwise).
        """
        final, scratch = self.locations.parse(target.url), self.locations.parse(target.scratch_url)
        if final.is_scratch or not scratch.is_scratch:
            raise StoreError(f"rbd store {self.name}: an upload's names must come from plan_upload")
        with self._pool("add") as ioctx:
            if self._exists(ioctx, final.image):  # early; the rename below is what guarantees it
                raise StoreDuplicateError(f"rbd store {self.name}: an image of that name already exists")
            self._create(ioctx, scratch.image)
            try:
                self._write(ioctx, scratch.image, chunks)
                ready()
                with self._calls("add"):
                    try:
                        self._rbd.RBD().rename(ioctx, scratch.image, final.image)
                    except self._rbd.ImageExists:
                        raise StoreDuplicateError(
                            f"rbd store {self.name}: an image of that name already exists"
                        ) from None
            except BaseException:
                try:
                    self._remove(ioctx, scratch.image, "removing a failed upload")
                except StoreError:
                    log.warning("rbd store %s: a failed upload's scratch image is left to the reaper", self.name)
                raise
        return target.url

    def _exists(self, ioctx: Any, image: str) -> bool:
        try:
            with self._calls("add"), self._rbd.Image(ioctx, image, read_only=True):
                return True
        except StoreNotFoundError:
            return False

    def _create(self, ioctx: Any, image: str) -> None:
        """An empty format-2 image whose objects are chunk-sized, with layering (clones need it)."""
        with self._calls("add"):
            features = self._connected().conf_get("rbd_default_features")
            # None lets librbd apply rbd_default_features; only "0" would leave out layering (as Glance does).
            wanted = self._rbd.RBD_FEATURE_LAYERING if str(features).strip() == "0" else None
            order = self.chunk_bytes.bit_length() - 1
            self._rbd.RBD().create(ioctx, image, 0, order, old_format=False, features=wanted)

    def _write(self, ioctx: Any, image_name: str, chunks: Iterable[bytes]) -> None:
        """Write chunk-sized blocks at growing offsets, growing the image ahead as Glance does; end at the exact size.

        The chunks are pulled outside any error translation: what they raise is the caller's, unchanged.
        """
        with self._calls("add"):
            image = self._rbd.Image(ioctx, image_name)
        try:
            size_bytes = offset = 0
            step_bytes = self.chunk_bytes
            for block in _blocks(chunks, self.chunk_bytes):
                with self._calls("add"):
                    if offset + len(block) > size_bytes:
                        step_bytes = min(step_bytes * 2, MAX_RESIZE_STEP_BYTES)
                        size_bytes += step_bytes
                        image.resize(size_bytes)
                    if not (self.is_thin and block.count(0) == len(block)):
                        image.write(block, offset)
                offset += len(block)
                del block  # not held while the next block is gathered: memory stays at about two blocks
            with self._calls("add"):
                if size_bytes != offset:
                    image.resize(offset)
                image.flush()
                image.create_snap(SNAPSHOT)
                image.protect_snap(SNAPSHOT)
        except BaseException:
            with suppress(Exception):
                image.close()
            raise
        with self._calls("add"):
            image.close()

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the image (its snapshot when the URL names one that exists) in pieces of at most chunk_bytes."""
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        location = self.locations.parse(url)
        self.get_size(url)  # missing data is an error of this call, not of the first read
        return self._read(location, chunk_bytes)

    def _read(self, location: RbdLocation, chunk_bytes: int) -> Iterator[bytes]:
        with self._pool("get") as ioctx:
            with self._calls("get"):
                image = self._open_for_reading(ioctx, location)
            try:
                with self._calls("get"):
                    size_bytes = image.size()
                offset = 0
                while offset < size_bytes:
                    with self._calls("get"):
                        data = image.read(offset, min(chunk_bytes, size_bytes - offset))
                    if not data:
                        raise StoreError(f"rbd store {self.name}: get: the image ended early")
                    offset += len(data)
                    yield data
            finally:
                with suppress(Exception):
                    image.close()

    def _open_for_reading(self, ioctx: Any, location: RbdLocation) -> Any:
        """The image at its snapshot; the image itself if the snapshot is missing (a crash before it was made)."""
        if location.snapshot is not None:
            with suppress(self._rbd.ImageNotFound):
                return self._rbd.Image(ioctx, location.image, snapshot=location.snapshot, read_only=True)
        return self._rbd.Image(ioctx, location.image, read_only=True)

    def get_size(self, url: str) -> int:
        """The size of what get() reads; StoreNotFoundError when the image is not there."""
        location = self.locations.parse(url)
        with (
            self._pool("get_size") as ioctx,
            self._calls("get_size"),
            self._open_for_reading(ioctx, location) as image,
        ):
            return int(image.size())

    def delete(self, url: str) -> None:
        """Remove the whole image, its snapshots first; gone already is fine, an image with clones is in use."""
        location = self.locations.parse(url)
        with self._pool("delete") as ioctx:
            self._remove(ioctx, location.image, "delete")

    def _remove(self, ioctx: Any, image_name: str, operation: str) -> None:
        """Unprotect and remove every snapshot, then the image; only the image's own absence means done."""
        rbd = self._rbd
        with self._calls(operation):
            try:
                image = rbd.Image(ioctx, image_name)
            except rbd.ImageNotFound:
                return
            try:
                with image:
                    ours = self._connected().get_instance_id()
                    if any(watcher["id"] != ours for watcher in image.watchers_list()):
                        # librbd would wait for another client's lock and watch, up to 30 s for a dead one.
                        raise StoreError(f"rbd store {self.name}: {operation}: the image is open in another client")
                    for snapshot in list(image.list_snaps()):
                        with suppress(rbd.ImageNotFound):  # removed meanwhile by another deleter
                            if image.is_protected_snap(snapshot["name"]):
                                image.unprotect_snap(snapshot["name"])
                            image.remove_snap(snapshot["name"])
                rbd.RBD().remove(ioctx, image_name)
            except rbd.ImageNotFound:
                return
            except (rbd.ImageBusy, rbd.ImageHasSnapshots) as exc:
                raise StoreError(
                    f"rbd store {self.name}: {operation}: the image is in use (a clone of it, or a client)"
                ) from exc

    # Inventory -------------------------------------------------------------------------------------------------

    def inventory(self) -> Iterator[StoredData]:
        """The pool's images of this store's names, by name, a page of the pool's directory at a time.

        Images named otherwise cannot be this store's locations (validate_url refuses them) and are not listed.
        """
        fsid = self._cluster_fsid()
        after = ""
        while True:
            with self._pool("inventory") as ioctx:
                names = self._directory_page(ioctx, after)
                found = [self._describe(ioctx, RbdLocation(fsid, self.pool, name, None)) for name in names]
            yield from (item for item in found if item is not None)
            if len(names) < DIRECTORY_PAGE:
                return
            after = DIRECTORY_PREFIX + names[-1]

    def _directory_page(self, ioctx: Any, after: str) -> list[str]:
        """The next image names after `after` (a directory key), in the directory's (byte) order."""
        with self._calls("inventory"), self._rados.ReadOpCtx() as operation:
            pairs, _ = ioctx.get_omap_vals(operation, after, DIRECTORY_PREFIX, DIRECTORY_PAGE)
            try:
                ioctx.operate_read_op(operation, DIRECTORY_OBJECT)
            except self._rados.ObjectNotFound:
                return []  # no image was ever made in this pool
            return [key.removeprefix(DIRECTORY_PREFIX) for key, _ in pairs]

    def _describe(self, ioctx: Any, location: RbdLocation) -> StoredData | None:
        if not IMAGE_NAME.fullmatch(location.image) and not location.is_scratch:
            return None
        try:
            with self._calls("inventory"), self._rbd.Image(ioctx, location.image, read_only=True) as image:
                size_bytes, modified = int(image.size()), image.modify_timestamp()
        except StoreNotFoundError:
            return None  # removed since the directory was read
        if modified.tzinfo is not None:
            modified = modified.astimezone(UTC).replace(tzinfo=None)
        return StoredData(location.key, size_bytes, modified, location.is_scratch)


def _blocks(chunks: Iterable[bytes], block_bytes: int) -> Iterator[bytes]:
    """The bytes regrouped into blocks of block_bytes (the last one shorter): one RBD object per write.

    Pieces are held as views of the caller's chunks until a block is joined, so memory stays at about a block.
    """
    pending: list[memoryview] = []
    pending_bytes = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            piece, view = view[: block_bytes - pending_bytes], view[block_bytes - pending_bytes :]
            pending.append(piece)
            pending_bytes += len(piece)
            if pending_bytes == block_bytes:
                block = b"".join(pending)
                pending.clear()
                pending_bytes = 0
                yield block
                del block  # the caller has written it: not kept while the next one is gathered
    if pending_bytes:
        yield b"".join(pending)
