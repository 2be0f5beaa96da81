"""The rbd store's names: which URLs are locations of its pool, the URLs it writes, and their data key.

Apart from the I/O of locations/stores/rbd.py because reading a URL needs neither librados nor the cluster
(only its fsid, which the store finds): the parser is tested without Ceph.
"""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from locations.stores.base import UploadTarget
from locquota.errors import LocationOutsideStore

SNAPSHOT = "snap"
SCRATCH_SUFFIX = ".partial"
UNSET_FSID = "00000000-0000-0000-0000-000000000000"  # what librados reports when ceph.conf names no fsid
MAX_URL_CHARS = 4096

_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
FSID = re.compile(_UUID)
IMAGE_NAME = re.compile(_UUID)  # Glance names an image's RBD image by its id
SCRATCH_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[0-9a-f]{32}\.partial")
# After "rbd://": unreserved characters, slashes and whole percent escapes. This alone keeps out user info
# ("@"), ports (":"), queries, fragments, whitespace, control characters and anything not ASCII.
URL_BODY = re.compile(r"(?:[A-Za-z0-9._~/-]|%[0-9A-Fa-f]{2})+")


@dataclass(frozen=True, slots=True)
class RbdLocation:
    """The RBD image a location URL names, and the snapshot it reads from (None: the image itself)."""

    fsid: str
    pool: str
    image: str
    snapshot: str | None

    @property
    def key(self) -> str:
        """The data key, and the URL that the inventory and scratch names use."""
        return f"rbd://{self.fsid}/{quote(self.pool, safe='')}/{self.image}"

    @property
    def is_scratch(self) -> bool:
        """Whether it names an upload's bytes not yet put in place."""
        return SCRATCH_NAME.fullmatch(self.image) is not None


class RbdLocations:
    """Reads location URLs for one pool of one cluster, refusing all it does not understand, and names uploads.

    cluster_fsid is asked only once a URL's syntax is acceptable (it may have to reach the cluster).
    """

    def __init__(self, pool: str, cluster_fsid: Callable[[], str]) -> None:
        self.pool = pool
        self._cluster_fsid = cluster_fsid

    def parse(self, url: str) -> RbdLocation:
        """The image url names; LocationOutsideStore (never quoting the URL) unless it is one of this store's."""
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise _outside("is not an RBD location URL")
        scheme, separator, body = url.partition("://")
        if scheme.lower() != "rbd" or not separator or not URL_BODY.fullmatch(body):
            raise _outside("is not an RBD location URL")
        pieces = body.split("/")
        if "" in pieces:
            raise _outside("has an empty part")
        if len(pieces) == 1:
            if "%" in body:  # Glance reads the old form without decoding it: an escape names another image
                raise _outside("names no image of this store")
            named_fsid, pool, image, snapshot = None, self.pool, body, None
        elif len(pieces) in (3, 4):
            named_fsid, pool, image, *rest = map(_decoded, pieces)
            snapshot = rest[0] if rest else None
            if not FSID.fullmatch(named_fsid) or named_fsid == UNSET_FSID:
                raise _outside("names no Ceph cluster")
        else:
            raise _outside("does not have 1, 3 or 4 parts")
        if pool != self.pool:
            raise _outside("names another pool")
        if snapshot not in (None, SNAPSHOT):
            raise _outside("names a snapshot this store does not make")
        if not IMAGE_NAME.fullmatch(image) and not SCRATCH_NAME.fullmatch(image):
            raise _outside("names no image of this store")
        fsid = self._cluster_fsid()  # last: it may have to ask the cluster
        if named_fsid is not None and named_fsid.lower() != fsid:
            raise _outside("names another Ceph cluster")
        return RbdLocation(fsid, self.pool, image, snapshot)

    def upload_target(self, image_id: uuid.UUID) -> UploadTarget:
        """Glance's own URL for the image, and a scratch image no image id can be named."""
        prefix = f"rbd://{self._cluster_fsid()}/{quote(self.pool, safe='')}/"
        scratch = f"{image_id}.{uuid.uuid4().hex}{SCRATCH_SUFFIX}"
        return UploadTarget(f"{prefix}{image_id}/{SNAPSHOT}", prefix + scratch)


def _decoded(piece: str) -> str:
    """One part percent-decoded once, as Glance does; what decodes to a character outside a name is refused later."""
    try:
        return unquote_to_bytes(piece).decode("utf-8")
    except UnicodeDecodeError:
        raise _outside("is not UTF-8 once decoded") from None


def _outside(reason: str) -> LocationOutsideStore:
    return LocationOutsideStore(f"The RBD location URL {reason}.")
