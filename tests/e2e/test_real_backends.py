"""Each real backend end to end (issue 15): glanceclient uploads into it, the server's own client finds the object,
the download is byte-identical, a location is added, and a delayed delete scrubbed by `locquota scrub` removes the
object and gives the tenant's usage back exactly.

One locquota server with four stores (`local:file, ceph:rbd, s3:s3, swift:swift`) on the suite's real Ceph
(RBD and radosgw) and real Swift behind the real Keystone; a fresh bucket and container per test.
"""

import io
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import glanceclient
import pytest
import requests
from click.testing import CliRunner

from locations.stores.base import Store, StoreNotFoundError, load_stores
from locquota.cli import cli
from tests.backends import TYPES, backend_options, with_real_stores
from tests.ceph import CephCluster
from tests.swift import SwiftCluster

# The real stores are what these tests are about: they run on PostgreSQL and SQLite, as before MariaDB came.
# With a MariaDB pass too, the full suite twice hung in a store delete in this module (600 s, never when the
# module ran alone); the suspect is what a third pass adds to Ceph's in-memory OSD. See issue 19's notes.
pytestmark = pytest.mark.engines("postgresql", "sqlite")

DATA = bytes(range(251)) * 9000  # 2.2 MB: several RBD chunks, S3 parts and Swift segments at the sizes below
BACKENDS = ("ceph", "s3", "swift")
LOCQUOTA = str(Path(sys.executable).with_name("locquota"))
PROCESS_TIMEOUT = 120
RETRY_DEADLINE = 30


@dataclass(frozen=True, slots=True)
class Backends:
    """Where each store keeps its data in its server, and how to look there with the server's own client."""

    ceph: CephCluster
    swift: SwiftCluster
    bucket: str
    container: str

    def names(self, store: str) -> list[str]:
        """The names of the data in the store's pool, bucket or container (the server's own client)."""
        if store == "ceph":
            return self.ceph.rbd_images()
        if store == "s3":
            return self.ceph.s3_objects(self.bucket)
        return self.swift.objects(self.container)


@pytest.fixture
def backends(ceph: CephCluster, swift: SwiftCluster) -> Backends:
    suffix = uuid.uuid4().hex[:12]
    return Backends(ceph, swift, f"lq-{suffix}", f"lq-{suffix}")


@pytest.fixture
def live_settings(settings: dict[str, str], backends: Backends, tmp_path: Path) -> dict[str, str]:
    stores = with_real_stores(
        settings, backends.ceph, backends.swift, backends.bucket, backends.container, tmp_path / "local"
    )
    return {
        **stores,
        "locquota.auth_strategy": "tokens",
        "locquota.show_multiple_locations": "true",
        "locquota.delayed_delete": "true",
        "locquota.scrub_time": "0",
        "locquota.scrub_retry_base_seconds": "1",  # a failed deletion is due again a second later
    }


@pytest.fixture
def stores(live_settings: dict[str, str], backends: Backends) -> dict[str, Store]:
    """The same stores as the server's, for writing data a location is then added for."""
    options = backend_options(backends.ceph, backends.swift, backends.bucket, backends.container)
    return load_stores(list(TYPES.items()), options)


@pytest.fixture
def glance(live_url: str, token: str) -> object:
    return glanceclient.Client(endpoint=f"{live_url}/v2", token=token)


@pytest.fixture
def scrub(deployment_ini: Path) -> Callable[[], str]:
    def run() -> str:
        result = CliRunner().invoke(cli, ["--config", str(deployment_ini), "scrub"])
        assert result.exit_code == 0, result.output
        return result.output

    return run


@pytest.fixture
def cleanup(stores: dict[str, Store]) -> Iterator[list[tuple[str, str]]]:
    """(store, url) of data a test wrote; deleted afterwards whatever the test did (deleting twice is harmless)."""
    written: list[tuple[str, str]] = []
    yield written
    for store, url in written:
        stores[store].delete(url)


@pytest.mark.parametrize("store", BACKENDS)
def test_a_backend_round_trip_through_glanceclient(store, glance, backends, stores, scrub, usage_of, cleanup):
    image = glance.images.create(name=f"on-{store}", disk_format="raw", container_format="bare")

    glance.images.upload(image.id, io.BytesIO(DATA), backend=store)

    shown = glance.images.get(image.id)
    cleanup.append((store, shown["locations"][0]["url"]))
    assert (shown["status"], shown["size"], shown["stores"]) == ("active", len(DATA), store)
    assert shown["locations"][0]["metadata"] == {"store": store}
    assert [name for name in backends.names(store) if image.id in name]  # the object, seen by the server's client
    assert b"".join(glance.images.data(image.id)) == DATA

    second = stores[store].add(stores[store].plan_upload(uuid.uuid4()), iter([DATA]))  # a copy of the image
    cleanup.append((store, second))
    glance.images.add_location(image.id, second, {})
    assert usage_of("p1")["space"] == {(store, "active"): (2 * len(DATA), 2)}  # each location is charged

    glance.images.delete(image.id)
    assert usage_of("p1")["space"] == {(store, "pending_delete"): (2 * len(DATA), 2)}
    output = scrub()

    assert "deleted" in output
    assert [name for name in backends.names(store) if image.id in name] == []
    with pytest.raises(StoreNotFoundError):  # the store answers that the data is gone
        stores[store].get_size(second)
    assert usage_of("p1")["space"] == {}


def test_scrubber_processes_share_a_mixed_backlog_in_three_stores(
    glance, backends, stores, deployment_ini, usage_of, cleanup
):
    images = []
    for count in range(9):
        store = BACKENDS[count % 3]
        image = glance.images.create(name=f"backlog-{count}", disk_format="raw", container_format="bare")
        glance.images.upload(image.id, io.BytesIO(DATA[: 1000 + count]), backend=store)
        cleanup.append((store, glance.images.get(image.id)["locations"][0]["url"]))
        images.append((store, image.id))
    for _, image_id in images:
        glance.images.delete(image_id)

    processes = [
        subprocess.Popen(
            [LOCQUOTA, "--config", str(deployment_ini), "scrub"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=PROCESS_TIMEOUT)[0].decode() for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    for store, image_id in images:
        assert [name for name in backends.names(store) if image_id in name] == [], store
    assert usage_of("p1")["space"] == {}


def test_a_stopped_store_fails_alone_and_the_scrubber_retries_it(
    glance, live_server, backends, scrub, usage_of, cleanup
):
    uploaded = {}
    for store in BACKENDS:
        image = glance.images.create(name=f"outage-{store}", disk_format="raw", container_format="bare")
        glance.images.upload(image.id, io.BytesIO(DATA[:5000]), backend=store)
        cleanup.append((store, glance.images.get(image.id)["locations"][0]["url"]))
        uploaded[store] = image.id
        glance.images.delete(image.id)

    backends.ceph.stop_rgw()
    try:
        refused = glance.images.create(name="while-s3-is-down", disk_format="raw", container_format="bare")
        live_server.expected_unavailable.add(f"/v2/images/{refused.id}/file")
        with pytest.raises(glanceclient.exc.HTTPServiceUnavailable):
            glance.images.upload(refused.id, io.BytesIO(b"x" * 100), backend="s3")
        fine = glance.images.create(name="while-s3-is-down", disk_format="raw", container_format="bare")
        glance.images.upload(fine.id, io.BytesIO(b"y" * 100), backend="swift")
        cleanup.append(("swift", glance.images.get(fine.id)["locations"][0]["url"]))
        scrub()
        assert usage_of("p1")["space"] == {("s3", "pending_delete"): (5000, 1), ("swift", "active"): (100, 1)}

        assert [name for name in backends.names("ceph") if uploaded["ceph"] in name] == []
        assert [name for name in backends.names("swift") if uploaded["swift"] in name] == []
    finally:
        backends.ceph.start_rgw()
    assert [name for name in backends.names("s3") if uploaded["s3"] in name]  # still there, to be retried

    deadline = time.monotonic() + RETRY_DEADLINE
    while usage_of("p1")["space"] != {("swift", "active"): (100, 1)}:
        assert time.monotonic() < deadline, "the scrubber did not retry the s3 deletion"
        scrub()  # each pass finds it once its backoff (1 s) has passed
    assert [name for name in backends.names("s3") if uploaded["s3"] in name] == []


SECRET = "not-the-stores-secret-0123456789"  # noqa: S105  (a wrong one, on purpose)


def hostile_urls(backends: Backends) -> list[str]:
    """Per scheme: another cluster, pool, bucket, container or host, and credentials that are not the store's."""
    ceph, swift = backends.ceph, backends.swift
    rgw = ceph.rgw_url.removeprefix("http://")
    keystone = swift.keystone.url.removeprefix("http://")
    image = str(uuid.uuid4())
    return [
        f"rbd://{uuid.uuid4()}/{ceph.pool}/{image}/snap",  # another cluster
        f"rbd://{ceph.fsid}/rbd/{image}/snap",  # another pool
        f"rbd://{ceph.fsid}/{ceph.pool}/..%2F{image}/snap",
        f"s3://{rgw}/another-bucket/{image}",
        f"s3://{ceph.s3_access_key}:{SECRET}@{rgw}/{backends.bucket}/{image}",
        f"s3://169.254.169.254/{backends.bucket}/{image}",
        f"s3+https://{rgw}/{backends.bucket}/{image}?versionId=1",
        f"swift+http://service%3Aglance-swift:{SECRET}@{keystone}/{backends.container}/{image}",
        f"swift+http://{keystone}/another-container/{image}",
        f"swift+config://no-such-reference/{backends.container}/{image}",
        f"swift+http://10.0.0.1:5000/v3/{backends.container}/{image}",
    ]


def test_hostile_urls_are_refused_without_echoing_them(glance, live_url, token, backends, usage_of):
    image = glance.images.create(name="hostile", disk_format="raw", container_format="bare")
    refused = []
    for url in hostile_urls(backends):
        response = requests.patch(
            f"{live_url}/v2/images/{image.id}",
            json=[{"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {}}}],
            headers={"X-Auth-Token": token, "Content-Type": "application/openstack-images-v2.1-json-patch"},
            timeout=60,
        )
        refused.append((url, response.status_code, SECRET in response.text or url in response.text))

    assert [(url, status, echoed) for url, status, echoed in refused if status != 400 or echoed] == []
    assert glance.images.get(image.id)["status"] == "queued"
    assert usage_of("p1")["space"] == {}


def test_glanceclient_removes_an_images_data_from_one_backend(
    glance, live_url, issue_token, backends, stores, scrub, usage_of, cleanup
):
    image = glance.images.create(name="in-two-backends", disk_format="raw", container_format="bare")
    glance.images.upload(image.id, io.BytesIO(DATA), backend="ceph")
    cleanup.append(("ceph", glance.images.get(image.id)["locations"][0]["url"]))
    copy = stores["s3"].add(stores["s3"].plan_upload(uuid.uuid4()), iter([DATA]))
    cleanup.append(("s3", copy))
    glance.images.add_location(image.id, copy, {})
    admin = glanceclient.Client(endpoint=f"{live_url}/v2", token=issue_token("operators", "admin"))

    admin.images.delete_from_store("s3", image.id)  # `glance stores-delete --store s3 <image>`

    shown = glance.images.get(image.id)
    assert (shown["status"], shown["stores"]) == ("active", "ceph")
    assert usage_of("p1")["space"] == {("ceph", "active"): (len(DATA), 1), ("s3", "pending_delete"): (len(DATA), 1)}
    scrub()
    assert copy.rsplit("/", 1)[1] not in backends.names("s3")
    assert usage_of("p1")["space"] == {("ceph", "active"): (len(DATA), 1)}
    assert b"".join(glance.images.data(image.id)) == DATA
