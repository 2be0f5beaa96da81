"""The swift store's names without a server: hostile URLs refused, every spelling of one object keyed alike.

Nothing here reaches the network: a SwiftStore connects lazily, and validate_url/identify never connect.
"""

import uuid

import pytest

from locations.stores.swift import SwiftStore
from locquota.errors import LocationOutsideStore

IMAGE = "0d4f5e1c-7a7b-4b61-9a3e-5b7e2b0c9d11"
SCRATCH = f"{IMAGE}.{'ab' * 16}.partial"
KEY = "p@ss-w0rd"  # an "@" is quoted in Glance's URLs; a ":" would make glance_store itself split the key wrongly
QUOTED = "service%3Aglance:p%40ss-w0rd"  # what glance_store writes: quote(user):quote(key)
AUTH = "keystone.example.com:5000/v3"
OURS = f"swift+http://{AUTH}/glance/{IMAGE}"
THE_KEY = f"swift://keystone.example.com:5000/v3/service/glance/{IMAGE}"
OPTIONS = {
    "swift_store_auth_address": f"http://{AUTH}",
    "swift_store_user": "service:glance",
    "swift_store_key": KEY,
    "swift_store_container": "glance",
}


@pytest.fixture
def store() -> SwiftStore:
    return SwiftStore("swift1", OPTIONS)


@pytest.fixture
def reference_store(tmp_path) -> SwiftStore:
    """Configured through a glance_store swift_store_config_file, with references to this account and others."""
    path = tmp_path / "glance-swift.conf"
    path.write_text(
        "[ref1]\n"
        f"auth_address = http://{AUTH}\nuser = service:glance\nkey = '{KEY}'\n"
        "user_domain_id = default\nproject_domain_id = default\n"
        "[same-account]\n"  # another user of the same project: the same account, the same data
        f"auth_address = http://{AUTH}/\nuser = service:other\nkey = other-key\n"
        "[other-project]\n"
        f"auth_address = http://{AUTH}\nuser = p1:glance\nkey = {KEY}\n"
        "[other-keystone]\n"
        f"auth_address = http://keystone2.example.com:5000/v3\nuser = service:glance\nkey = {KEY}\n"
        "[broken]\n"
        "auth_address = http://\n"
    )
    return SwiftStore(
        "swift-ref",
        {"swift_store_config_file": str(path), "default_swift_reference": "ref1", "swift_store_container": "glance"},
    )


HOSTILE = [
    ("another container", f"swift+http://{AUTH}/other/{IMAGE}"),
    ("container case", f"swift+http://{AUTH}/Glance/{IMAGE}"),
    ("another host", f"swift+http://keystone2.example.com:5000/v3/glance/{IMAGE}"),
    ("a host that merely starts alike", f"swift+http://keystone.example.com.evil:5000/v3/glance/{IMAGE}"),
    ("another port", f"swift+http://keystone.example.com:5001/v3/glance/{IMAGE}"),
    ("the protocol's port instead", f"swift+http://keystone.example.com/v3/glance/{IMAGE}"),
    ("an empty port", f"swift+http://keystone.example.com:/v3/glance/{IMAGE}"),
    ("a signed port", f"swift+http://keystone.example.com:+5000/v3/glance/{IMAGE}"),
    ("another auth path", f"swift+http://keystone.example.com:5000/v2.0/glance/{IMAGE}"),
    ("a longer auth path", f"swift+http://{AUTH}/extra/glance/{IMAGE}"),
    ("no auth path", f"swift+http://keystone.example.com:5000/glance/{IMAGE}"),
    ("https where the auth address is http", f"swift+https://{AUTH}/glance/{IMAGE}"),
    ("swift:// is https", f"swift://{AUTH}/glance/{IMAGE}"),
    ("a query", f"{OURS}?multipart-manifest=get"),
    ("an empty query", f"{OURS}?"),
    ("a fragment", f"{OURS}#x"),
    ("%2F in the container", f"swift+http://{AUTH}/glance%2F{IMAGE}"),
    ("%2F in the object", f"swift+http://{AUTH}/glance/{IMAGE}%2F..%2Fx"),
    ("percent-encoded name", f"swift+http://{AUTH}/gl%61nce/{IMAGE}"),
    ("percent-encoded object", f"swift+http://{AUTH}/glance/%30{IMAGE[1:]}"),
    ("percent-encoded host", f"swift+http://keystone%2Eexample.com:5000/v3/glance/{IMAGE}"),
    ("dot segments", f"swift+http://{AUTH}/glance/../glance/{IMAGE}"),
    ("dot-dot object", f"swift+http://{AUTH}/glance/.."),
    ("encoded dot-dot", f"swift+http://{AUTH}/glance/%2E%2E/{IMAGE}"),
    ("an empty segment", f"swift+http://{AUTH}//glance/{IMAGE}"),
    ("a trailing slash", f"{OURS}/"),
    ("a backslash", f"swift+http://{AUTH}/glance\\{IMAGE}"),
    ("NUL", f"{OURS}\x00"),
    ("encoded NUL", f"{OURS}%00"),
    ("a space", f"swift+http://{AUTH}/glance/ {IMAGE}"),
    ("a newline", f"{OURS}\n"),
    ("non-ASCII", f"swift+http://{AUTH}/glance/{IMAGE[:-1]}\u0661"),
    ("over 4096 characters", f"swift+http://{AUTH}/glance/{IMAGE}" + "/x" * 2100),
    ("a name it does not write", f"swift+http://{AUTH}/glance/etc-passwd"),
    ("a glance DLO segment", f"swift+http://{AUTH}/glance/{IMAGE}-00001"),
    ("a segment of an upload", f"swift+http://{AUTH}/glance/{SCRATCH}/00000001"),
    ("an upper-case scratch name", f"swift+http://{AUTH}/glance/{SCRATCH.upper()}"),
    ("no object", f"swift+http://{AUTH}/glance"),
    ("no object after the slash", f"swift+http://{AUTH}/glance/"),
    ("another user's key", f"swift+http://service%3Aglance:wrong@{AUTH}/glance/{IMAGE}"),
    ("another user", f"swift+http://service%3Anova:p%40ss-w0rd@{AUTH}/glance/{IMAGE}"),
    ("another project", f"swift+http://p1%3Aglance:p%40ss-w0rd@{AUTH}/glance/{IMAGE}"),
    ("user without key", f"swift+http://service%3Aglance@{AUTH}/glance/{IMAGE}"),
    ("empty credentials", f"swift+http://@{AUTH}/glance/{IMAGE}"),
    ("two @", f"swift+http://service:glance:p@ss-w0rd@{AUTH}/glance/{IMAGE}"),
    ("a host in the userinfo", f"swift+http://keystone.example.com:5000@evil.example.com:5000/v3/glance/{IMAGE}"),
    ("two schemes", f"swift+http://{AUTH}/glance/swift+http://{AUTH}/glance/{IMAGE}"),
    ("no host", f"swift+http:///v3/glance/{IMAGE}"),
    ("not swift", f"http://{AUTH}/glance/{IMAGE}"),
    ("a scheme glance_store does not know", f"swift+ftp://{AUTH}/glance/{IMAGE}"),
    ("file", f"file:///v3/glance/{IMAGE}"),
    ("no scheme", f"{AUTH}/glance/{IMAGE}"),
    ("a reference that is not configured", f"swift+config://ref2/glance/{IMAGE}"),
    ("a reference with credentials", f"swift+config://service:glance@ref1/glance/{IMAGE}"),
    ("a reference's case", f"swift+config://REF1/glance/{IMAGE}"),
    ("a key with another project", f"swift://keystone.example.com:5000/v3/p1/glance/{IMAGE}"),
    ("a key with credentials", f"swift://{QUOTED}@keystone.example.com:5000/v3/service/glance/{IMAGE}"),
    ("a key with another scheme", f"swift+http://keystone.example.com:5000/v3/service/glance/{IMAGE}"),
    ("a key with another port", f"swift://keystone.example.com:443/v3/service/glance/{IMAGE}"),
]


@pytest.mark.parametrize("url", [url for _, url in HOSTILE], ids=[reason for reason, _ in HOSTILE])
def test_hostile_urls_are_refused_without_echoing_them(store, url):
    with pytest.raises(LocationOutsideStore) as refused:
        store.validate_url(url)
    with pytest.raises(LocationOutsideStore):
        store.identify(url)
    shown = f"{refused.value} {refused.value.message} {refused.value.details}"
    assert url not in shown
    assert "p@ss" not in shown
    assert "p%40ss" not in shown
    assert "wrong" not in shown
    assert "keystone" not in shown


SAME_OBJECT = [
    ("our own spelling", OURS),
    ("glance_store's, credentials quoted", f"swift+http://{QUOTED}@{AUTH}/glance/{IMAGE}"),
    ("credentials with the user unquoted", f"swift+http://service:glance:p%40ss-w0rd@{AUTH}/glance/{IMAGE}"),
    ("scheme in capitals", f"SWIFT+HTTP://{AUTH}/glance/{IMAGE}"),
    ("host in capitals", f"swift+http://KEYSTONE.Example.COM:5000/v3/glance/{IMAGE}"),
    ("port with a leading zero", f"swift+http://keystone.example.com:05000/v3/glance/{IMAGE}"),
    ("the section's credentials as glance_store's default reference", f"swift+config://ref1/glance/{IMAGE}"),
    ("the key itself", THE_KEY),
    ("the key, scheme and host in capitals", f"SWIFT://KEYSTONE.EXAMPLE.COM:5000/v3/service/glance/{IMAGE}"),
]


@pytest.mark.parametrize("url", [url for _, url in SAME_OBJECT], ids=[reason for reason, _ in SAME_OBJECT])
def test_every_spelling_of_one_object_has_one_key(store, url):
    store.validate_url(url)
    assert store.identify(url).key == THE_KEY


def test_the_key_has_no_credentials_and_is_its_own_key(store):
    key = store.identify(f"swift+http://{QUOTED}@{AUTH}/glance/{IMAGE}").key
    assert "p%40ss" not in key
    assert "@" not in key
    assert store.identify(key).key == key


def test_an_upper_case_image_id_is_another_object(store):
    # Swift's names are case-sensitive: Glance may have written an id in capitals, and that is another object.
    upper = f"swift+http://{AUTH}/glance/{IMAGE.upper()}"
    assert store.identify(upper).key == THE_KEY.replace(IMAGE, IMAGE.upper())


def test_planned_names_are_credential_free_and_scratch_is_keyed_apart(store):
    image_id = uuid.uuid4()
    target = store.plan_upload(image_id)
    assert target.url == f"swift+http://{AUTH}/glance/{image_id}"
    assert target.scratch_url.startswith(f"{target.url}.")
    assert target.scratch_url.endswith(".partial")
    assert store.identify(target.scratch_url).key != store.identify(target.url).key
    assert store.identify(store.identify(target.scratch_url).key).key == store.identify(target.scratch_url).key


def test_scratch_names_are_accepted_in_every_spelling(store):
    scratch = f"swift+http://{QUOTED}@{AUTH}/glance/{SCRATCH}"
    assert store.identify(scratch).key == THE_KEY.replace(IMAGE, SCRATCH)


def test_https_auth_address_keys_with_its_default_port():
    store = SwiftStore("s", {**OPTIONS, "swift_store_auth_address": "https://Keystone.Example.com/v3/"})
    key = f"swift://keystone.example.com:443/v3/service/glance/{IMAGE}"
    for url in (
        f"swift://keystone.example.com/v3/glance/{IMAGE}",
        f"swift+https://keystone.example.com:443/v3/glance/{IMAGE}",
        f"swift+https://{QUOTED}@keystone.example.com/v3/glance/{IMAGE}",
        f"swift://keystone.example.com/v3/service/glance/{IMAGE}",
        key,
    ):
        assert store.identify(url).key == key
    assert store.plan_upload(uuid.UUID(IMAGE)).url == f"swift+https://keystone.example.com/v3/glance/{IMAGE}"
    with pytest.raises(LocationOutsideStore):
        store.validate_url(f"swift+http://keystone.example.com/v3/glance/{IMAGE}")


def test_an_auth_address_without_a_path_or_a_scheme_is_glances_https():
    store = SwiftStore("s", {**OPTIONS, "swift_store_auth_address": "keystone.example.com:5000"})
    assert store.identify(f"swift://keystone.example.com:5000/glance/{IMAGE}").key == (
        f"swift://keystone.example.com:5000/service/glance/{IMAGE}"
    )


def test_a_reference_store_writes_swift_config_urls(reference_store):
    target = reference_store.plan_upload(uuid.UUID(IMAGE))
    assert target.url == f"swift+config://ref1/glance/{IMAGE}"
    assert reference_store.identify(target.url).key == THE_KEY


@pytest.mark.parametrize(
    "url",
    [
        f"swift+config://same-account/glance/{IMAGE}",
        f"swift+http://{QUOTED}@{AUTH}/glance/{IMAGE}",
        f"swift+http://{AUTH}/glance/{IMAGE}",
        THE_KEY,
    ],
    ids=["a reference to the same account", "glance_store's credentials", "credential-free", "the key"],
)
def test_a_reference_store_keys_other_spellings_alike(reference_store, url):
    assert reference_store.identify(url).key == THE_KEY


@pytest.mark.parametrize(
    "reference",
    ["other-project", "other-keystone", "broken", "absent", "REF1"],
)
def test_a_reference_store_refuses_references_of_other_accounts(reference_store, reference):
    with pytest.raises(LocationOutsideStore) as refused:
        reference_store.validate_url(f"swift+config://{reference}/glance/{IMAGE}")
    assert reference not in str(refused.value)


def test_a_reference_store_refuses_credentials_of_another_reference(reference_store):
    with pytest.raises(LocationOutsideStore) as refused:
        reference_store.validate_url(f"swift+http://service%3Aother:other-key@{AUTH}/glance/{IMAGE}")
    assert "other-key" not in str(refused.value)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"swift_store_multi_tenant": "true"}, "swift_store_multi_tenant: locquota keeps images in one account"),
        ({"swift_store_multiple_containers_seed": "2"}, "swift_store_multiple_containers_seed"),
        ({"swift_store_auth_version": "2"}, "swift_store_auth_version"),
        ({"swift_store_user": "glance"}, "user must be project:user"),
        ({"swift_store_user": "a:b:c"}, "user must be project:user"),
        ({"swift_store_key": ""}, "swift_store_key: required"),
        ({"swift_store_auth_address": "ftp://keystone/v3"}, "auth address"),
        ({"swift_store_auth_address": "http://user:pw@keystone/v3"}, "auth address"),
        ({"swift_store_auth_address": "http://keystone/v3?x=1"}, "auth address"),
        ({"swift_store_container": "a/b"}, "swift_store_container"),
        ({"swift_store_container": ".."}, "swift_store_container"),
        ({"swift_store_endpoint_type": "public"}, "swift_store_endpoint_type"),
        ({"swift_store_retries": "5"}, "swift_store_retries"),
        ({"swift_store_timeout": "0"}, "swift_store_timeout"),
        ({"swift_store_large_object_chunk_size": "0"}, "swift_store_large_object_chunk_size"),
        ({"swift_store_config_file": "/nonexistent"}, "give credentials here or in swift_store_config_file"),
        ({"swift_store_contianer": "glance"}, "swift_store_contianer: unknown option"),
    ],
)
def test_bad_options_are_refused_at_start_without_the_key(options, complaint):
    with pytest.raises(ValueError, match=r"locquota\.store\.swift1") as refused:
        SwiftStore("swift1", {**OPTIONS, **options})
    assert complaint in str(refused.value)
    assert KEY not in str(refused.value)


def test_a_config_file_without_the_default_reference_is_refused(tmp_path):
    path = tmp_path / "refs.conf"
    path.write_text(f"[ref1]\nauth_address = http://{AUTH}\nuser = service:glance\nkey = {KEY}\n")
    with pytest.raises(ValueError, match="default_swift_reference") as refused:
        SwiftStore("s", {"swift_store_config_file": str(path), "default_swift_reference": "ref9"})
    assert KEY not in str(refused.value)


def test_an_unreadable_config_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="swift_store_config_file"):
        SwiftStore("s", {"swift_store_config_file": str(tmp_path / "missing.conf")})


def test_glance_options_without_meaning_here_are_accepted():
    SwiftStore("s", {**OPTIONS, "swift_store_ssl_compression": "false", "swift_buffer_on_upload": "false"})


def test_it_describes_itself_as_glance_does():
    store = SwiftStore("s", {**OPTIONS, "store_description": "Swift in region one"})
    assert (store.name, store.scheme, store.description) == ("s", "swift", "Swift in region one")
    assert set(store.schemes) == {"swift", "swift+http", "swift+https", "swift+config"}
    assert store.is_read_only is False
