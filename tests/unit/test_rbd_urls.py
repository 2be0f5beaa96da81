"""The rbd store's URL reader (locations/stores/rbd_names.py): hostile location URLs, and spellings of one image.

No cluster and no Ceph modules: RbdLocations is given the cluster's fsid as the store would find it. The
store's options are checked before it imports rados, so their refusals are tested here too.
"""

import re

import pytest

from locations.stores.base import StoreError
from locations.stores.rbd import RbdStore
from locations.stores.rbd_names import RbdLocations
from locquota.errors import LocationOutsideStore

FSID = "7b4c2e1a-3f5d-4e6b-8a9c-0d1e2f3a4b5c"
OTHER_FSID = "11111111-2222-3333-4444-555555555555"
IMAGE = "0f6a8c2e-9b1d-4c3e-a5f7-6d8e9f0a1b2c"
SCRATCH = f"{IMAGE}.00112233445566778899aabbccddeeff.partial"
KEY = f"rbd://{FSID}/images/{IMAGE}"
SECRET = "s3cr3t-k3y"  # noqa: S105  (a made-up key: messages must never carry one)


def reader(fsid: str = FSID) -> RbdLocations:
    return RbdLocations("images", lambda: fsid)


def unreachable_cluster() -> str:
    raise StoreError("rbd store ceph: connecting to the cluster failed (TimedOut, ETIMEDOUT)")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap", id="glance"),
        pytest.param(KEY, id="the key itself"),
        pytest.param(f"rbd://{IMAGE}", id="glance's old form"),
        pytest.param(f"RBD://{FSID}/images/{IMAGE}/snap", id="scheme in capitals"),
        pytest.param(f"Rbd://{IMAGE}", id="old form, scheme in mixed case"),
        pytest.param(f"rbd://{FSID.upper()}/images/{IMAGE}/snap", id="fsid in capitals"),
        pytest.param(f"rbd://{FSID}/%69mages/{IMAGE}/snap", id="pool with an escaped letter"),
        pytest.param(f"rbd://{FSID}/%69%6D%61%67%65%73/{IMAGE}", id="pool all escaped"),
        pytest.param(f"rbd://{FSID}/images/{IMAGE.replace('-', '%2D')}/snap", id="image with escaped dashes"),
        pytest.param(f"rbd://{FSID}/images/{IMAGE}/%73nap", id="snapshot with an escaped letter"),
        pytest.param(f"rbd://{FSID.replace('-', '%2d')}/images/{IMAGE}/snap", id="fsid with escaped dashes"),
    ],
)
def test_spellings_of_one_image_have_one_key(url):
    assert reader().parse(url).key == KEY


def test_the_key_reads_back_as_itself():
    assert reader().parse(KEY).key == KEY


def test_the_snapshot_is_kept_but_is_no_part_of_the_key():
    location = reader().parse(f"rbd://{FSID}/images/{IMAGE}/snap")

    assert (location.image, location.snapshot, location.key) == (IMAGE, "snap", KEY)


def test_a_scratch_name_is_a_name_of_this_store_and_flagged():
    location = reader().parse(f"rbd://{FSID}/images/{SCRATCH}")

    assert location.is_scratch
    assert location.key == f"rbd://{FSID}/images/{SCRATCH}"


def test_an_image_id_in_capitals_names_another_rbd_image():
    # RBD names are case-sensitive: the same letters in capitals are another image, so another key.
    upper = reader().parse(f"rbd://{FSID}/images/{IMAGE.upper()}/snap")

    assert upper.key != KEY
    assert upper.image == IMAGE.upper()


def test_a_pool_that_needs_escaping_is_keyed_as_glance_writes_it():
    locations = RbdLocations("glance images", lambda: FSID)

    location = locations.parse(f"rbd://{FSID}/glance%20images/{IMAGE}/snap")

    assert location.pool == "glance images"
    assert location.key == f"rbd://{FSID}/glance%20images/{IMAGE}"


HOSTILE = [
    # Other places
    pytest.param(f"rbd://{FSID}/volumes/{IMAGE}/snap", id="another pool"),
    pytest.param(f"rbd://{FSID}/Images/{IMAGE}/snap", id="pool in other case"),
    pytest.param(f"rbd://{FSID}/images%00/{IMAGE}/snap", id="pool with an escaped NUL"),
    pytest.param(f"rbd://{FSID}/%2Fimages/{IMAGE}/snap", id="pool with an escaped slash"),
    pytest.param(f"rbd://{OTHER_FSID}/images/{IMAGE}/snap", id="another cluster"),
    pytest.param(f"rbd://00000000-0000-0000-0000-000000000000/images/{IMAGE}/snap", id="the unset fsid"),
    pytest.param(f"rbd://not-a-cluster/images/{IMAGE}/snap", id="fsid not a uuid"),
    pytest.param(f"rbd://{FSID}x/images/{IMAGE}/snap", id="fsid with a tail"),
    # Not the names this store writes
    pytest.param(f"rbd://{FSID}/images/volume-{IMAGE}/snap", id="a cinder volume name"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/other", id="another snapshot"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/SNAP", id="snapshot in capitals"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}@snap", id="snapshot after @"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%40snap", id="escaped @"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}.partial", id="scratch without its random part"),
    pytest.param(f"rbd://{FSID}/images/{SCRATCH.upper()}", id="scratch in capitals"),
    pytest.param(f"rbd://{FSID}/images/{SCRATCH}2", id="scratch with a tail"),
    pytest.param("rbd://images", id="old form, not an image id"),
    pytest.param(f"rbd://%30{IMAGE[1:]}", id="old form escaped: Glance would not decode it"),
    # Path tricks
    pytest.param(f"rbd://{FSID}/images/{IMAGE[:8]}%2F{IMAGE[9:]}/snap", id="escaped slash in the image"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE[:8]}%2f{IMAGE[9:]}/snap", id="escaped slash, lower case"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE[:8]}%252F{IMAGE[9:]}/snap", id="double escaped slash"),
    pytest.param(f"rbd://{FSID}/images/../{IMAGE}", id="dot dot"),
    pytest.param(f"rbd://{FSID}/images/%2E%2E/{IMAGE}", id="escaped dot dot"),
    pytest.param(f"rbd://{FSID}/images/./{IMAGE}/snap", id="dot"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap/..", id="dot dot after the snapshot"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%00/snap", id="escaped NUL"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}\x00/snap", id="NUL"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%FF/snap", id="escape that is not UTF-8"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%C3%A9/snap", id="escaped non-ASCII"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}é/snap", id="non-ASCII"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%2/snap", id="short escape"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%zz/snap", id="escape not hex"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}\\snap", id="backslash"),
    # Empty parts and part counts
    pytest.param("rbd://", id="nothing"),
    pytest.param(f"rbd://{FSID}//{IMAGE}/snap", id="empty pool"),
    pytest.param(f"rbd:///images/{IMAGE}/snap", id="empty fsid"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/", id="empty snapshot"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap/", id="trailing slash"),
    pytest.param(f"rbd://{IMAGE}/", id="old form with a slash"),
    pytest.param(f"rbd://{FSID}/{IMAGE}", id="two parts"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap/snap", id="five parts"),
    # Query, fragment, user info, port
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap?pool=volumes", id="query"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap?", id="empty query"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap#x", id="fragment"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap#", id="empty fragment"),
    pytest.param(f"rbd://admin@{FSID}/images/{IMAGE}/snap", id="user"),
    pytest.param(f"rbd://admin:{SECRET}@{FSID}/images/{IMAGE}/snap", id="user and key"),
    pytest.param(f"rbd://admin:{SECRET}@{IMAGE}", id="old form with user and key"),
    pytest.param(f"rbd://{FSID}:6789/images/{IMAGE}/snap", id="port"),
    pytest.param(f"rbd://[::1]/images/{IMAGE}/snap", id="IPv6 host"),
    # Whitespace and control characters (urlsplit would quietly drop tabs and newlines)
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap\n", id="trailing newline"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/sn\tap", id="tab"),
    pytest.param(f" rbd://{FSID}/images/{IMAGE}/snap", id="leading space"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE} /snap", id="inner space"),
    pytest.param(f"rbd://{FSID}/images/{IMAGE}%20/snap", id="escaped space"),
    # Other schemes and shapes
    pytest.param(f"rbds://{FSID}/images/{IMAGE}/snap", id="another scheme"),
    pytest.param(f"rbd:{FSID}/images/{IMAGE}/snap", id="no slashes"),
    pytest.param(f"rbd:/{FSID}/images/{IMAGE}/snap", id="one slash"),
    pytest.param(f"file:///var/lib/glance/images/{IMAGE}", id="file"),
    pytest.param(f"swift://{FSID}/images/{IMAGE}", id="swift"),
    pytest.param("", id="empty"),
    # Size
    pytest.param(f"rbd://{FSID}/images/{IMAGE}/snap" + "/x" * 3000, id="over 4096 characters"),
    pytest.param("rbd://" + "a" * 5000, id="old form over 4096 characters"),
]


@pytest.mark.parametrize("url", HOSTILE)
def test_hostile_urls_are_refused_without_quoting_them(url):
    with pytest.raises(LocationOutsideStore) as refused:
        reader().parse(url)

    message = str(refused.value)
    assert message.startswith("The RBD location URL ")
    assert "://" not in message
    assert SECRET not in message
    assert FSID not in message
    assert IMAGE not in message
    assert refused.value.code == "location_outside_store"


@pytest.mark.parametrize("url", [param for param in HOSTILE if "another cluster" not in param.id])
def test_malformed_urls_are_refused_without_asking_the_cluster(url):
    # The cluster's fsid is asked for only once the syntax is right: a bad URL is a 400, never a store error.
    with pytest.raises(LocationOutsideStore):
        RbdLocations("images", unreachable_cluster).parse(url)


def test_a_url_of_this_cluster_needs_its_fsid():
    with pytest.raises(StoreError):
        RbdLocations("images", unreachable_cluster).parse(f"rbd://{IMAGE}")


# The store's options: checked before the Ceph modules are imported, so no cluster or module is needed.


@pytest.fixture
def ceph_conf(tmp_path):
    path = tmp_path / "ceph.conf"
    path.write_text(f"[global]\nfsid = {FSID}\nmon host = [v2:127.0.0.1:9]\n")
    return str(path)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"rbd_store_pol": "images"}, "rbd_store_pol"),
        ({"rbd_store_chunk_size": "3"}, "rbd_store_chunk_size"),
        ({"rbd_store_chunk_size": "64"}, "rbd_store_chunk_size"),
        ({"rbd_store_chunk_size": "0"}, "rbd_store_chunk_size"),
        ({"rbd_store_chunk_size": "eight"}, "rbd_store_chunk_size"),
        ({"rados_connect_timeout": "-1"}, "rados_connect_timeout"),
        ({"rados_connect_timeout": "0"}, "rados_connect_timeout"),
        ({"rbd_thin_provisioning": "maybe"}, "rbd_thin_provisioning"),
    ],
)
def test_bad_options_are_refused_at_start_naming_the_key(ceph_conf, options, key):
    with pytest.raises(ValueError, match=rf"^{re.escape(f'locquota.store.ceph.{key}')}\b"):
        RbdStore("ceph", {"rbd_store_ceph_conf": ceph_conf, **options})


def test_a_missing_ceph_conf_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match=re.escape("locquota.store.ceph.rbd_store_ceph_conf = ")):
        RbdStore("ceph", {"rbd_store_ceph_conf": str(tmp_path / "absent.conf")})
