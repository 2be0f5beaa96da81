"""The S3 store (locations/stores/s3.py) on the suite's real radosgw: the store contract, and what only S3 has.

Each test gets a bucket of its own, emptied (objects and incomplete multipart uploads) and removed after it.
The part size is S3's minimum, 5 MiB, so a 12 MiB image goes up in three parts. What is in the bucket is
checked with boto3 as the S3 user (ceph.s3_client()), never through the store under test. glance_store 5.7.0
writes to a bucket of its own in the same RGW, so the URLs and objects Glance made are checked as they are.
"""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from glance_store import exceptions as store_exceptions
from glance_store import multi_backend
from oslo_config import cfg

from locations.stores.base import StoreDuplicateError, StoreError, StoreFullError, StoreNotFoundError
from locations.stores.s3 import S3Store
from locquota.errors import LocationOutsideStore
from tests.ceph import CephCluster
from tests.glance_stores import glance_stores
from tests.store_contract import CHUNK, StoreContract, chunks

REPOSITORY = Path(__file__).resolve().parents[2]
MIB = 1 << 20
PART = 5 * MIB  # s3_store_large_object_chunk_size = 5: S3's smallest part
LARGE = 12 * MIB + 3  # three parts
SMALL = MIB + 7  # one PUT


def make_bucket(ceph: CephCluster) -> str:
    bucket = f"locquota-test-{uuid.uuid4().hex[:12]}"
    ceph.s3_client().create_bucket(Bucket=bucket)
    return bucket


def remove_bucket(ceph: CephCluster, bucket: str) -> None:
    """Abort its multipart uploads, delete its objects, then the bucket; one already gone is fine."""
    s3 = ceph.s3_client()
    with contextlib.suppress(s3.exceptions.NoSuchBucket):
        for key, upload_id in incomplete_uploads(ceph, bucket):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        for key in ceph.s3_objects(bucket):
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_bucket(Bucket=bucket)


def incomplete_uploads(ceph: CephCluster, bucket: str) -> list[tuple[str, str]]:
    """The bucket's incomplete multipart uploads, as (key, upload id), seen by boto3."""
    pages = ceph.s3_client().get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
    return [(upload["Key"], upload["UploadId"]) for page in pages for upload in page.get("Uploads", [])]


def store_options(ceph: CephCluster, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "s3_store_host": ceph.rgw_url,
        "s3_store_access_key": ceph.s3_access_key,
        "s3_store_secret_key": ceph.s3_secret_key,
        "s3_store_bucket": bucket,
        "s3_store_bucket_url_format": "path",
        "s3_store_large_object_chunk_size": "5",
        "s3_store_large_object_size": "5",
        "s3_store_connect_timeout": "2",
        "s3_store_read_timeout": "10",
        **extra,
    }


def random_chunks(size: int, chunk_bytes: int = MIB) -> Iterator[bytes]:
    """size random bytes made as they are asked for: the test holds no copy of a large image."""
    for start in range(0, size, chunk_bytes):
        yield os.urandom(min(chunk_bytes, size - start))


@pytest.fixture
def bucket(ceph: CephCluster) -> Iterator[str]:
    name = make_bucket(ceph)
    yield name
    remove_bucket(ceph, name)


@pytest.fixture
def store(ceph: CephCluster, bucket: str) -> S3Store:
    return S3Store("s3", store_options(ceph, bucket))


class TestS3StoreContract(StoreContract):
    """The store contract on RGW, a fresh bucket per test (the module's `store` fixture)."""


def add(store: S3Store, data: bytes, ready: Callable[[], None] = lambda: None) -> tuple[uuid.UUID, str]:
    image_id = uuid.uuid4()
    return image_id, store.add(store.plan_upload(image_id), chunks(data, MIB), ready)


def key_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


# The objects in the bucket -----------------------------------------------------------------------------------


def test_added_data_is_one_object_named_by_the_image_id(ceph, bucket, store):
    data = os.urandom(SMALL)
    image_id, _ = add(store, data)

    assert ceph.s3_objects(bucket) == [str(image_id)]
    assert ceph.s3_client().head_object(Bucket=bucket, Key=str(image_id))["ContentLength"] == SMALL
    assert ceph.s3_client().get_object(Bucket=bucket, Key=str(image_id))["Body"].read() == data


def test_deleted_data_is_gone_from_the_bucket(ceph, bucket, store):
    _, url = add(store, os.urandom(SMALL))

    store.delete(url)

    assert ceph.s3_objects(bucket) == []


def test_data_over_one_part_goes_up_in_parts_and_comes_back_identical(ceph, bucket, store):
    data = os.urandom(LARGE)
    image_id, url = add(store, data)

    read = list(store.get(url, CHUNK))

    assert b"".join(read) == data
    assert max(map(len, read)) <= CHUNK
    assert store.get_size(url) == LARGE
    assert ceph.s3_objects(bucket) == [str(image_id)]  # the scratch object is gone
    assert incomplete_uploads(ceph, bucket) == []
    etag = ceph.s3_client().head_object(Bucket=bucket, Key=str(image_id))["ETag"]
    assert etag.strip('"').endswith("-3")  # a multipart upload's ETag counts its parts


def test_data_over_the_copy_limit_is_copied_in_parts(ceph, bucket, store):
    store.copy_object_max_bytes = PART  # as S3's 5 GiB limit of one CopyObject, scaled down
    data = os.urandom(LARGE)
    image_id, url = add(store, data)

    assert b"".join(store.get(url, MIB)) == data
    assert ceph.s3_objects(bucket) == [str(image_id)]
    assert incomplete_uploads(ceph, bucket) == []


def test_a_write_failing_after_two_parts_leaves_no_object_and_no_upload(ceph, bucket, store):
    seen_uploads = []

    def failing() -> Iterator[bytes]:
        yield from random_chunks(2 * PART + MIB)
        seen_uploads.extend(incomplete_uploads(ceph, bucket))
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        store.add(store.plan_upload(uuid.uuid4()), failing())

    assert len(seen_uploads) == 1  # two parts were up when it failed
    assert ceph.s3_objects(bucket) == []
    assert incomplete_uploads(ceph, bucket) == []


def test_large_data_refused_just_before_it_lands_leaves_nothing(ceph, bucket, store):
    def refuse() -> None:
        raise RuntimeError("the lease was taken over")

    with pytest.raises(RuntimeError):
        add(store, os.urandom(LARGE), ready=refuse)

    assert ceph.s3_objects(bucket) == []
    assert incomplete_uploads(ceph, bucket) == []


def test_large_data_does_not_replace_an_object_that_appears_while_it_streams(ceph, bucket, store):
    image_id = uuid.uuid4()

    def another_writer_first() -> None:
        ceph.s3_client().put_object(Bucket=bucket, Key=str(image_id), Body=b"theirs")

    with pytest.raises(StoreDuplicateError):
        store.add(store.plan_upload(image_id), random_chunks(LARGE), another_writer_first)

    assert ceph.s3_client().get_object(Bucket=bucket, Key=str(image_id))["Body"].read() == b"theirs"
    assert ceph.s3_objects(bucket) == [str(image_id)]
    assert incomplete_uploads(ceph, bucket) == []


def test_small_data_does_not_replace_an_object_that_appears_while_it_streams(ceph, bucket, store):
    image_id = uuid.uuid4()

    def another_writer_first() -> None:
        ceph.s3_client().put_object(Bucket=bucket, Key=str(image_id), Body=b"theirs")

    with pytest.raises(StoreDuplicateError):
        store.add(store.plan_upload(image_id), chunks(b"ours"), another_writer_first)

    assert ceph.s3_client().get_object(Bucket=bucket, Key=str(image_id))["Body"].read() == b"theirs"


def test_a_conditional_put_that_meets_its_own_upload_is_no_duplicate(ceph, bucket, store):
    """What a PUT retried by botocore after its first try landed (the answer lost) finds at the final name."""
    target = store.plan_upload(uuid.uuid4())
    tag = {"locquota-upload": key_of(target.scratch_url)}

    def first_try_landed() -> None:
        ceph.s3_client().put_object(Bucket=bucket, Key=key_of(target.url), Body=b"ours", Metadata=tag)

    url = store.add(target, chunks(b"ours"), first_try_landed)

    assert url == target.url
    assert b"".join(store.get(url, CHUNK)) == b"ours"


CRASHING_UPLOAD = """
import json, sys, uuid
from locations.stores.base import UploadTarget
from locations.stores.s3 import S3Store

options, url, scratch_url, mib = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], 1 << 20

def chunks():
    for _ in range(11):
        yield b"x" * mib
    print("two parts are up", flush=True)  # the 12th MiB is asked for: parts 1 and 2 were sent
    sys.stdin.read()  # until killed

S3Store("s3", options).add(UploadTarget(url, scratch_url), chunks())
"""


def test_an_upload_killed_after_two_parts_is_found_by_its_scratch_name_and_deleted(ceph, bucket, store):
    target = store.plan_upload(uuid.uuid4())
    arguments = [json.dumps(store_options(ceph, bucket)), target.url, target.scratch_url]
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_UPLOAD, *arguments],
        cwd=REPOSITORY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as process:
        try:
            said = process.stdout.readline()  # returns empty if the process died first
        finally:
            process.kill()  # SIGKILL: no handler, no finally runs in it
    assert said == b"two parts are up\n"

    listed = list(store.inventory())
    with pytest.raises(StoreNotFoundError):
        store.get_size(target.url)
    size = store.get_size(target.scratch_url)
    left = incomplete_uploads(ceph, bucket)
    store.delete(target.scratch_url)

    assert [(item.url, item.size_bytes, item.is_scratch) for item in listed] == [(target.scratch_url, 2 * PART, True)]
    assert size == 2 * PART
    assert [key for key, _ in left] == [key_of(target.scratch_url)]
    assert incomplete_uploads(ceph, bucket) == []
    assert ceph.s3_objects(bucket) == []
    assert list(store.inventory()) == []


def test_a_scratch_object_left_complete_is_listed_sized_and_deleted(ceph, bucket, store):
    target = store.plan_upload(uuid.uuid4())
    ceph.s3_client().put_object(Bucket=bucket, Key=key_of(target.scratch_url), Body=b"left by a crash")

    listed = [(item.url, item.size_bytes, item.is_scratch) for item in store.inventory()]
    size = store.get_size(target.scratch_url)
    store.delete(target.scratch_url)

    assert listed == [(target.scratch_url, 15, True)]
    assert size == 15
    assert ceph.s3_objects(bucket) == []


def test_objects_this_store_never_writes_are_not_listed(ceph, bucket, store):
    ceph.s3_client().put_object(Bucket=bucket, Key="notes/readme.txt", Body=b"not an image")
    _, url = add(store, b"an image")

    assert [item.url for item in store.inventory()] == [url]


# Memory, threads, processes ----------------------------------------------------------------------------------


def test_an_upload_holds_about_one_part_in_memory_whatever_its_size(bucket, store):
    add(store, b"warm")  # the client loads botocore's service model (about 15 MB) once per process
    tracemalloc.start()
    try:
        store.add(store.plan_upload(uuid.uuid4()), random_chunks(8 * PART))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 2 * PART  # one part buffer, one incoming chunk, the client's own (7.1 MiB measured)


def test_one_store_serves_several_threads_at_once(store):
    errors: list[BaseException] = []

    def round_trip() -> None:
        try:
            data = os.urandom(SMALL)
            _, url = add(store, data)
            assert b"".join(store.get(url, CHUNK)) == data
            store.delete(url)
        except BaseException as exc:  # noqa: BLE001  (reported by the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=round_trip) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []


def test_a_forked_worker_reads_through_a_client_of_its_own(store):
    _, url = add(store, b"before the fork")  # the parent's client exists from here on
    parent_client = store._client()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        is_own = store._client() is not parent_client
        os._exit(0 if is_own and b"".join(store.get(url, CHUNK)) == b"before the fork" else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get_size(url) == len(b"before the fork")


# The bucket --------------------------------------------------------------------------------------------------


def test_the_bucket_is_made_on_the_first_put_when_configured(ceph):
    name = f"locquota-test-{uuid.uuid4().hex[:12]}"
    store = S3Store("s3", store_options(ceph, name, s3_store_create_bucket_on_put="true"))
    try:
        _, url = add(store, b"first image")
        assert store.get_size(url) == len(b"first image")
    finally:
        remove_bucket(ceph, name)


def test_a_missing_bucket_is_a_store_error_unless_it_may_be_made(ceph):
    store = S3Store("s3", store_options(ceph, f"locquota-test-{uuid.uuid4().hex[:12]}"))

    with pytest.raises(StoreError, match=r"^s3 store s3: "):
        add(store, b"nowhere to go")


def test_a_missing_bucket_never_says_the_data_is_gone(ceph, store):
    url = store.plan_upload(uuid.uuid4()).url
    gone = S3Store("s3", store_options(ceph, f"locquota-test-{uuid.uuid4().hex[:12]}"))
    gone_url = gone.plan_upload(uuid.uuid4()).url

    with pytest.raises(StoreNotFoundError):
        store.get_size(url)  # the bucket answers: nothing there
    with pytest.raises(StoreNotFoundError):
        store.get(url, CHUNK)
    for call in (lambda: gone.get_size(gone_url), lambda: gone.get(gone_url, CHUNK), lambda: gone.delete(gone_url)):
        with pytest.raises(StoreError) as failed:
            call()
        assert not isinstance(failed.value, StoreNotFoundError)  # the audit must not mark every location lost


def test_a_bucket_over_its_quota_is_full(ceph, bucket, store):
    ceph._run("radosgw-admin", "quota", "set", "--quota-scope=bucket", f"--bucket={bucket}", "--max-size=1048576")
    ceph._run("radosgw-admin", "quota", "enable", "--quota-scope=bucket", f"--bucket={bucket}")

    with pytest.raises(StoreFullError):
        add(store, os.urandom(2 * MIB))

    assert ceph.s3_objects(bucket) == []


# radosgw down ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def radosgw_stopped(ceph: CephCluster) -> Iterator[None]:
    ceph.stop_rgw()
    try:
        yield
    finally:
        ceph.start_rgw()


def down_calls(store: S3Store, url: str) -> dict[str, Callable[[], Any]]:
    return {
        "add": lambda: add(store, b"not stored"),
        "get": lambda: store.get(url, CHUNK),
        "get_size": lambda: store.get_size(url),
        "delete": lambda: store.delete(url),
        "inventory": lambda: list(store.inventory()),
    }


@pytest.mark.parametrize("operation", ["add", "get", "get_size", "delete", "inventory"])
def test_radosgw_down_is_a_store_error_naming_the_store_not_the_url(ceph, store, operation):
    _, url = add(store, b"stored before")
    with radosgw_stopped(ceph), pytest.raises(StoreError) as failed:
        down_calls(store, url)[operation]()

    message = str(failed.value)
    assert message.startswith("s3 store s3: ")
    assert str(ceph.rgw_port) not in message
    assert key_of(url) not in message
    assert failed.value.__cause__ is None
    assert store.get_size(url) == len(b"stored before")  # the same store works again once radosgw is back


def test_a_server_that_never_answers_fails_after_the_read_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nothing ever reads or answers them
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        options = {"s3_store_access_key": "key", "s3_store_secret_key": "secret", "s3_store_bucket": "images"}
        hung = S3Store("s3", {"s3_store_host": host, "s3_store_read_timeout": "1", **options})

        with pytest.raises(StoreError, match="ReadTimeoutError"):
            hung.get_size(hung.plan_upload(uuid.uuid4()).url)


# glance_store 5.7.0 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glance_bucket(ceph: CephCluster) -> Iterator[str]:
    name = make_bucket(ceph)
    yield name
    remove_bucket(ceph, name)


@pytest.fixture(scope="module")
def glance_conf(ceph: CephCluster, glance_bucket: str) -> Iterator[cfg.ConfigOpts]:
    """glance_store's s3 store `s3` on the same RGW, in a bucket of its own, as test_ceph_server.py sets it."""
    options = {
        "s3": {
            "s3_store_host": ceph.rgw_url,
            "s3_store_access_key": ceph.s3_access_key,
            "s3_store_secret_key": ceph.s3_secret_key,
            "s3_store_bucket": glance_bucket,
            "s3_store_bucket_url_format": "path",
            "s3_store_large_object_size": 5,
            "s3_store_large_object_chunk_size": 5,
        }
    }
    with glance_stores({"s3": "s3"}, "s3", options) as conf:
        yield conf


@pytest.fixture
def ours_on_glance_bucket(ceph: CephCluster, glance_bucket: str) -> S3Store:
    return S3Store("s3", store_options(ceph, glance_bucket))


def glance_add(conf: cfg.ConfigOpts, data: bytes) -> tuple[str, str]:
    image_id = str(uuid.uuid4())
    url, *_ = multi_backend.add_with_multihash(conf, image_id, io.BytesIO(data), len(data), "s3", "sha512")
    return image_id, url


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["one-put", "multipart"])
def test_data_glance_wrote_is_read_sized_and_deleted_under_the_same_key(glance_conf, ours_on_glance_bucket, size):
    store = ours_on_glance_bucket
    data = os.urandom(size)
    image_id, url = glance_add(glance_conf, data)

    store.validate_url(url)
    key = store.identify(url).key
    read = b"".join(store.get(url, CHUNK))
    stored_size = store.get_size(url)
    store.delete(url)

    assert key == store.identify(store.plan_upload(uuid.UUID(image_id)).url).key
    assert key == url  # Glance's own spelling is the canonical one
    assert read == data
    assert stored_size == size
    with pytest.raises(store_exceptions.NotFound):
        multi_backend.get_size_from_uri_and_backend(url, "s3")


def test_data_this_store_wrote_is_read_by_glance_store(glance_conf, ours_on_glance_bucket):
    data = os.urandom(LARGE)
    _, url = add(ours_on_glance_bucket, data)

    read, size = multi_backend.get(url, "s3")

    assert (b"".join(read), size) == (data, LARGE)


def test_a_glance_url_with_this_stores_credentials_names_the_same_data(ceph, glance_conf, ours_on_glance_bucket):
    _, url = glance_add(glance_conf, b"with credentials")
    with_credentials = url.replace("s3://", f"s3+http://{ceph.s3_access_key}:{ceph.s3_secret_key}@")

    assert ours_on_glance_bucket.identify(with_credentials).key == ours_on_glance_bucket.identify(url).key
    assert ours_on_glance_bucket.get_size(with_credentials) == len(b"with credentials")


def test_a_glance_url_with_another_secret_is_refused_without_echoing_it(ceph, glance_conf, ours_on_glance_bucket):
    _, url = glance_add(glance_conf, b"guarded")
    forged = url.replace("s3://", f"s3://{ceph.s3_access_key}:not-the-secret-{ceph.s3_secret_key[:6]}@")

    with pytest.raises(LocationOutsideStore) as refused:
        ours_on_glance_bucket.validate_url(forged)

    assert "not-the-secret" not in str(refused.value)
    assert ceph.s3_access_key not in str(refused.value)


def test_a_glance_url_on_another_bucket_is_refused(ceph, glance_conf, glance_bucket, ours_on_glance_bucket):
    _, url = glance_add(glance_conf, b"elsewhere")
    elsewhere = url.replace(f"/{glance_bucket}/", f"/{ceph.bucket}/")

    with pytest.raises(LocationOutsideStore):
        ours_on_glance_bucket.validate_url(elsewhere)
    with pytest.raises(LocationOutsideStore):
        ours_on_glance_bucket.identify(elsewhere)
