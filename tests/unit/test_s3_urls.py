"""The S3 store's URLs without a server: what it refuses, what it takes as the same data, and its options.

Nothing here reaches the network: the endpoint is a closed port, and naming data never needs it.
"""

import uuid

import pytest

from locations.stores.s3 import S3Store
from locquota.errors import LocationOutsideStore

IMAGE = "0d4f2c7e-3b1a-4c5d-9e8f-1a2b3c4d5e6f"
SCRATCH = f"{IMAGE}.{'ab' * 16}.partial"
ACCESS = "AKIAEXAMPLE0"
SECRET = "se/cr+et=Key"  # noqa: S105  (a made-up secret: AWS ones hold "/" and "+", raw or percent-encoded in URLs)
ENCODED_SECRET = "se%2Fcr%2Bet%3DKey"  # noqa: S105
HOST = "s3.example.com"
BASE = f"s3://{HOST}:8080/images"
KEY = f"{BASE}/{IMAGE}"


def make_store(host: str = "http://S3.Example.COM:8080", **options: str) -> S3Store:
    required = {"s3_store_access_key": ACCESS, "s3_store_secret_key": SECRET, "s3_store_bucket": "images"}
    return S3Store("s3", {"s3_store_host": host, **required, **options})


@pytest.fixture
def store() -> S3Store:
    return make_store()


@pytest.mark.parametrize(
    "url",
    [
        KEY,
        f"S3://{HOST}:8080/images/{IMAGE}",
        f"s3://S3.EXAMPLE.COM:8080/images/{IMAGE}",
        f"s3+http://{HOST}:8080/images/{IMAGE}",
        f"S3+HTTP://s3.Example.com:8080/images/{IMAGE}",
        f"s3://{ACCESS}:{SECRET}@{HOST}:8080/images/{IMAGE}",
        f"s3://{ACCESS}:{ENCODED_SECRET}@{HOST}:8080/images/{IMAGE}",
        f"s3+http://{ACCESS}:{SECRET}@S3.example.com:8080/images/{IMAGE}",
    ],
)
def test_spellings_of_one_object_have_one_key(store, url):
    store.validate_url(url)
    assert store.identify(url).key == KEY


@pytest.mark.parametrize(
    ("host", "url", "key"),
    [
        ("https://s3.example.com", f"s3+https://s3.example.com:443/images/{IMAGE}", f"s3://s3.example.com/images/{IMAGE}"),
        ("https://s3.example.com", f"s3://s3.example.com/images/{IMAGE}", f"s3://s3.example.com/images/{IMAGE}"),
        ("https://s3.example.com:443/", f"S3+HTTPS://S3.example.com/images/{IMAGE}", f"s3://s3.example.com/images/{IMAGE}"),
        ("s3.example.com", f"s3://s3.example.com:80/images/{IMAGE}", f"s3://s3.example.com/images/{IMAGE}"),
        ("http://h:8080/rgw/v1/", f"s3://h:8080/rgw/v1/images/{IMAGE}", f"s3://h:8080/rgw/v1/images/{IMAGE}"),
        ("http://[::1]:8080", f"s3://[::1]:8080/images/{IMAGE}", f"s3://[::1]:8080/images/{IMAGE}"),
        ("http://[FD00::1]", f"s3+http://[fd00::1]:80/images/{IMAGE}", f"s3://[fd00::1]/images/{IMAGE}"),
    ],
)  # fmt: skip
def test_the_default_port_and_the_endpoint_path_are_spelled_one_way(host, url, key):
    assert make_store(host).identify(url).key == key


def test_an_upper_case_image_id_is_another_object(store):
    upper = f"{BASE}/{IMAGE.upper()}"
    store.validate_url(upper)
    assert store.identify(upper).key == upper
    assert upper != KEY


HOSTILE = [
    ("another host", f"s3://s3.example.org:8080/images/{IMAGE}"),
    ("another host by address", f"s3://127.0.0.1:8080/images/{IMAGE}"),
    ("a host with a trailing dot", f"s3://{HOST}.:8080/images/{IMAGE}"),
    ("another port", f"s3://{HOST}:8081/images/{IMAGE}"),
    ("the default port instead", f"s3://{HOST}/images/{IMAGE}"),
    ("the default port spelled", f"s3://{HOST}:80/images/{IMAGE}"),
    ("an empty port", f"s3://{HOST}:/images/{IMAGE}"),
    ("a port with a sign", f"s3://{HOST}:+8080/images/{IMAGE}"),
    ("a port with a leading zero", f"s3://{HOST}:08080/images/{IMAGE}"),
    ("a port out of range", f"s3://{HOST}:108080/images/{IMAGE}"),
    ("a port that is not a number", f"s3://{HOST}:80a/images/{IMAGE}"),
    ("two ports", f"s3://{HOST}:8080:8080/images/{IMAGE}"),
    ("no host", f"s3:///images/{IMAGE}"),
    ("another bucket", f"{BASE}x/{IMAGE}".replace("imagesx", "other")),
    ("the bucket in another case", f"s3://{HOST}:8080/Images/{IMAGE}"),
    ("no bucket", f"s3://{HOST}:8080/{IMAGE}"),
    ("a path before the bucket", f"s3://{HOST}:8080/v1/images/{IMAGE}"),
    ("a folder in the key", f"{BASE}/sub/{IMAGE}"),
    ("an empty segment", f"s3://{HOST}:8080//images/{IMAGE}"),
    ("a trailing slash", f"{KEY}/"),
    ("nothing after the host", f"s3://{HOST}:8080"),
    ("the bucket alone", f"{BASE}/"),
    ("a dot-dot key", f"{BASE}/.."),
    ("a dot-dot walk", f"{BASE}/../images/{IMAGE}"),
    ("a dot segment", f"{BASE}/./{IMAGE}"),
    ("a key that is no image id", f"{BASE}/passwd"),
    ("an image id without dashes", f"{BASE}/{IMAGE.replace('-', '')}"),
    ("an image id in braces", f"{BASE}/{{{IMAGE}}}"),
    ("an image id with a suffix", f"{KEY}.bak"),
    ("percent-encoded dot-dot", f"{BASE}/%2e%2e"),
    ("a percent-encoded slash", f"s3://{HOST}:8080/images%2F{IMAGE}"),
    ("a percent-encoded key", f"{BASE}/%30{IMAGE[1:]}"),
    ("a percent-encoded host", f"s3://%73{HOST[1:]}:8080/images/{IMAGE}"),
    ("a double-encoded slash", f"s3://{HOST}:8080/images%252F{IMAGE}"),
    ("an encoded NUL", f"{KEY}%00"),
    ("a raw NUL", f"{KEY}\x00"),
    ("a newline", f"{KEY}\n"),
    ("a space", f"s3://{HOST}:8080/images/ {IMAGE}"),
    ("a tab", f"s3://{HOST}\t:8080/images/{IMAGE}"),
    ("a backslash", f"s3://{HOST}:8080\\images\\{IMAGE}"),
    ("a query", f"{KEY}?versionId=1"),
    ("an empty query", f"{KEY}?"),
    ("a fragment", f"{KEY}#top"),
    ("a non-ASCII host", f"s3://\u017f3.example.com:8080/images/{IMAGE}"),
    ("a full-width digit", f"s3://{HOST}:808\uff10/images/{IMAGE}"),
    ("https on an http endpoint", f"s3+https://{HOST}:8080/images/{IMAGE}"),
    ("an http URL", f"http://{HOST}:8080/images/{IMAGE}"),
    ("a swift URL", f"swift://{HOST}:8080/images/{IMAGE}"),
    ("a file URL", f"file:///images/{IMAGE}"),
    ("one slash", f"s3:/{HOST}:8080/images/{IMAGE}"),
    ("no slashes", f"s3:{HOST}:8080/images/{IMAGE}"),
    ("a nested scheme", f"s3://http://{HOST}:8080/images/{IMAGE}"),
    ("no scheme", f"{HOST}:8080/images/{IMAGE}"),
    ("an empty URL", ""),
    ("over 4096 characters", f"s3://{HOST}:8080/images/{IMAGE}" + "/x" * 2100),
    ("credentials of another access key", f"s3://AKIAOTHER:{SECRET}@{HOST}:8080/images/{IMAGE}"),
    ("another secret", f"s3://{ACCESS}:othersecret@{HOST}:8080/images/{IMAGE}"),
    ("another secret, encoded", f"s3://{ACCESS}:other%2Fsecret@{HOST}:8080/images/{IMAGE}"),
    ("a secret encoded twice", f"s3://{ACCESS}:se%252Fcr%252Bet%253DKey@{HOST}:8080/images/{IMAGE}"),
    ("the secret in another case", f"s3://{ACCESS}:{SECRET.upper()}@{HOST}:8080/images/{IMAGE}"),
    ("an access key without a secret", f"s3://{ACCESS}@{HOST}:8080/images/{IMAGE}"),
    ("an empty secret", f"s3://{ACCESS}:@{HOST}:8080/images/{IMAGE}"),
    ("empty credentials", f"s3://@{HOST}:8080/images/{IMAGE}"),
    ("the key and secret swapped", f"s3://{SECRET}:{ACCESS}@{HOST}:8080/images/{IMAGE}"),
    ("credentials after the path", f"s3://{HOST}:8080/images/{IMAGE}@{HOST}:8080/images/{IMAGE}"),
    ("credentials naming another host", f"s3://{ACCESS}:{SECRET}@evil.example.com/images/{IMAGE}"),
]


@pytest.mark.parametrize(("why", "url"), HOSTILE, ids=[why for why, _ in HOSTILE])
def test_a_hostile_url_is_refused_without_being_echoed(store, why, url):
    for check in (store.validate_url, store.identify):
        with pytest.raises(LocationOutsideStore) as refused:
            check(url)
        message = str(refused.value)
        assert refused.value.code == "location_outside_store"
        assert refused.value.status == 400
        for secret in (SECRET, ENCODED_SECRET, "othersecret", "other%2Fsecret", SECRET.upper(), IMAGE, HOST):
            assert secret not in message, why
        assert refused.value.details == {}


def test_a_scratch_name_is_identified_for_the_reaper_but_is_no_location(store):
    scratch = f"{BASE}/{SCRATCH}"
    assert store.identify(scratch).key == scratch
    assert store.identify(f"s3+http://{ACCESS}:{SECRET}@{HOST}:8080/images/{SCRATCH}").key == scratch
    with pytest.raises(LocationOutsideStore):
        store.validate_url(scratch)


def test_an_upper_case_scratch_name_is_not_one_this_store_writes(store):
    with pytest.raises(LocationOutsideStore):
        store.identify(f"{BASE}/{SCRATCH.upper()}")


def test_planning_an_upload_names_both_objects_without_a_server():
    store = make_store("http://127.0.0.1:9")  # the discard port: nothing answers
    image_id = uuid.uuid4()

    target = store.plan_upload(image_id)

    assert target.url == f"s3://127.0.0.1:9/images/{image_id}"
    assert target.scratch_url.startswith(f"s3://127.0.0.1:9/images/{image_id}.")
    assert target.scratch_url.endswith(".partial")
    assert store.identify(target.url).key == target.url
    assert store.identify(target.scratch_url).key == target.scratch_url
    assert store.plan_upload(image_id).scratch_url != target.scratch_url


def test_an_http_endpoint_takes_s3_and_s3_http_urls():
    assert make_store().schemes == ("s3", "s3+http")
    assert make_store("https://s3.example.com").schemes == ("s3", "s3+https")


def test_it_describes_itself():
    store = make_store(store_description="Images in RGW")
    assert (store.name, store.scheme, store.description, store.is_read_only) == ("s3", "s3", "Images in RGW", False)


def test_part_and_single_put_sizes_come_from_glance_options():
    store = make_store(s3_store_large_object_chunk_size="7", s3_store_large_object_size="100")
    assert store.part_bytes == 7 << 20
    assert store.single_put_bytes == 7 << 20  # never more than one part in memory
    assert make_store(s3_store_large_object_size="0").single_put_bytes == 0


@pytest.mark.parametrize(
    ("options", "wrong"),
    [
        ({"host": ""}, "s3_store_host: required"),
        ({"s3_store_bucket": ""}, "s3_store_bucket: required"),
        ({"s3_store_secret_key": ""}, "s3_store_secret_key: required"),
        ({"s3_store_access_key": ""}, "s3_store_access_key: required"),
        ({"host": "ftp://s3.example.com"}, "s3_store_host: expected"),
        ({"host": "http://user:pw@s3.example.com"}, "s3_store_host: expected"),
        ({"host": "http://s3.example.com/?x=1"}, "s3_store_host: expected"),
        ({"host": "http://s3.example.com:99999"}, "s3_store_host: expected"),
        ({"host": "http://s3.example.com/a/../b"}, "s3_store_host: expected"),
        ({"host": "http://s3.exa mple.com"}, "s3_store_host: expected"),
        ({"s3_store_bucket": "a/b"}, "s3_store_bucket: not a usable bucket name"),
        ({"s3_store_bucket": "a..b"}, "s3_store_bucket: not a usable bucket name"),
        ({"s3_store_large_object_chunk_size": "4"}, "s3_store_large_object_chunk_size = 4: must be at least 5"),
        ({"s3_store_bucket_url_format": "dns"}, "s3_store_bucket_url_format = 'dns': expected one of"),
        ({"s3_store_request_checksum_calculation": "always"}, "s3_store_request_checksum_calculation"),
        ({"s3_store_connect_timeout": "0"}, "s3_store_connect_timeout = 0: must be at least"),
        ({"s3_store_max_attempts": "0"}, "s3_store_max_attempts = 0: must be at least 1"),
        ({"s3_store_create_bucket_on_put": "maybe"}, "s3_store_create_bucket_on_put = 'maybe'"),
        ({"s3_store_secret": "x"}, "s3_store_secret: unknown option"),
    ],
)
def test_a_wrong_option_fails_the_start_naming_its_key(options, wrong):
    with pytest.raises(ValueError, match=r"^locquota\.store\.s3\.") as failed:
        make_store(**options)
    assert wrong in str(failed.value)
    assert SECRET not in str(failed.value)


def test_a_glance_backend_section_is_taken_as_it_is():
    store = make_store(
        s3_store_region_name="eu-west-1",
        s3_store_create_bucket_on_put="true",
        s3_store_bucket_url_format="path",
        s3_store_large_object_size="100",
        s3_store_large_object_chunk_size="10",
        s3_store_thread_pools="10",
        s3_store_cacert="",
        s3_store_enable_data_integrity_protection="false",
        s3_store_request_checksum_calculation="when_supported",
        s3_store_response_checksum_validation="when_required",
    )
    assert (store.region, store.creates_bucket, store.part_bytes) == ("eu-west-1", True, 10 << 20)
