"""locquota's swift store (locations/stores/swift.py) on the suite's real Swift, behind its real Keystone.

The store contract (tests/store_contract.py) with credentials in the store's section and through a glance_store
swift_store_config_file reference; then what only Swift shows: objects and segments as Swift lists them, Static
Large Objects of several segments, an upload that fails or is killed midway, the proxy down, and the URLs and
data glance_store 5.7.0 wrote to the same account.
"""

import contextlib
import io
import json
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
from pathlib import Path

import pytest
import swiftclient
from glance_store import multi_backend

from locations.stores.base import StoreDuplicateError, StoreError, StoreNotFoundError, UploadTarget
from locations.stores.swift import SwiftStore
from locquota.errors import LocationOutsideStore
from tests.glance_stores import glance_stores
from tests.store_contract import CHUNK, StoreContract, chunks, payload
from tests.swift import SwiftCluster

# glance_store's swift connection logs in through python-keystoneclient's deprecated session-less client.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keystoneclient.*"),
    pytest.mark.filterwarnings("ignore:Using the 'tenant_id' argument:DeprecationWarning"),
]

REPOSITORY = Path(__file__).resolve().parents[2]
MIB = 1 << 20
SEGMENT = MIB  # swift_store_large_object_chunk_size = 1
GLANCE_MB = 1000 * 1024  # glance_store's "MB": its segment size with swift_store_large_object_chunk_size = 1
GLANCE_BACKEND = "swift-gs"


# Fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def container(swift: SwiftCluster) -> Iterator[str]:
    """A container of the test's own, emptied and removed after it."""
    name = f"locquota-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.closing(swift.connection()) as connection:
        for object_name in swift.objects(name):
            with contextlib.suppress(swiftclient.ClientException):
                connection.delete_object(name, object_name)
        with contextlib.suppress(swiftclient.ClientException):
            connection.delete_container(name)


@pytest.fixture
def options(swift: SwiftCluster, container: str) -> dict[str, str]:
    """glance_store's own section for this Swift, 1 MiB segments and short timeouts."""
    return {
        **swift.glance_store_options(container),
        "swift_store_large_object_chunk_size": "1",
        "swift_store_timeout": "5",
    }


@pytest.fixture
def store(options: dict[str, str]) -> SwiftStore:
    return SwiftStore("swift-e2e", options)


@pytest.fixture
def reference_store(swift: SwiftCluster, container: str, tmp_path: Path) -> SwiftStore:
    """The same account through a swift_store_config_file reference: its URLs are swift+config://ref1/..."""
    path = tmp_path / "glance-swift-store.conf"
    path.write_text("[ref1]\n" + "".join(f"{key} = {value}\n" for key, value in swift.swift_store_reference().items()))
    return SwiftStore(
        "swift-ref",
        {
            "swift_store_config_file": str(path),
            "default_swift_reference": "ref1",
            "swift_store_container": container,
            "swift_store_create_container_on_put": "true",
            "swift_store_large_object_chunk_size": "1",
            "swift_store_timeout": "5",
        },
    )


def add(store: SwiftStore, data: bytes, image_id: uuid.UUID | None = None) -> tuple[UploadTarget, str]:
    target = store.plan_upload(image_id or uuid.uuid4())
    return target, store.add(target, chunks(data))


def last_part(url: str) -> str:
    return url.rsplit("/", 1)[1]


# The contract ------------------------------------------------------------------------------------------------------


class TestSwiftStoreContract(StoreContract):
    """Credentials in the store's own section (glance_store's swift_store_user and swift_store_key)."""


class TestSwiftStoreThroughAReferenceContract(StoreContract):
    @pytest.fixture
    def store(self, reference_store: SwiftStore) -> SwiftStore:
        return reference_store


# Objects as Swift shows them ---------------------------------------------------------------------------------------


def test_a_small_image_is_one_object_named_by_its_id(swift, store, container):
    target, url = add(store, b"small image")
    head = swift.connection().head_object(container, last_part(url))
    assert head["content-length"] == str(len(b"small image"))
    assert swift.objects(container) == [last_part(target.url)]
    assert last_part(target.url) == str(uuid.UUID(last_part(target.url)))


def test_deleting_a_small_image_removes_its_object(swift, store, container):
    _, url = add(store, b"small image")
    store.delete(url)
    assert swift.objects(container) == []


def test_three_and_a_half_segments_come_back_identical(store):
    data = payload(7 * SEGMENT // 2)  # the size glance_store 5.7.0 fails to upload (off the segment grid)
    _, url = add(store, data)
    read = list(store.get(url, CHUNK))
    assert b"".join(read) == data
    assert max(map(len, read)) <= CHUNK
    assert store.get_size(url) == len(data)


def test_a_segmented_image_is_a_static_large_object_over_its_segments(swift, store, container):
    target, url = add(store, payload(7 * SEGMENT // 2))
    with contextlib.closing(swift.connection()) as connection:
        head = connection.head_object(container, last_part(url))
    scratch = last_part(target.scratch_url)
    assert head["x-static-large-object"].lower() == "true"
    assert head["content-length"] == str(7 * SEGMENT // 2)
    assert swift.objects(container) == [last_part(url)] + [f"{scratch}/{number:08d}" for number in range(1, 5)]


def test_segments_an_image_owns_are_not_scratch_data(store):
    target, url = add(store, payload(7 * SEGMENT // 2))
    listed = list(store.inventory())
    with pytest.raises(StoreNotFoundError):
        store.get_size(target.scratch_url)
    store.delete(target.scratch_url)  # nothing there as scratch: the image keeps its segments
    assert [(item.url, item.size_bytes, item.is_scratch) for item in listed] == [
        (store.identify(url).key, 7 * SEGMENT // 2, False)
    ]
    assert store.get_size(url) == 7 * SEGMENT // 2


def test_deleting_a_segmented_image_removes_its_segments(swift, store, container):
    _, url = add(store, payload(5 * SEGMENT // 2))
    store.delete(url)
    store.delete(url)
    assert swift.objects(container) == []
    with pytest.raises(StoreNotFoundError):
        store.get_size(url)


def test_an_upload_failing_after_two_segments_leaves_nothing(swift, store, container):
    target = store.plan_upload(uuid.uuid4())
    failure = ConnectionResetError("the client went away")

    def failing() -> Iterator[bytes]:
        yield from chunks(payload(5 * SEGMENT // 2))
        raise failure

    with pytest.raises(ConnectionResetError) as raised:
        store.add(target, failing())
    assert raised.value is failure
    assert swift.objects(container) == []
    for url in (target.url, target.scratch_url):
        with pytest.raises(StoreNotFoundError):
            store.get_size(url)


def test_a_store_error_from_the_chunks_goes_through_unchanged(swift, store, container):
    # The chunks may come from another store (a copy): its errors, even a 412 of its own, are not this store's.
    target = store.plan_upload(uuid.uuid4())
    failure = StoreError("the source store failed")

    def failing() -> Iterator[bytes]:
        yield from chunks(payload(5 * SEGMENT // 2))
        raise failure from swiftclient.ClientException("the source's own answer", http_status=412)

    with pytest.raises(StoreError) as raised:
        store.add(target, failing())
    assert raised.value is failure
    assert swift.objects(container) == []


def test_an_upload_refused_by_ready_after_segments_leaves_nothing(swift, store, container):
    target = store.plan_upload(uuid.uuid4())

    def refuse() -> None:
        raise RuntimeError("the lease was taken over")

    with pytest.raises(RuntimeError, match="lease"):
        store.add(target, chunks(payload(5 * SEGMENT // 2)), ready=refuse)
    assert swift.objects(container) == []


def test_a_segmented_upload_never_replaces_an_image(swift, store, container):
    image_id = uuid.uuid4()
    _, url = add(store, b"first", image_id)
    with pytest.raises(StoreDuplicateError):
        add(store, payload(5 * SEGMENT // 2), image_id)
    assert b"".join(store.get(url, CHUNK)) == b"first"
    assert swift.objects(container) == [str(image_id)]


KILLED_UPLOAD = """
import json, sys
from locations.stores.base import UploadTarget
from locations.stores.swift import SwiftStore

options, url, scratch_url = json.loads(sys.argv[1])

def chunks():
    yield b"k" * (2 * 1048576 + 1)  # two whole segments are sent before the next chunk is asked for
    print("two segments written", flush=True)
    sys.stdin.read()  # until killed
    yield b""

SwiftStore("killed", options).add(UploadTarget(url, scratch_url), chunks())
"""


@pytest.fixture
def killed_upload(options: dict[str, str]) -> UploadTarget:
    """An upload killed with SIGKILL after two segments, in a process of its own: no handler runs."""
    target = SwiftStore("planner", options).plan_upload(uuid.uuid4())
    arguments = json.dumps([options, target.url, target.scratch_url])
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_UPLOAD, arguments], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPOSITORY
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"two segments written\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    return target


def test_a_killed_upload_leaves_its_segments_under_its_scratch_name_only(store, killed_upload):
    assert store.get_size(killed_upload.scratch_url) == 2 * SEGMENT
    with pytest.raises(StoreNotFoundError):
        store.get_size(killed_upload.url)


def test_the_inventory_shows_a_killed_upload_as_one_scratch_item(store, killed_upload):
    listed = [(item.url, item.size_bytes, item.is_scratch) for item in store.inventory()]
    assert listed == [(store.identify(killed_upload.scratch_url).key, 2 * SEGMENT, True)]


def test_deleting_a_killed_uploads_scratch_name_removes_its_segments(swift, store, container, killed_upload):
    assert len(swift.objects(container)) == 2
    store.delete(killed_upload.scratch_url)
    assert swift.objects(container) == []
    assert list(store.inventory()) == []
    with pytest.raises(StoreNotFoundError):
        store.get_size(killed_upload.scratch_url)


# Swift down --------------------------------------------------------------------------------------------------------


@pytest.fixture
def stored(store: SwiftStore) -> str:
    """An image already stored: the store's connections and token are made and cached before the outage."""
    return add(store, b"stored before the outage")[1]


@pytest.fixture
def proxy_down(swift: SwiftCluster, stored: str) -> Iterator[None]:
    swift.stop_proxy()
    try:
        yield
    finally:
        swift.start_proxy()


OUTAGE_CALLS = {
    "add": lambda store, url, options: store.add(store.plan_upload(uuid.uuid4()), chunks(b"during the outage")),
    "get": lambda store, url, options: b"".join(store.get(url, CHUNK)),
    "get_size": lambda store, url, options: store.get_size(url),
    "delete": lambda store, url, options: store.delete(url),
    "inventory": lambda store, url, options: list(store.inventory()),
    "get_size on a new store": lambda store, url, options: SwiftStore("fresh", options).get_size(url),
}


@pytest.mark.parametrize("call", OUTAGE_CALLS.values(), ids=OUTAGE_CALLS.keys())
def test_the_proxy_down_is_a_store_error_not_missing_data(options, store, stored, proxy_down, call, request):
    started = time.monotonic()
    with pytest.raises(StoreError) as failed:
        call(store, stored, options)
    request.node.user_properties.append(("seconds", round(time.monotonic() - started, 2)))  # measured, not asserted
    assert not isinstance(failed.value, StoreNotFoundError)
    assert "secret" not in str(failed.value)
    assert "127.0.0.1" not in str(failed.value)


def test_a_proxy_that_does_not_answer_is_a_store_error_after_the_timeout(swift, store, stored, request):
    proxy = swift.processes["proxy"]
    proxy.send_signal(signal.SIGSTOP)  # its port still accepts connections; nothing answers on them
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as failed:
            store.get_size(stored)
        request.node.user_properties.append(("seconds", round(time.monotonic() - started, 2)))  # swift_store_timeout 5
    finally:
        proxy.send_signal(signal.SIGCONT)
    assert not isinstance(failed.value, StoreNotFoundError)
    assert store.get_size(stored) == len(b"stored before the outage")


def test_names_need_no_network(store, stored, proxy_down):
    store.validate_url(stored)
    assert store.identify(stored).key.startswith("swift://")


def test_the_store_serves_again_once_the_proxy_is_back(swift, store, stored):
    swift.stop_proxy()
    try:
        with pytest.raises(StoreError):
            store.get_size(stored)
    finally:
        swift.start_proxy()
    assert b"".join(store.get(stored, CHUNK)) == b"stored before the outage"


# Threads and processes ---------------------------------------------------------------------------------------------


def test_threads_share_one_store(store):
    def round_trip(number: int) -> bool:
        data = payload(1000 + number)
        _, url = add(store, data)
        read = b"".join(store.get(url, CHUNK))
        size = store.get_size(url)
        store.delete(url)
        return read == data and size == len(data) and threading.current_thread() is not threading.main_thread()

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(round_trip, range(12)))


def test_a_forked_process_makes_its_own_connections(store):
    _, url = add(store, b"before the fork")
    store.get_size(url)  # the parent's session and connection exist now
    pid = os.fork()
    if pid == 0:  # the child: the parent's sockets must not be shared
        os._exit(0 if store.get_size(url) == len(b"before the fork") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"".join(store.get(url, CHUNK)) == b"before the fork"


# What glance_store 5.7.0 wrote --------------------------------------------------------------------------------------


@pytest.fixture(params=[(300_000, None), (2 * GLANCE_MB + 4321, 0)], ids=["one-object", "dlo-segments-unknown-size"])
def glance_written(request: pytest.FixtureRequest, swift: SwiftCluster, container: str) -> tuple[str, bytes, str]:
    """An image glance_store added to this container (image id, data, its URL): one object, or a DLO of 3 segments."""
    size, declared = request.param
    options = {
        **swift.glance_store_options(container),
        "swift_store_large_object_size": 1,
        "swift_store_large_object_chunk_size": 1,
    }
    image_id, data = str(uuid.uuid4()), os.urandom(size)
    with glance_stores({GLANCE_BACKEND: "swift"}, GLANCE_BACKEND, {GLANCE_BACKEND: options}) as conf:
        url, *_ = multi_backend.add_with_multihash(
            conf, image_id, io.BytesIO(data), len(data) if declared is None else declared, GLANCE_BACKEND, "sha512"
        )
    return image_id, data, url


def test_glance_store_urls_carry_credentials_ours_accept_them_with_one_key(store, reference_store, glance_written):
    image_id, _, url = glance_written
    ours = store.plan_upload(uuid.UUID(image_id)).url
    by_reference = reference_store.plan_upload(uuid.UUID(image_id)).url
    assert "@" in url
    assert store.identify(url).key == store.identify(ours).key == reference_store.identify(by_reference).key
    assert reference_store.identify(url).key == store.identify(url).key


def test_glance_store_data_is_read_and_sized_by_ours(store, glance_written):
    _, data, url = glance_written
    assert b"".join(store.get(url, CHUNK)) == data
    assert store.get_size(url) == len(data)


def test_glance_store_data_is_listed_at_its_size(store, glance_written):
    _, data, url = glance_written
    assert [(item.url, item.size_bytes) for item in store.inventory()] == [(store.identify(url).key, len(data))]


def test_glance_store_data_is_deleted_by_ours_with_its_segments(swift, store, container, glance_written):
    image_id, _, url = glance_written
    assert swift.objects(container)[0] == image_id
    store.delete(url)
    assert swift.objects(container) == []
    with pytest.raises(StoreNotFoundError):
        store.get_size(url)


def test_glance_store_data_is_read_through_a_swift_config_reference(reference_store, glance_written):
    image_id, data, _ = glance_written
    assert b"".join(reference_store.get(reference_store.plan_upload(uuid.UUID(image_id)).url, CHUNK)) == data


def test_a_glance_url_with_another_users_key_is_refused_without_echoing_it(store, glance_written):
    _, _, url = glance_written
    forged = re.sub(r":[^:@/]+@", ":someone-elses-key@", url)
    assert forged != url
    with pytest.raises(LocationOutsideStore) as refused:
        store.validate_url(forged)
    assert "someone-elses-key" not in str(refused.value)
    assert "glance-swift" not in str(refused.value)


def test_a_glance_url_of_another_container_is_refused(store, container, glance_written):
    _, _, url = glance_written
    with pytest.raises(LocationOutsideStore):
        store.validate_url(url.replace(f"/{container}/", "/glance/"))
