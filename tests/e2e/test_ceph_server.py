"""The real Ceph of tests/ceph.py: RBD images as client.glance, S3 objects through radosgw, radosgw down and back.

And glance_store 5.7.0's rbd and s3 stores against it, through its multi-store API as Glance drives it
(`enabled_backends = ceph:rbd, s3:s3`): add_with_multihash(), get(), get_size_from_uri_and_backend(), delete().
"""

import contextlib
import hashlib
import io
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from botocore.exceptions import EndpointConnectionError
from glance_store import exceptions as store_exceptions
from glance_store import multi_backend
from oslo_config import cfg

from tests.ceph import (
    CephCluster,
)
from tests.glance_stores import glance_stores

SMALL = (1 << 20) + 7  # one RBD chunk (8 MiB), one S3 PUT
LARGE = (12 << 20) + 3  # two RBD chunks; three S3 parts of 5 MiB (s3_store_large_object_size = 5)
GLANCE_BUCKET = "glance-images"  # made by the s3 store itself (s3_store_create_bucket_on_put)
HASHING_ALGO = "sha512"  # Glance's default os_hash_algo


@pytest.fixture
def rgw_down(ceph: CephCluster) -> Iterator[None]:
    """radosgw stopped for the test (its port closed), started again after it."""
    ceph.stop_rgw()
    try:
        yield
    finally:
        ceph.start_rgw()


def test_glance_user_writes_reads_and_deletes_an_rbd_image(ceph):
    name = str(uuid.uuid4())
    data = os.urandom(SMALL)
    with ceph.client("client.glance") as cluster, ceph.ioctx(cluster) as ioctx:
        ceph.rbd.RBD().create(ioctx, name, len(data))
        with ceph.rbd.Image(ioctx, name) as image:
            image.write(data, 0)
            read = image.read(0, len(data))
        listed = ceph.rbd_images()
        ceph.rbd.RBD().remove(ioctx, name)
    assert read == data
    assert name in listed
    assert name not in ceph.rbd_images()


def test_s3_user_puts_gets_lists_and_deletes_an_object(ceph):
    s3 = ceph.s3_client()
    key = str(uuid.uuid4())
    data = os.urandom(SMALL)
    s3.put_object(Bucket=ceph.bucket, Key=key, Body=data)
    read = s3.get_object(Bucket=ceph.bucket, Key=key)["Body"].read()
    listed = ceph.s3_objects()
    s3.delete_object(Bucket=ceph.bucket, Key=key)
    assert read == data
    assert key in listed
    assert key not in ceph.s3_objects()


def test_stopped_rgw_refuses_connections(ceph, rgw_down):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ceph.rgw_port), timeout=5).close()
    with pytest.raises(EndpointConnectionError):
        ceph.s3_client().list_objects_v2(Bucket=ceph.bucket)


def test_restarted_rgw_serves_what_was_stored_before(ceph):
    s3 = ceph.s3_client()
    key = str(uuid.uuid4())
    s3.put_object(Bucket=ceph.bucket, Key=key, Body=b"kept in RADOS")
    ceph.stop_rgw()
    ceph.start_rgw()
    assert s3.get_object(Bucket=ceph.bucket, Key=key)["Body"].read() == b"kept in RADOS"
    s3.delete_object(Bucket=ceph.bucket, Key=key)


# glance_store ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glance_conf(ceph: CephCluster) -> Iterator[cfg.ConfigOpts]:
    """glance_store's stores `ceph` (rbd, as client.glance) and `s3` on this cluster (tests.glance_stores)."""
    options = {
        "ceph": {
            "rbd_store_pool": ceph.pool,
            "rbd_store_user": ceph.user,
            "rbd_store_ceph_conf": str(ceph.conf_path),
            "rados_connect_timeout": 10,  # default -1: librados waits for ever for a cluster that is down
        },
        "s3": {
            "s3_store_host": ceph.rgw_url,
            "s3_store_access_key": ceph.s3_access_key,
            "s3_store_secret_key": ceph.s3_secret_key,
            "s3_store_bucket": GLANCE_BUCKET,
            "s3_store_create_bucket_on_put": True,
            "s3_store_bucket_url_format": "path",
            "s3_store_large_object_size": 5,  # MiB: LARGE goes up in parts (the store's thread pool)
            "s3_store_large_object_chunk_size": 5,
        },
    }
    # Connects to the cluster as client.glance (the rbd store asks for the fsid of its URLs).
    with glance_stores({"ceph": "rbd", "s3": "s3"}, "ceph", options) as conf:
        yield conf


@dataclass(frozen=True, slots=True)
class Stored:
    """What glance_store's add_with_multihash() was given and what it answered."""

    backend: str
    image_id: str
    data: bytes
    url: str
    size: int
    checksum: str
    multihash: str
    metadata: dict[str, str]


def add(conf: cfg.ConfigOpts, backend: str, data: bytes, declared_size: int | None = None) -> Stored:
    """Add data as a new image, as Glance does (declared_size 0: a size Glance does not know in advance)."""
    image_id = str(uuid.uuid4())
    size = len(data) if declared_size is None else declared_size
    url, written, checksum, multihash, metadata = multi_backend.add_with_multihash(
        conf, image_id, io.BytesIO(data), size, backend, HASHING_ALGO
    )
    return Stored(backend, image_id, data, url, written, checksum, multihash, metadata)


def delete_if_there(stored: Stored) -> None:
    with contextlib.suppress(store_exceptions.NotFound):
        multi_backend.delete(stored.url, stored.backend)


@pytest.fixture(params=[("ceph", SMALL), ("ceph", LARGE), ("s3", SMALL), ("s3", LARGE)], ids=lambda p: f"{p[0]}-{p[1]}")
def stored(request: pytest.FixtureRequest, glance_conf: cfg.ConfigOpts) -> Iterator[Stored]:
    """Random data just added to a store; deleted after the test unless the test did."""
    backend, size = request.param
    added = add(glance_conf, backend, os.urandom(size))
    yield added
    delete_if_there(added)


def in_cluster(ceph: CephCluster, stored: Stored) -> bool:
    """Whether the image's data is in the cluster: an RBD image in pool images, or an object in the bucket."""
    if stored.backend == "ceph":
        return stored.image_id in ceph.rbd_images()
    return stored.image_id in ceph.s3_objects(GLANCE_BUCKET)


def test_glance_store_add_answers_the_location_url_of_its_store(ceph, stored):
    expected = {
        "ceph": f"rbd://{ceph.fsid}/{ceph.pool}/{stored.image_id}/snap",
        "s3": f"s3://127.0.0.1:{ceph.rgw_port}/{GLANCE_BUCKET}/{stored.image_id}",
    }
    assert stored.url == expected[stored.backend]
    assert stored.metadata == {"store": stored.backend}


def test_glance_store_add_counts_and_hashes_every_byte(stored):
    assert stored.size == len(stored.data)
    assert stored.checksum == hashlib.md5(stored.data).hexdigest()  # noqa: S324  (Glance's legacy checksum)
    assert stored.multihash == hashlib.sha512(stored.data).hexdigest()


def test_glance_store_add_puts_the_data_in_the_cluster(ceph, stored):
    assert in_cluster(ceph, stored)


def test_glance_store_get_returns_the_bytes_added(stored):
    chunks, size = multi_backend.get(stored.url, stored.backend)
    assert size == len(stored.data)
    assert b"".join(chunks) == stored.data


def test_glance_store_size_is_the_size_added(stored):
    assert multi_backend.get_size_from_uri_and_backend(stored.url, stored.backend) == len(stored.data)


def test_glance_store_delete_removes_the_data_from_the_cluster(ceph, stored):
    multi_backend.delete(stored.url, stored.backend)
    assert not in_cluster(ceph, stored)
    with pytest.raises(store_exceptions.NotFound):
        multi_backend.get_size_from_uri_and_backend(stored.url, stored.backend)


@pytest.mark.parametrize("backend", ["ceph", "s3"])
def test_glance_store_add_of_an_unknown_size_stores_every_byte(ceph, glance_conf, backend):
    added = add(glance_conf, backend, os.urandom(LARGE), declared_size=0)
    try:
        size = multi_backend.get_size_from_uri_and_backend(added.url, backend)
    finally:
        delete_if_there(added)
    assert (added.size, size) == (LARGE, LARGE)


def test_glance_store_s3_adds_a_large_image_in_parts(ceph, glance_conf):
    added = add(glance_conf, "s3", os.urandom(LARGE))
    try:
        etag = ceph.s3_client().head_object(Bucket=GLANCE_BUCKET, Key=added.image_id)["ETag"]
    finally:
        delete_if_there(added)
    assert etag.strip('"').endswith("-3")  # a multipart upload's ETag counts its parts


def test_glance_store_s3_with_rgw_down_raises_botocores_connection_error(glance_conf, rgw_down):
    # glance_store lets botocore's error through: no glance_store exception says "store unavailable".
    with pytest.raises(EndpointConnectionError):
        add(glance_conf, "s3", os.urandom(SMALL))
