"""The real Swift of tests/swift.py, behind the suite's real Keystone: tokens, refusals, the proxy down and back.

And glance_store 5.7.0's swift store against it, single tenant, logging in through Keystone v3 as glance-swift on
project service, through its multi-store API as Glance drives it (`enabled_backends = swift1:swift`):
add_with_multihash(), get(), get_size_from_uri_and_backend(), delete(); plain objects and segmented ones (Dynamic
Large Objects: numbered segments and a manifest), of known and of unknown size.
"""

import contextlib
import hashlib
import io
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import swiftclient
from glance_store import exceptions as store_exceptions
from glance_store import location, multi_backend
from oslo_config import cfg

from tests.glance_stores import glance_stores
from tests.keystone import KeystoneServer
from tests.swift import (
    CONTAINER,
    GLANCE_USER,
    SwiftCluster,
)

# python-swiftclient's Keystone v3 login (glance_store's too, for get_size and delete) goes through
# python-keystoneclient's deprecated session-less client, with its deprecated tenant_id argument.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keystoneclient.*"),
    pytest.mark.filterwarnings("ignore:Using the 'tenant_id' argument:DeprecationWarning"),
]

HASHING_ALGO = "sha512"  # Glance's default os_hash_algo
BACKEND = "swift1"
# glance_store's "MB" is 1000 KiB (units.k * units.Ki). With swift_store_large_object_size and _chunk_size at 1,
# images of 1 024 000 bytes and more go up in 1 024 000-byte segments under a manifest.
STORE_MB = 1000 * 1024
SMALL = 300_000  # one PUT
SEGMENTED = 2 * STORE_MB  # two segments and the manifest
UNKNOWN_SIZE = 2 * STORE_MB + 4321  # declared as 0 (a size Glance does not know): three segments, sent chunked
OFF_GRID = 2 * STORE_MB + 4321  # declared: glance_store 5.7.0 sends its last segment with a full segment's length


@pytest.fixture
def proxy_down(swift: SwiftCluster) -> Iterator[None]:
    """The proxy stopped for the test (its port closed), started again after it."""
    swift.stop_proxy()
    try:
        yield
    finally:
        swift.start_proxy()


@pytest.fixture
def connection(swift: SwiftCluster) -> Iterator[swiftclient.Connection]:
    """python-swiftclient as the glance user (no retries): Keystone v3 login, storage URL from the catalog."""
    with contextlib.closing(swift.connection()) as client:
        yield client


# Swift behind Keystone ----------------------------------------------------------------------------------------------


def test_glance_users_token_puts_gets_heads_and_deletes_an_object(swift, connection):
    name = str(uuid.uuid4())
    data = os.urandom(SMALL)
    connection.put_container("smoke")
    etag = connection.put_object("smoke", name, data)
    _headers, read = connection.get_object("smoke", name)
    head = connection.head_object("smoke", name)
    listed = swift.objects("smoke")
    connection.delete_object("smoke", name)
    assert read == data
    assert head["content-length"] == str(len(data))
    assert etag == head["etag"] == hashlib.md5(data).hexdigest()  # noqa: S324  (Swift's ETag)
    assert name in listed
    assert name not in swift.objects("smoke")


def test_swiftclient_finds_the_glance_users_account_in_keystones_catalog(swift, connection):
    connection.head_account()
    assert connection.url == swift.account_url
    assert connection.url == f"{swift.proxy_url}/v1/AUTH_{swift.keystone.project_ids['service']}"


def test_request_without_a_token_is_401(swift):
    response = requests.get(swift.account_url, timeout=10)
    assert response.status_code == 401


def test_request_with_a_bogus_token_is_401(swift):
    response = requests.get(swift.account_url, headers={"X-Auth-Token": "not-a-token"}, timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("user", "project"),
    [("nova", "service"), ("p1-member", "p1")],
    ids=["service-role-only", "member-of-another-project"],
)
def test_token_without_an_operator_role_on_the_account_is_403(swift, keystone: KeystoneServer, user, project):
    token = keystone.token(user, project)
    response = requests.get(swift.account_url, headers={"X-Auth-Token": token}, timeout=10)
    assert response.status_code == 403


def test_stopped_proxy_refuses_connections(swift, proxy_down):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", swift.proxy_port), timeout=5).close()
    with contextlib.closing(swift.connection()) as client, pytest.raises(requests.ConnectionError):
        client.head_account()  # Keystone still logs the user in; the storage URL it gives is closed


def test_restarted_proxy_serves_what_was_stored_before(swift, connection):
    name = str(uuid.uuid4())
    connection.put_container("smoke")
    connection.put_object("smoke", name, b"kept on the object server")
    swift.stop_proxy()
    swift.start_proxy()
    with contextlib.closing(swift.connection()) as client:
        _headers, read = client.get_object("smoke", name)
        client.delete_object("smoke", name)
    assert read == b"kept on the object server"


# glance_store ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glance_conf(swift: SwiftCluster) -> Iterator[cfg.ConfigOpts]:
    """glance_store's store `swift1` on this Swift, its credentials in its own section (tests.glance_stores)."""
    options = {
        BACKEND: {
            **swift.glance_store_options(),
            "swift_store_large_object_size": 1,  # STORE_MB: SEGMENTED and UNKNOWN_SIZE go up in segments
            "swift_store_large_object_chunk_size": 1,
        },
    }
    with glance_stores({BACKEND: "swift"}, BACKEND, options) as conf:
        yield conf


@dataclass(frozen=True, slots=True)
class Stored:
    """What glance_store's add_with_multihash() was given and what it answered."""

    image_id: str
    data: bytes
    url: str
    size: int
    checksum: str
    multihash: str
    metadata: dict[str, str]


def add(conf: cfg.ConfigOpts, data: bytes, declared_size: int | None = None) -> Stored:
    """Add data as a new image, as Glance does (declared_size 0: a size Glance does not know in advance)."""
    image_id = str(uuid.uuid4())
    size = len(data) if declared_size is None else declared_size
    url, written, checksum, multihash, metadata = multi_backend.add_with_multihash(
        conf, image_id, io.BytesIO(data), size, BACKEND, HASHING_ALGO
    )
    return Stored(image_id, data, url, written, checksum, multihash, metadata)


def objects_of(swift: SwiftCluster, image_id: str) -> list[str]:
    """The objects of an image in the glance container: the object itself and any numbered segments."""
    return [name for name in swift.objects(CONTAINER) if name.startswith(image_id)]


@pytest.fixture(
    params=[(SMALL, None), (SEGMENTED, None), (UNKNOWN_SIZE, 0)],
    ids=["small", "segmented", "unknown-size"],
)
def stored(request: pytest.FixtureRequest, glance_conf: cfg.ConfigOpts) -> Iterator[Stored]:
    """Random data just added to the store; deleted after the test unless the test did."""
    size, declared = request.param
    added = add(glance_conf, os.urandom(size), declared)
    yield added
    with contextlib.suppress(store_exceptions.NotFound):
        multi_backend.delete(added.url, BACKEND)


def test_glance_store_add_answers_a_url_with_the_users_credentials_and_keystones_address(swift, stored):
    # Without swift_store_config_file the URL carries project:user and key (":" quoted) and names Keystone, not
    # the proxy: every access logs in again and takes the proxy's address from the catalog.
    user = f"service%3A{GLANCE_USER}:{swift.password()}"
    assert stored.url == f"swift+http://{user}@127.0.0.1:{swift.keystone.port}/v3/{CONTAINER}/{stored.image_id}"
    assert stored.metadata == {"store": BACKEND}


def test_glance_store_add_counts_and_hashes_every_byte(stored):
    assert stored.size == len(stored.data)
    assert stored.checksum == hashlib.md5(stored.data).hexdigest()  # noqa: S324  (Glance's legacy checksum)
    assert stored.multihash == hashlib.sha512(stored.data).hexdigest()


def test_glance_store_add_writes_one_object_or_its_segments(swift, stored):
    segments = -(-len(stored.data) // STORE_MB) if len(stored.data) >= STORE_MB else 0
    expected = [stored.image_id] + [f"{stored.image_id}-{number:05d}" for number in range(1, segments + 1)]
    assert objects_of(swift, stored.image_id) == expected


def test_glance_store_get_returns_every_byte(stored):
    chunks, length = multi_backend.get(stored.url, BACKEND)
    assert length == len(stored.data)
    assert b"".join(chunks) == stored.data


def test_glance_store_get_size_is_the_size_in_swift(stored):
    assert multi_backend.get_size_from_uri_and_backend(stored.url, BACKEND) == len(stored.data)


def test_glance_store_delete_removes_the_object_and_its_segments(swift, stored):
    multi_backend.delete(stored.url, BACKEND)
    assert objects_of(swift, stored.image_id) == []
    with pytest.raises(store_exceptions.NotFound):
        multi_backend.get(stored.url, BACKEND)


def test_glance_store_5_7_fails_a_segmented_upload_of_a_known_size_off_the_segment_grid(swift, glance_conf):
    # glance_store 5.7.0 declares every segment's Content-Length as a full segment: the last, shorter one stalls
    # until the proxy's client_timeout (10 s here, 60 s by default) and the add fails, its segments removed.
    # Sizes that are a multiple of the segment size, and sizes sent as unknown (0), go up whole.
    before = swift.objects(CONTAINER)
    with pytest.raises(store_exceptions.BackendException, match="put_object"):
        add(glance_conf, os.urandom(OFF_GRID))
    assert swift.objects(CONTAINER) == before


# glance_store with a swift_store_config_file reference -------------------------------------------------------------


@pytest.fixture
def reference_conf(swift: SwiftCluster, tmp_path: Path) -> cfg.ConfigOpts:
    """A store `swift-ref` whose credentials are in a swift_store_config_file reference, in a conf of its own.

    glance_store finds that file with ConfigOpts.find_file(), which refuses (NotInitializedError) on a conf that
    was never parsed, and create_multi_stores() then leaves the store out without a word. The process-wide
    cfg.CONF is not parsed here (see glance_conf), so this conf is one of its own, parsed with no file and no
    arguments; multi_backend's module functions would read cfg.CONF, so the test calls the store itself.
    """
    reference_file = tmp_path / "glance-swift-store.conf"
    lines = ["[ref1]", *(f"{name} = {value}" for name, value in swift.swift_store_reference().items())]
    reference_file.write_text("\n".join(lines) + "\n")
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.DictOpt("enabled_backends"))
    conf(args=[], default_config_files=[], default_config_dirs=[])
    conf.set_override("enabled_backends", {"swift-ref": "swift"})
    multi_backend.register_store_opts(conf)
    options = {
        "swift_store_config_file": str(reference_file),
        "default_swift_reference": "ref1",
        "swift_store_container": "glance-ref",
        "swift_store_create_container_on_put": True,
    }
    for name, value in options.items():
        conf.set_override(name, value, group="swift-ref")
    assert multi_backend.create_multi_stores(conf) == 4  # the store's schemes: swift, swift+http(s), swift+config
    return conf


def test_glance_store_with_a_config_file_reference_keeps_credentials_out_of_the_url(swift, reference_conf):
    store = location.SCHEME_TO_CLS_BACKEND_MAP["swift+config"]["swift-ref"]["store"]
    image_id = str(uuid.uuid4())
    data = os.urandom(SMALL)
    url, size, _checksum, _multihash, metadata = multi_backend.store_add_to_backend_with_multihash(
        image_id, io.BytesIO(data), len(data), HASHING_ALGO, store
    )
    found = location.get_location_from_uri_and_backend(url, "swift-ref", conf=reference_conf)
    chunks, length = store.get(found)
    read = b"".join(chunks)
    stored_size = store.get_size(found)
    listed = swift.objects("glance-ref")
    store.delete(found)
    assert url == f"swift+config://ref1/glance-ref/{image_id}"
    assert (size, length, stored_size) == (len(data),) * 3
    assert metadata == {"store": "swift-ref"}
    assert read == data
    assert listed == [image_id]
    assert swift.objects("glance-ref") == []
