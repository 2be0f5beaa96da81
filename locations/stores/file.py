"""The `file` store: image data as files under one root directory (file:///<root>/<image-id>).

Every URL is resolved (symlinks and `..` included) and refused unless it lies strictly inside the root,
so nothing outside the root is ever read or deleted, whatever the database says.
"""

import errno
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

from locations.stores.base import StoreError, StoreFullError
from locquota.errors import LocationOutsideStore

MAX_URL_CHARS = 4096


class FileStore:
    """A directory on a local or mounted filesystem."""

    scheme = "file"

    def __init__(self, name: str, options: Mapping[str, str]) -> None:
        unknown = set(options) - {"datadir"}
        if unknown:
            raise ValueError(f"locquota.store.{name}.{sorted(unknown)[0]}: unknown option")
        if not options.get("datadir"):
            raise ValueError(f"locquota.store.{name}.datadir: required")
        self.name = name
        self.root = Path(options["datadir"]).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def url_for(self, path: Path) -> str:
        """The file URL of a path inside the root."""
        return "file://" + quote(str(path))

    def path_for(self, url: str) -> Path:
        """The checked path a URL names; LocationOutsideStore unless strictly inside the root."""
        if len(url) > MAX_URL_CHARS or "\x00" in url:
            raise LocationOutsideStore("The location URL is not a usable file URL.")
        parts = urlsplit(url)
        if (
            parts.scheme.lower() != self.scheme
            or parts.netloc not in ("", "localhost")
            or parts.query
            or parts.fragment
        ):
            raise LocationOutsideStore("The location URL is not a plain file URL of a configured store.")
        raw_path = unquote(parts.path)
        if "\x00" in raw_path or not raw_path.startswith("/") or ".." in raw_path.split("/"):
            raise LocationOutsideStore("The location URL's path is not allowed.")
        resolved = Path(os.path.realpath(raw_path))
        if resolved == self.root or self.root not in resolved.parents:
            raise LocationOutsideStore("The location URL is outside every configured store.")
        return resolved

    def validate_url(self, url: str) -> None:
        """Raise LocationOutsideStore unless url names a file strictly inside the root."""
        self.path_for(url)

    def add(self, image_id: uuid.UUID, chunks: Iterable[bytes]) -> str:
        """Write to a temporary file, then rename: a failed upload never leaves a partial image behind."""
        final = self.root / str(image_id)
        partial = self.root / f".{image_id}.{uuid.uuid4().hex}.partial"
        try:
            with partial.open("xb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(final)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                error = StoreFullError if exc.errno == errno.ENOSPC else StoreError
                raise error(f"file store {self.name}: {exc.strerror}") from exc
            raise
        return self.url_for(final)

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the file in fixed-size chunks."""
        path = self.path_for(url)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise StoreError(f"file store {self.name}: {exc.strerror}") from exc
        return _read_chunks(handle, chunk_bytes)

    def get_size(self, url: str) -> int:
        """The file's size; a location must name data that is there."""
        path = self.path_for(url)
        try:
            if not path.is_file():
                raise StoreError(f"file store {self.name}: not a regular file")
            return path.stat().st_size
        except OSError as exc:
            raise StoreError(f"file store {self.name}: {exc.strerror}") from exc

    def delete(self, url: str) -> None:
        """Remove the file; one already gone is fine."""
        path = self.path_for(url)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"file store {self.name}: {exc.strerror}") from exc


def _read_chunks(handle: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk
