"""The staging area of image import: a file store at Glance's node_staging_uri, named as Glance names it.

Staged data waits here for its glance-direct import (SPEC section 8b). Every API node must see the same
directory (a shared file system) when several serve one cloud: the import may run on any of them.
"""

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from locations.stores.base import Store
from locations.stores.file import FileStore
from locquota.settings import Settings

STAGING_STORE = "os_glance_staging_store"


def staging_store(settings: Settings, stores: Iterable[Store] = ()) -> Store | None:
    """The staging store, None when node_staging_uri is not set (no staging, so no glance-direct/web-download).

    Its directory may neither lie inside a file store's root nor hold one: staged data is no location, so a
    tenant could otherwise add another tenant's staged file as a location of its own (or a store's
    inventory would list staged files as orphans).
    """
    if not settings.node_staging_uri:
        return None
    parts = urlsplit(settings.node_staging_uri)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ValueError("locquota.node_staging_uri: expected file:///<absolute directory>")
    if STAGING_STORE in {name for name, _ in settings.backends}:
        raise ValueError(f"locquota.enabled_backends: {STAGING_STORE!r} is the staging area's reserved name")
    staging = FileStore(STAGING_STORE, {"filesystem_store_datadir": unquote(parts.path)})
    for store in stores:
        root = getattr(store, "root", None)
        if isinstance(root, Path) and (staging.root.is_relative_to(root) or root.is_relative_to(staging.root)):
            raise ValueError(
                f"locquota.node_staging_uri: the staging directory and store {store.name!r}'s directory overlap;"
                " give staging a directory of its own"
            )
    return staging
