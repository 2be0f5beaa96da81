"""The rbd store (locations/stores/rbd.py) on the suite's real Ceph: the store contract, and what only RBD has.

What the store did is checked with python rbd itself (as client.admin, or client.glance as Glance runs): images
and their protected snapshot, clones that keep an image in use, glance_store 5.7.0's rbd store writing and reading
the same pool, a writer killed with SIGKILL mid-upload, and a cluster that cannot be reached (a copy of ceph.conf
naming a closed monitor port: the suite's cluster itself keeps running for the other tests).
"""

import contextlib
import io
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import port_for
import pytest
from glance_store import exceptions as glance_exceptions
from glance_store import multi_backend
from oslo_config import cfg

from locations.stores import rbd as rbd_module
from locations.stores.base import StoreDuplicateError, StoreError, StoreNotFoundError
from locations.stores.rbd import RbdStore
from locquota.errors import LocationOutsideStore
from tests.ceph import CephCluster
from tests.glance_stores import glance_stores
from tests.store_contract import CHUNK, StoreContract, chunks

MIB = 1 << 20
LARGE = 5 * MIB + 12345  # six RBD objects of 1 MiB (rbd_store_chunk_size = 1)
# Random data (os.urandom): a truncated or shifted copy would not compare equal. The contract's payload() sums
# its blocks again for each block it adds, too slow for megabytes.
REPOSITORY = Path(__file__).resolve().parents[2]
CHILD_DEADLINE = 60  # seconds: a bound on waiting for the child writer; reaching it fails the test
UNREACHABLE_TIMEOUT = "2"  # rados_connect_timeout of the store whose monitor port is closed


def store_options(ceph: CephCluster, **overrides: str) -> dict[str, str]:
    """The store's section as an .ini would give it, with glance_store's option names; 1 MiB objects."""
    return {
        "rbd_store_pool": ceph.pool,
        "rbd_store_user": ceph.user,
        "rbd_store_ceph_conf": str(ceph.conf_path),
        "rbd_store_chunk_size": "1",
        "rados_connect_timeout": "5",
        **overrides,
    }


def image_of(url: str) -> str:
    """The RBD image name in a URL spelled rbd://<fsid>/<pool>/<image>[/<snapshot>]."""
    return url.split("/")[4]


@contextlib.contextmanager
def pool_as(ceph: CephCluster, client: str = "client.admin") -> Iterator[Any]:
    """An I/O context on the store's pool, through python rados as the given Ceph client."""
    with ceph.client(client) as cluster, ceph.ioctx(cluster) as ioctx:
        yield ioctx


def make_image(ceph: CephCluster, name: str, data: bytes) -> None:
    """An RBD image written by python rbd as client.glance, with no snapshot."""
    with pool_as(ceph, f"client.{ceph.user}") as ioctx:
        ceph.rbd.RBD().create(ioctx, name, len(data), old_format=False)
        with ceph.rbd.Image(ioctx, name) as image:
            image.write(data, 0)


def remove_image(ceph: CephCluster, name: str) -> None:
    with pool_as(ceph) as ioctx, contextlib.suppress(ceph.rbd.ImageNotFound):
        ceph.rbd.RBD().remove(ioctx, name)


@pytest.fixture
def store(ceph: CephCluster) -> Iterator[RbdStore]:
    """A fresh store on the suite's pool; every image it leaves there is removed after the test."""
    before = set(ceph.rbd_images())
    store = RbdStore("ceph", store_options(ceph))
    yield store
    for name in set(ceph.rbd_images()) - before:
        with contextlib.suppress(StoreError, LocationOutsideStore):
            store.delete(f"rbd://{ceph.fsid}/{ceph.pool}/{name}")


class TestRbdStoreContract(StoreContract):
    """Every test of tests/store_contract.py, on RBD."""


# What is in the cluster ------------------------------------------------------------------------------------------


def test_an_upload_is_an_image_of_the_final_name_with_a_protected_snapshot(ceph, store):
    image_id, data = uuid.uuid4(), os.urandom(LARGE)
    target = store.plan_upload(image_id)

    url = store.add(target, chunks(data, 3 * MIB + 1))  # pieces larger than an RBD object

    with pool_as(ceph) as ioctx:
        with ceph.rbd.Image(ioctx, str(image_id), read_only=True) as image:
            snapshots = [snapshot["name"] for snapshot in image.list_snaps()]
            is_protected = image.is_protected_snap("snap")
            size, order, features = image.size(), image.stat()["order"], image.features()
        with ceph.rbd.Image(ioctx, str(image_id), snapshot="snap", read_only=True) as snapshot:
            in_snapshot = snapshot.read(0, snapshot.size())
    assert url == f"rbd://{ceph.fsid}/{ceph.pool}/{image_id}/snap"  # what Glance's rbd store writes
    assert (snapshots, is_protected) == (["snap"], True)
    assert (size, in_snapshot == data) == (len(data), True)
    assert order == 20  # objects of rbd_store_chunk_size (1 MiB)
    assert features & ceph.rbd.RBD_FEATURE_LAYERING  # Nova and Cinder clone the snapshot
    assert image_of(target.scratch_url) not in ceph.rbd_images()


def test_data_of_many_objects_comes_back_in_bounded_pieces(store):
    data = os.urandom(LARGE)
    url = store.add(store.plan_upload(uuid.uuid4()), chunks(data, 777_777))

    pieces = list(store.get(url, CHUNK))

    assert b"".join(pieces) == data
    assert max(map(len, pieces)) <= CHUNK
    assert store.get_size(url) == len(data)


def test_delete_removes_the_image_and_its_snapshot(ceph, store):
    image_id = uuid.uuid4()
    url = store.add(store.plan_upload(image_id), chunks(os.urandom(LARGE)))

    store.delete(url)

    assert str(image_id) not in ceph.rbd_images()
    with pytest.raises(StoreNotFoundError):
        store.get_size(url)


def test_an_upload_interrupted_after_several_objects_leaves_no_image(ceph, store):
    target = store.plan_upload(uuid.uuid4())
    error = ConnectionResetError("the client went away")

    def interrupted() -> Iterator[bytes]:
        yield from chunks(os.urandom(3 * MIB + 5))
        raise error

    with pytest.raises(ConnectionResetError) as raised:
        store.add(target, interrupted())

    assert raised.value is error  # the caller's exception, unchanged
    assert {image_of(target.url), image_of(target.scratch_url)} & set(ceph.rbd_images()) == set()


def test_an_upload_refused_by_ready_after_several_objects_leaves_no_image(ceph, store):
    target = store.plan_upload(uuid.uuid4())

    def refuse() -> None:
        raise RuntimeError("the lease was taken over")

    with pytest.raises(RuntimeError, match="lease was taken over"):
        store.add(target, chunks(os.urandom(LARGE)), ready=refuse)

    assert {image_of(target.url), image_of(target.scratch_url)} & set(ceph.rbd_images()) == set()


def test_an_image_made_at_the_final_name_during_the_upload_is_never_replaced(ceph, store):
    image_id = uuid.uuid4()
    target = store.plan_upload(image_id)

    def someone_else_takes_the_name() -> None:  # after the early check, before the rename
        make_image(ceph, str(image_id), b"theirs")

    with pytest.raises(StoreDuplicateError):
        store.add(target, chunks(os.urandom(LARGE)), ready=someone_else_takes_the_name)

    with pool_as(ceph) as ioctx, ceph.rbd.Image(ioctx, str(image_id), read_only=True) as image:
        assert image.read(0, image.size()) == b"theirs"
    assert image_of(target.scratch_url) not in ceph.rbd_images()


def test_thin_provisioning_writes_no_object_for_a_block_of_zeros(ceph):
    store = RbdStore("ceph", store_options(ceph, rbd_thin_provisioning="true"))
    data = os.urandom(MIB) + bytes(MIB) + os.urandom(MIB // 2)
    image_id = uuid.uuid4()
    url = store.add(store.plan_upload(image_id), chunks(data))
    try:
        with pool_as(ceph) as ioctx:
            with ceph.rbd.Image(ioctx, str(image_id), read_only=True) as image:
                prefix = image.stat()["block_name_prefix"]
            objects = [item.key for item in ioctx.list_objects() if item.key.startswith(prefix + ".")]
        assert b"".join(store.get(url, CHUNK)) == data
        assert len(objects) == 2  # the first and the last block; the zeros in between are a hole
    finally:
        store.delete(url)


# A writer killed mid-upload --------------------------------------------------------------------------------------

KILLED_WRITER = """
import json, sys, uuid
from locations.stores.rbd import RbdStore

store = RbdStore("ceph", json.loads(sys.argv[1]))
target = store.plan_upload(uuid.uuid4())
print(target.url, target.scratch_url, flush=True)


def chunks():
    yield from (bytes([n]) * (1 << 20) for n in range(1, 4))
    print("written", flush=True)  # three objects are written once the fourth piece is asked for
    sys.stdin.readline()  # held here until killed
    yield b"never sent"


store.add(target, chunks())
"""


@pytest.fixture
def killed_upload(ceph: CephCluster) -> Iterator[tuple[str, str]]:
    """The (url, scratch_url) of an upload whose process was killed with SIGKILL after writing three objects."""
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, json.dumps(store_options(ceph))],
        cwd=REPOSITORY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    names: set[str] = set()
    try:
        assert writer.stdout is not None
        url, scratch_url = writer.stdout.readline().split()
        names = {image_of(url), image_of(scratch_url)}
        assert writer.stdout.readline() == "written\n"
        writer.send_signal(signal.SIGKILL)
        writer.wait(CHILD_DEADLINE)
        yield url, scratch_url
    finally:
        writer.kill()
        writer.wait(CHILD_DEADLINE)
        for name in names & set(ceph.rbd_images()):
            blocklist_watchers(ceph, name)
            remove_image(ceph, name)


def blocklist_watchers(ceph: CephCluster, name: str) -> None:
    """Drop the watches of an image's dead clients now, as the OSD does once their watch times out (30 s)."""
    with ceph.client("client.admin") as cluster, ceph.ioctx(cluster) as ioctx:
        with ceph.rbd.Image(ioctx, name, read_only=True) as image:
            watchers = [watcher["addr"] for watcher in image.watchers_list()]
        for address in watchers:
            command = {"prefix": "osd blocklist", "blocklistop": "add", "addr": address}
            ret, _, status = cluster.mon_command(json.dumps(command), b"")
            assert ret == 0, status


def test_a_killed_upload_leaves_only_scratch_data_that_the_reaper_finds_and_removes(ceph, store, killed_upload):
    url, scratch_url = killed_upload

    with pytest.raises(StoreNotFoundError):
        store.get_size(url)
    assert store.get_size(scratch_url) >= 3 * MIB
    listed = {item.url: item for item in store.inventory()}
    assert listed[store.identify(scratch_url).key].is_scratch
    with pytest.raises(StoreError, match="open in another client") as refused:
        store.delete(scratch_url)  # the dead writer's watch holds it: a prompt error, not a 30 s wait
    assert not isinstance(refused.value, StoreNotFoundError)

    blocklist_watchers(ceph, image_of(scratch_url))
    store.delete(scratch_url)

    assert image_of(scratch_url) not in ceph.rbd_images()
    with pytest.raises(StoreNotFoundError):
        store.get_size(scratch_url)


def test_an_image_without_its_snapshot_is_read_sized_and_deleted(ceph, store):
    # What a crash of Glance's own add between writing and snapshotting leaves.
    image_id, data = str(uuid.uuid4()), os.urandom(LARGE)
    make_image(ceph, image_id, data)
    url = f"rbd://{ceph.fsid}/{ceph.pool}/{image_id}/snap"

    assert store.get_size(url) == len(data)
    assert b"".join(store.get(url, CHUNK)) == data
    store.delete(url)
    assert image_id not in ceph.rbd_images()


# Clones ----------------------------------------------------------------------------------------------------------


def test_a_clone_keeps_the_image_in_use_until_the_clone_is_removed(ceph, store):
    image_id, data = uuid.uuid4(), os.urandom(LARGE)
    url = store.add(store.plan_upload(image_id), chunks(data))
    clone = f"volume-{uuid.uuid4()}"
    with pool_as(ceph, f"client.{ceph.user}") as ioctx:
        ceph.rbd.RBD().clone(ioctx, str(image_id), "snap", ioctx, clone)
    try:
        with pytest.raises(StoreError, match="in use") as refused:
            store.delete(url)
        assert not isinstance(refused.value, StoreNotFoundError)
        assert b"".join(store.get(url, CHUNK)) == data
        with pool_as(ceph) as ioctx, ceph.rbd.Image(ioctx, str(image_id), read_only=True) as image:
            assert image.is_protected_snap("snap")
    finally:
        remove_image(ceph, clone)

    store.delete(url)

    assert str(image_id) not in ceph.rbd_images()


# glance_store 5.7.0 on the same pool -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glance_conf(ceph: CephCluster) -> Iterator[cfg.ConfigOpts]:
    """glance_store's rbd store `ceph` on the suite's pool, as client.glance (tests.glance_stores)."""
    options = {
        "rbd_store_pool": ceph.pool,
        "rbd_store_user": ceph.user,
        "rbd_store_ceph_conf": str(ceph.conf_path),
        "rbd_store_chunk_size": 1,
        "rados_connect_timeout": 10,
    }
    with glance_stores({"ceph": "rbd"}, "ceph", {"ceph": options}) as conf:
        yield conf


def glance_add(conf: cfg.ConfigOpts, image_id: uuid.UUID, data: bytes) -> str:
    url, size, *_ = multi_backend.add_with_multihash(conf, str(image_id), io.BytesIO(data), len(data), "ceph", "sha512")
    assert size == len(data)
    return url


def test_data_glance_store_wrote_is_read_sized_identified_and_deleted(ceph, store, glance_conf):
    image_id, data = uuid.uuid4(), os.urandom(LARGE)
    url = glance_add(glance_conf, image_id, data)

    store.validate_url(url)
    keys = {
        store.identify(spelling).key
        for spelling in (url, store.plan_upload(image_id).url, f"rbd://{image_id}", f"RBD://{ceph.fsid.upper()}/"
                         f"{ceph.pool}/{image_id}", f"rbd://{ceph.fsid}/{ceph.pool}/{image_id}")
    }  # fmt: skip
    assert keys == {f"rbd://{ceph.fsid}/{ceph.pool}/{image_id}"}
    assert store.get_size(url) == len(data)
    assert b"".join(store.get(url, CHUNK)) == data
    store.delete(url)
    assert str(image_id) not in ceph.rbd_images()
    with pytest.raises(glance_exceptions.NotFound):
        multi_backend.get_size_from_uri_and_backend(url, "ceph")


def test_glance_store_reads_sizes_and_deletes_what_this_store_wrote(ceph, store, glance_conf):
    data = os.urandom(LARGE)
    url = store.add(store.plan_upload(uuid.uuid4()), chunks(data))

    read, size = multi_backend.get(url, "ceph")
    assert (b"".join(read), size) == (data, len(data))
    assert multi_backend.get_size_from_uri_and_backend(url, "ceph") == len(data)
    multi_backend.delete(url, "ceph")  # unprotects and removes the snapshot, then the image
    with pytest.raises(StoreNotFoundError):
        store.get_size(url)


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("rbd://{fsid}/volumes/{image}/snap", id="another pool"),
        pytest.param("rbd://11111111-2222-3333-4444-555555555555/{pool}/{image}/snap", id="another cluster"),
        pytest.param("rbd://{fsid}/{pool}/{image}/snap?pool=volumes", id="a query"),
        pytest.param("rbd://glance@{fsid}/{pool}/{image}/snap", id="a user"),
    ],
)
def test_urls_outside_the_pool_or_cluster_are_refused(ceph, store, spelling):
    url = spelling.format(fsid=ceph.fsid, pool=ceph.pool, image=uuid.uuid4())

    with pytest.raises(LocationOutsideStore) as refused:
        store.validate_url(url)

    assert "rbd://" not in str(refused.value)
    assert ceph.fsid not in str(refused.value)


# A cluster that cannot be reached --------------------------------------------------------------------------------


def conf_with_closed_mon_port(ceph: CephCluster, path: Path, keep_fsid: bool = True) -> Path:
    """A copy of the suite's ceph.conf whose monitor address is a port nothing listens on."""
    text = re.sub(r"(?m)^mon host = .*$", f"mon host = [v2:127.0.0.1:{port_for.select_random()}]",
                  ceph.conf_path.read_text())  # fmt: skip
    if not keep_fsid:
        text = re.sub(r"(?m)^fsid = .*\n", "", text)
    path.write_text(text)
    return path


@pytest.fixture
def unreachable(ceph: CephCluster, tmp_path: Path) -> RbdStore:
    conf = conf_with_closed_mon_port(ceph, tmp_path / "ceph.conf")
    return RbdStore(
        "down", store_options(ceph, rbd_store_ceph_conf=str(conf), rados_connect_timeout=UNREACHABLE_TIMEOUT)
    )


CALLS = {
    "add": lambda store, url: store.add(store.plan_upload(uuid.uuid4()), chunks(b"data")),
    "get": lambda store, url: b"".join(store.get(url, CHUNK)),
    "get_size": lambda store, url: store.get_size(url),
    "delete": lambda store, url: store.delete(url),
    "inventory": lambda store, url: list(store.inventory()),
}


@pytest.mark.parametrize("call", CALLS)
def test_an_unreachable_cluster_is_a_store_error_within_the_timeout(ceph, unreachable, call, record_property):
    url = f"rbd://{ceph.fsid}/{ceph.pool}/{uuid.uuid4()}/snap"
    started = time.monotonic()

    with pytest.raises(StoreError) as failed:
        CALLS[call](unreachable, url)

    record_property("seconds", round(time.monotonic() - started, 2))  # measured, not asserted
    assert not isinstance(failed.value, StoreNotFoundError)  # nothing is concluded about the data
    assert "store down" in str(failed.value)
    assert str(ceph.conf_path.parent) not in str(failed.value)


def test_threads_queued_behind_a_failing_connection_fail_with_it(ceph, unreachable):
    url = f"rbd://{ceph.fsid}/{ceph.pool}/{uuid.uuid4()}/snap"
    together = threading.Barrier(8)

    def size_of_missing_cluster_data(_: int) -> str:
        together.wait(CHILD_DEADLINE)
        with pytest.raises(StoreError) as failed:
            unreachable.get_size(url)
        return str(failed.value)

    with ThreadPoolExecutor(max_workers=8) as pool:
        messages = list(pool.map(size_of_missing_cluster_data, range(8)))

    # One attempt waited out the timeout; the threads queued behind it did not each wait it out again.
    assert any("failed a moment ago" in message for message in messages)


def test_names_need_no_cluster_when_ceph_conf_gives_the_fsid(ceph, unreachable):
    image_id = uuid.uuid4()

    target = unreachable.plan_upload(image_id)

    assert target.url == f"rbd://{ceph.fsid}/{ceph.pool}/{image_id}/snap"
    assert unreachable.identify(f"rbd://{image_id}").key == f"rbd://{ceph.fsid}/{ceph.pool}/{image_id}"


def test_without_an_fsid_in_ceph_conf_an_unreachable_cluster_cannot_name_data(ceph, tmp_path):
    conf = conf_with_closed_mon_port(ceph, tmp_path / "ceph.conf", keep_fsid=False)
    store = RbdStore("down", store_options(ceph, rbd_store_ceph_conf=str(conf), rados_connect_timeout="1"))

    with pytest.raises(StoreError):
        store.identify(f"rbd://{uuid.uuid4()}")
    with pytest.raises(StoreError):
        store.plan_upload(uuid.uuid4())


def test_a_ceph_conf_naming_another_fsid_is_a_store_error(ceph, tmp_path):
    other = "11111111-2222-3333-4444-555555555555"
    conf = tmp_path / "ceph.conf"
    conf.write_text(ceph.conf_path.read_text().replace(ceph.fsid, other))
    store = RbdStore("ceph", store_options(ceph, rbd_store_ceph_conf=str(conf)))

    with pytest.raises(StoreError, match="fsid"):
        store.get_size(f"rbd://{other}/{ceph.pool}/{uuid.uuid4()}/snap")


# Threads, forks and the inventory --------------------------------------------------------------------------------


def test_one_store_serves_several_threads_at_once(store):
    def round_trip(size: int) -> bool:
        data = os.urandom(size)
        url = store.add(store.plan_upload(uuid.uuid4()), chunks(data))
        return b"".join(store.get(url, CHUNK)) == data

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(round_trip, [MIB + size for size in range(8)]))

    assert results == [True] * 8


def _use_after_fork(store: RbdStore, url: str, data: bytes, answers: Any) -> None:
    try:
        read = b"".join(store.get(url, CHUNK))
        written = store.add(store.plan_upload(uuid.uuid4()), chunks(data))
        answers.put((read == data, store.get_size(written)))
    except BaseException as exc:  # noqa: BLE001  (whatever it is, the parent reports it)
        answers.put(repr(exc))


def test_a_forked_worker_connects_again_and_serves(store):
    data = os.urandom(MIB + 3)
    url = store.add(store.plan_upload(uuid.uuid4()), chunks(data))  # the parent is connected
    context = multiprocessing.get_context("fork")
    answers = context.Queue()

    child = context.Process(target=_use_after_fork, args=(store, url, data, answers), daemon=True)
    child.start()
    try:
        answer = answers.get(timeout=CHILD_DEADLINE)
        child.join(CHILD_DEADLINE)
    finally:
        child.kill()  # a child that hangs (on its parent's connection) must not outlive the test
        child.join(CHILD_DEADLINE)

    assert answer == (True, len(data))
    assert child.exitcode == 0
    assert store.get_size(url) == len(data)  # the parent's connection still serves


def test_the_inventory_lists_images_in_name_order_a_page_at_a_time(ceph, store, monkeypatch):
    monkeypatch.setattr(rbd_module, "DIRECTORY_PAGE", 2)
    written = {store.add(store.plan_upload(uuid.uuid4()), chunks(os.urandom(size))): size for size in range(1, 6)}

    listed = list(store.inventory())

    urls = [item.url for item in listed]
    assert urls == sorted(urls)
    assert len(urls) == len(set(urls))
    sizes = {item.url: item.size_bytes for item in listed}
    assert {store.identify(url).key: size for url, size in written.items()}.items() <= sizes.items()


def test_the_inventory_flags_scratch_images_skips_foreign_ones_and_dates_them_in_utc(ceph, store):
    scratch = f"{uuid.uuid4()}.{uuid.uuid4().hex}.partial"
    foreign = f"volume-{uuid.uuid4()}"
    make_image(ceph, scratch, b"half an upload")
    make_image(ceph, foreign, b"a cinder volume")
    try:
        listed = {item.url: item for item in store.inventory()}
    finally:
        remove_image(ceph, scratch)
        remove_image(ceph, foreign)

    item = listed[f"rbd://{ceph.fsid}/{ceph.pool}/{scratch}"]
    assert (item.is_scratch, item.size_bytes) == (True, len(b"half an upload"))
    assert item.modified_at.tzinfo is None
    now = datetime.now(UTC).replace(tzinfo=None)
    assert now - timedelta(minutes=5) <= item.modified_at <= now + timedelta(minutes=5)
    assert not [url for url in listed if foreign in url]
