"""The suite's real backends as locquota store sections (glance_store's option names), for the tests and benchmarks.

Small parts and segments, so that a few MiB of data go through every store's multi-part path.
"""

from pathlib import Path

from tests.ceph import CephCluster
from tests.conftest import multi_store
from tests.swift import SwiftCluster

TYPES = {"ceph": "rbd", "s3": "s3", "swift": "swift"}


def backend_options(ceph: CephCluster, swift: SwiftCluster, bucket: str, container: str) -> dict[str, dict[str, str]]:
    """Each real store's section, with glance_store's option names; small parts so the multi-part paths run."""
    return {
        "ceph": {
            "rbd_store_pool": ceph.pool,
            "rbd_store_user": ceph.user,
            "rbd_store_ceph_conf": str(ceph.conf_path),
            "rbd_store_chunk_size": "1",
            "rados_connect_timeout": "5",
        },
        "s3": {
            "s3_store_host": ceph.rgw_url,
            "s3_store_access_key": ceph.s3_access_key,
            "s3_store_secret_key": ceph.s3_secret_key,
            "s3_store_bucket": bucket,
            "s3_store_create_bucket_on_put": "true",
            "s3_store_bucket_url_format": "path",
            "s3_store_large_object_chunk_size": "5",
        },
        "swift": {
            **swift.glance_store_options(container),
            "swift_store_large_object_size": "1",
            "swift_store_large_object_chunk_size": "1",
        },
    }


def with_real_stores(
    settings: dict[str, str], ceph: CephCluster, swift: SwiftCluster, bucket: str, container: str, local: Path
) -> dict[str, str]:
    """The suite's settings with four stores: `local` (file, the default), `ceph` (rbd), `s3` and `swift`."""
    options = backend_options(ceph, swift, bucket, container)
    stores = {"local": ("file", {"filesystem_store_datadir": str(local)})}
    stores |= {name: (TYPES[name], section) for name, section in options.items()}
    return multi_store(settings, "local", stores)
