"""The `file` store: image data as files under one root directory (file:///<root>/<image-id>).

A URL names the file its canonical path names: percent-decoded once, host (`localhost`, none, `////`) and
scheme case normalised, dot and empty segments removed and symlinks resolved by the kernel's rules
(realpath), then refused unless it lies strictly inside the root and is a regular file where it exists.
That path, as a file URL, is the data's key (SPEC section 6); its device and inode recognise a second
name of the same file (a hard link, a case-insensitive filesystem).

Reads and deletions check again when they act: the file is opened without following a symlink and
where it really landed is read back from /proc, and a name is unlinked relative to its verified parent
directory, so a symlink swapped in after the check can never reach outside the root.
"""

import errno
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import quote, unquote_to_bytes, urlsplit

from locations.stores.base import (
    DataIdentity,
    StoredData,
    StoreDuplicateError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
    UploadTarget,
)
from locquota.errors import LocationNotAFile, LocationOutsideStore, LocationUndecidable

MAX_URL_CHARS = 4096
LOCAL_HOSTS = ("", "localhost")
PROC_FD = Path("/proc/self/fd")
O_PATH: int | None = getattr(os, "O_PATH", None)  # Linux
SCRATCH_SUFFIX = ".partial"
T = TypeVar("T")


class FileStore:
    """A directory on a local or mounted filesystem."""

    scheme = "file"
    schemes = ("file",)

    is_read_only = False

    def __init__(self, name: str, options: Mapping[str, str]) -> None:
        unknown = set(options) - {"datadir", "filesystem_store_datadir", "store_description"}
        if unknown:
            raise ValueError(f"locquota.store.{name}.{sorted(unknown)[0]}: unknown option")
        # glance_store's option name, or locquota's older one.
        datadir = options.get("filesystem_store_datadir") or options.get("datadir")
        if not datadir:
            raise ValueError(f"locquota.store.{name}.filesystem_store_datadir: required")
        self.name = name
        self.description = options.get("store_description", "")
        self.root = Path(datadir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._inside = os.path.join(self.root, "")  # the root with one trailing slash: what paths inside start with

    def url_for(self, path: Path) -> str:
        """The file URL of a path inside the root (the canonical spelling, and the data's key)."""
        return "file://" + quote(os.fsencode(path))

    def path_for(self, url: str) -> Path:
        """The canonical path a URL names; a 400 LocquotaError unless it is strictly inside the root."""
        return self._resolve(url)[0]

    def validate_url(self, url: str) -> None:
        """Raise a 400 LocquotaError unless url names a file (or a file yet to be) strictly inside the root."""
        self._resolve(url)

    def identify(self, url: str) -> DataIdentity:
        """The canonical path as a file URL; device and inode where the file exists."""
        path, status = self._resolve(url)
        if status is None:
            return DataIdentity(self.url_for(path))
        return DataIdentity(self.url_for(path), f"{status.st_dev}:{status.st_ino}", status.st_nlink)

    def _resolve(self, url: str) -> tuple[Path, os.stat_result | None]:
        path = self._decoded_path(url)
        found = self._resolve_canonical(path)
        if found is not None:
            return found
        try:
            resolved = Path(os.path.realpath(path, strict=True))
        except (FileNotFoundError, NotADirectoryError):
            resolved = Path(os.path.realpath(path))  # no data (yet): the name it would have
        except OSError as exc:  # a symlink loop, a name too long, a directory we may not search
            reason = errno.errorcode.get(exc.errno or 0, "error")
            raise LocationUndecidable(f"The location URL's path cannot be resolved ({reason}).") from None
        if resolved == self.root or self.root not in resolved.parents:
            raise LocationOutsideStore("The location URL is outside every configured store.")
        try:
            status = resolved.stat()
        except (FileNotFoundError, NotADirectoryError):
            return resolved, None
        except OSError as exc:
            raise LocationUndecidable("The location URL's file cannot be examined.") from exc
        if not stat.S_ISREG(status.st_mode):
            raise LocationNotAFile("The location URL names a directory or a special file, not image data.")
        return resolved, status

    def _resolve_canonical(self, path: str) -> tuple[Path, os.stat_result] | None:
        """What _resolve finds for a path already spelled canonically, in four system calls; None otherwise.

        The kernel resolves the path once (O_PATH opens no data, follows symlinks, and blocks on nothing),
        and /proc says where it landed. If that is the path as given, no symlink, dot segment or doubled
        slash was on the way: realpath would return the path unchanged, and the descriptor's status is
        the file's. Anything else (a symlink, a missing file, a directory, no /proc, another OS) is left
        to the general path, which decides it and raises its errors exactly as before.
        """
        if O_PATH is None or not path.startswith(self._inside):
            return None
        try:
            fd = os.open(path, O_PATH | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.readlink(f"{PROC_FD}/{fd}") != path:
                return None
            status = os.fstat(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        return (Path(path), status) if stat.S_ISREG(status.st_mode) else None

    def _decoded_path(self, url: str) -> str:
        """The absolute path of a plain local file URL, percent-decoded once; 400 for anything else."""
        if len(url) > MAX_URL_CHARS or "\x00" in url:
            raise LocationOutsideStore("The location URL is not a usable file URL.")
        parts = urlsplit(url)
        if parts.scheme.lower() != self.scheme or parts.netloc.lower() not in LOCAL_HOSTS:
            raise LocationOutsideStore("The location URL is not a plain file URL of a configured store.")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise LocationOutsideStore("The location URL is not a plain file URL of a configured store.")
        # Bytes, then the filesystem's own decoding: a name that is not UTF-8 is still one name.
        path = os.fsdecode(unquote_to_bytes(parts.path))
        if "\x00" in path or not path.startswith("/"):
            raise LocationOutsideStore("The location URL's path is not allowed.")
        return "/" + path.lstrip("/")  # file:////root/x is file:///root/x (POSIX keeps a leading "//")

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """<root>/<image-id>, written first as <root>/.<image-id>.<random>.partial."""
        final = self.root / str(image_id)
        scratch = self.root / f".{image_id}.{uuid.uuid4().hex}{SCRATCH_SUFFIX}"
        return UploadTarget(self.url_for(final), self.url_for(scratch))

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = lambda: None) -> str:
        """Write the scratch file, then link it in place: a failed upload never leaves a partial image behind.

        A hard link, not a rename, puts the data in place: it fails if the name is taken, so data another
        location may reach (a file left behind, or one a tenant added by URL) is never replaced. Only this
        store's own I/O errors become StoreError: what the chunks or ready() raise goes through unchanged.
        """
        final, partial = self.path_for(target.url), self.path_for(target.scratch_url)
        handle = self._io(lambda: partial.open("xb"))
        try:
            with handle:
                for chunk in chunks:
                    self._io(lambda chunk=chunk: handle.write(chunk))
                self._io(handle.flush)
                self._io(lambda: os.fsync(handle.fileno()))
            ready()
            self._io(lambda: os.link(partial, final))
        finally:
            partial.unlink(missing_ok=True)
        return self.url_for(final)

    def _io(self, operation: Callable[[], T]) -> T:
        """Run one filesystem call; its OSError as the StoreError the rest of locquota understands."""
        try:
            return operation()
        except FileExistsError as exc:
            raise StoreDuplicateError(f"file store {self.name}: data is already stored under this name") from exc
        except OSError as exc:
            error = StoreFullError if exc.errno == errno.ENOSPC else StoreError
            raise error(f"file store {self.name}: {exc.strerror}") from exc

    def inventory(self) -> Iterator[StoredData]:
        """Every regular file under the root, by path; symlinks are names of data, not data, and are skipped."""
        for directory, subdirectories, files in os.walk(self.root, onerror=_raise_store_error):
            subdirectories.sort()
            for name in sorted(files):
                path = Path(directory, name)
                try:
                    status = path.lstat()
                except FileNotFoundError:
                    continue  # deleted while we looked
                if not stat.S_ISREG(status.st_mode):
                    continue
                modified = datetime.fromtimestamp(status.st_mtime, UTC).replace(tzinfo=None)
                scratch = name.startswith(".") and name.endswith(SCRATCH_SUFFIX) and path.parent == self.root
                yield StoredData(self.url_for(path), status.st_size, modified, scratch)

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the file in fixed-size chunks, from the file the canonical path names at open time."""
        path = self.path_for(url)
        try:
            fd = _open_where_expected(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise StoreNotFoundError(f"file store {self.name}: no such file") from exc
        except OSError as exc:
            raise StoreError(f"file store {self.name}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LocationNotAFile("The location URL names a directory or a special file, not image data.")
        return _read_chunks(os.fdopen(fd, "rb"), chunk_bytes)

    def get_size(self, url: str) -> int:
        """The file's size; a location must name data that is there."""
        status = self._resolve(url)[1]
        if status is None:
            raise StoreNotFoundError(f"file store {self.name}: no such file")
        return status.st_size

    def delete(self, url: str) -> None:
        """Remove the file's name, relative to its verified parent directory; one already gone is fine."""
        path = self.path_for(url)
        try:
            parent = _open_where_expected(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"file store {self.name}: {exc.strerror}") from exc
        try:
            os.unlink(path.name, dir_fd=parent)  # never follows a symlink: removes at most the link itself
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"file store {self.name}: {exc.strerror}") from exc
        finally:
            os.close(parent)


def _open_where_expected(path: Path, flags: int) -> int:
    """Open path (a symlink as its last part is refused), and check that it is what was opened.

    A directory above it swapped for a symlink between the check and the open would land elsewhere:
    /proc/self/fd tells where the descriptor really points. Without /proc, the device and inode of the
    descriptor must match those of the path.
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            landed = os.readlink(PROC_FD / str(fd))
        except OSError:
            opened, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
            moved = (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino)
        else:
            moved = landed != str(path)
        if moved:
            raise LocationOutsideStore("The location's file moved outside its checked path while being opened.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _raise_store_error(exc: OSError) -> None:
    raise StoreError(f"file store: {exc.strerror}: {exc.filename}") from exc


def _read_chunks(handle: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk
