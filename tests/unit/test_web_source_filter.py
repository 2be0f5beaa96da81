"""The web-download URL filter, on text alone: Glance's import filtering lists and locquota's address rule."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from locations.services.image_import.web_source_filter import UrlFilter, WebTarget
from locquota.errors import WebDownloadRefused

DEFAULT = UrlFilter()
LOOPBACK_8080 = UrlFilter(allowed_hosts=("127.0.0.1",), allowed_ports=(8080,))

PUBLIC = "not a public address"
SPELLING = "non-standard spelling"
SCHEME = "scheme"
NO_SCHEME = "no scheme"
NO_HOST = "no host"
CREDENTIALS = "credentials"
PORT = "port"
HOST_LIST = "host is not allowed"
BAD_HOST = "not a valid"
TEXT = "spaces, control characters or backslashes"

REFUSED = [
    # localhost, in the spellings a resolver maps to loopback (RFC 6761: every *.localhost name)
    ("http://localhost/image", PUBLIC),
    ("http://LOCALHOST/image", PUBLIC),
    ("http://localhost./image", PUBLIC),
    ("http://images.localhost/image", PUBLIC),
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/image", PUBLIC),  # full-width, IDNA maps it
    # 127.0.0.1, canonical and in every inet_aton spelling
    ("http://127.0.0.1/image", PUBLIC),
    ("http://127.0.0.1./image", PUBLIC),
    ("http://127.0.0.2/image", PUBLIC),
    ("http://2130706433/image", SPELLING),
    ("http://017700000001/image", SPELLING),
    ("http://0x7f000001/image", SPELLING),
    ("http://0x7f.1/image", SPELLING),
    ("http://0X7F.0.0.1/image", SPELLING),
    ("http://127.1/image", SPELLING),
    ("http://0177.0.0.1/image", SPELLING),
    ("http://127.0.0.01/image", SPELLING),
    ("http://127.000.000.001/image", SPELLING),
    ("http://0/image", SPELLING),
    ("http://1.2.3.4.5/image", SPELLING),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/image", PUBLIC),  # full-width digits
    ("http://127\u30020\u30020\u30021/image", PUBLIC),  # ideographic full stops
    # IPv6 loopback and IPv6 forms that carry an IPv4 address inside
    ("http://[::1]/image", PUBLIC),
    ("http://[0:0:0:0:0:0:0:1]/image", PUBLIC),
    ("http://[::ffff:127.0.0.1]/image", PUBLIC),
    ("http://[::ffff:7f00:1]/image", PUBLIC),
    ("http://[::127.0.0.1]/image", PUBLIC),  # IPv4-compatible
    ("http://[2002:7f00:1::]/image", PUBLIC),  # 6to4 of 127.0.0.1
    ("http://[2002:a00:1::]/image", PUBLIC),  # 6to4 of 10.0.0.1
    ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/image", PUBLIC),  # Teredo
    ("http://[64:ff9b::a9fe:a9fe]/image", PUBLIC),  # NAT64 of 169.254.169.254
    ("http://[::1/image", "cannot be parsed"),
    ("http://[1.2.3.4]/image", "cannot be parsed"),
    ("http://[fe80::1%25eth0]/image", BAD_HOST),
    # link-local (the cloud metadata service), private, shared, unspecified, multicast, reserved
    ("http://169.254.169.254/latest/meta-data/", PUBLIC),
    ("http://[fe80::1]/image", PUBLIC),
    ("http://10.0.0.1/image", PUBLIC),
    ("http://10.255.255.255/image", PUBLIC),
    ("http://172.16.0.1/image", PUBLIC),
    ("http://172.31.255.254/image", PUBLIC),
    ("http://192.168.1.1/image", PUBLIC),
    ("http://100.64.0.1/image", PUBLIC),
    ("http://0.0.0.0/image", PUBLIC),
    ("http://[::]/image", PUBLIC),
    ("http://[fd00::1]/image", PUBLIC),
    ("http://[fc00::1]/image", PUBLIC),
    ("http://[fec0::1]/image", PUBLIC),
    ("http://224.0.0.1/image", PUBLIC),
    ("http://[ff02::1]/image", PUBLIC),
    ("http://240.0.0.1/image", PUBLIC),
    ("http://255.255.255.255/image", PUBLIC),
    ("http://198.18.0.1/image", PUBLIC),
    # schemes this method does not fetch
    ("file:///etc/passwd", SCHEME),
    ("FILE:///etc/passwd", SCHEME),
    ("ftp://images.example.com/image", SCHEME),
    ("gopher://images.example.com:70/_GET", SCHEME),
    ("dict://images.example.com:11211/stat", SCHEME),
    ("data:text/plain;base64,aGVsbG8=", SCHEME),
    ("javascript:alert(1)", SCHEME),
    ("jar:http://images.example.com/a.jar!/image", SCHEME),
    # no scheme, no host
    ("images.example.com/image", NO_SCHEME),
    ("//images.example.com/image", NO_SCHEME),
    ("/etc/passwd", NO_SCHEME),
    ("http:///image", NO_HOST),
    ("http:images.example.com/image", NO_HOST),
    ("http://:80/image", NO_HOST),
    # credentials, in every place a parser might find them
    ("http://user:secret@images.example.com/image", CREDENTIALS),
    ("http://user@images.example.com/image", CREDENTIALS),
    ("http://:@images.example.com/image", CREDENTIALS),
    ("http://images.example.com@127.0.0.1/image", CREDENTIALS),
    ("http://images.example.com\\@127.0.0.1/image", TEXT),
    # ports
    ("http://images.example.com:8080/image", PORT),
    ("https://images.example.com:22/image", PORT),
    ("http://images.example.com:0/image", PORT),
    ("http://images.example.com:65536/image", PORT),
    ("http://images.example.com:-1/image", PORT),
    ("http://images.example.com:80a/image", PORT),
    ("http://images.example.com:+80/image", PORT),
    ("http://images.example.com:/image", PORT),
    ("http://images.example.com:\uff18\uff10/image", PORT),  # full-width digits
    # length, whitespace, control and invisible characters
    ("http://images.example.com/" + "a" * 2048, "longer than 2048"),
    (" http://images.example.com/image", TEXT),
    ("http://images.example.com/image ", TEXT),
    ("http://images.example.com/an image", TEXT),
    ("http://images.example.com/\timage", TEXT),
    ("\nhttp://images.example.com/image", TEXT),
    ("http://images.example.com/\x00", TEXT),
    ("http://images.example.com/\x7f", TEXT),
    ("http://images.example.com/\x85", TEXT),
    ("http://images.example.com/\u2028", TEXT),
    ("http://images.example.com/\u00a0", TEXT),
    ("http://exa\u200bmple.com/image", TEXT),
    # host names that are not names
    ("http://a..b/image", BAD_HOST),
    ("http://-images.example.com/image", BAD_HOST),
    ("http://images%2eexample.com/image", BAD_HOST),
    ("http://\u2603.example/image", BAD_HOST),  # a snowman: IDNA 2008 does not allow it
    ("http://" + "a" * 64 + ".example/image", BAD_HOST),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_check_refuses_hostile_url(url, reason):
    with pytest.raises(WebDownloadRefused) as refused:
        DEFAULT.check(url)
    assert reason in refused.value.message
    assert refused.value.status == 400


@pytest.mark.parametrize("url", [None, "", 42, b"http://images.example.com/image", ["http://images.example.com/"]])
def test_check_refuses_what_is_not_a_url_string(url):
    with pytest.raises(WebDownloadRefused, match="missing or not a string"):
        DEFAULT.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@images.example.com/image",
        "http://secret@127.0.0.1/image",
        "https://user:secret@[::1]:8443/image?token=secret",
    ],
)
def test_refusal_never_echoes_credentials(url):
    with pytest.raises(WebDownloadRefused) as refused:
        DEFAULT.check(url)
    assert "secret" not in refused.value.message
    assert "user" not in refused.value.message


ACCEPTED = [
    "https://images.example.com/ubuntu.img",
    "http://images.example.com/image?version=2&arch=amd64",
    "http://images.example.com/image#fragment",
    "HTTPS://IMAGES.EXAMPLE.COM:443/image",
    "http://images.example.com:443/image",
    "https://images.example.com./image",
    "http://8.8.8.8/image",
    "http://[2606:4700:4700::1111]/image",
    "http://b\u00fccher.example/image",
    "http://xn--bcher-kva.example/image",
    "http://images.example.com/\u00e9t\u00e9.img",
    "http://metadata.internal.example/image",  # a name: what it resolves to is the fetcher's check
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_check_accepts_public_url(url):
    DEFAULT.check(url)


@pytest.mark.parametrize(
    ("url_filter", "url"),
    [
        (LOOPBACK_8080, "http://127.0.0.1:8080/image"),
        (LOOPBACK_8080, "http://127.0.0.1.:8080/image"),
        (UrlFilter(allowed_hosts=("LOCALHOST.",)), "http://localhost/image"),
        (UrlFilter(allowed_hosts=("[::1]",)), "http://[::1]/image"),
        (UrlFilter(allowed_hosts=("::1",)), "http://[0::1]/image"),
        (UrlFilter(allowed_hosts=("169.254.169.254",)), "http://169.254.169.254/image"),
        (UrlFilter(allowed_hosts=("b\u00fccher.example",)), "http://xn--bcher-kva.example/image"),
    ],
)
def test_listed_host_may_be_non_public(url_filter, url):
    url_filter.check(url)


@pytest.mark.parametrize(
    ("url_filter", "url", "reason"),
    [
        # only listed hosts, however they resolve
        (LOOPBACK_8080, "http://localhost:8080/image", HOST_LIST),
        (LOOPBACK_8080, "http://images.example.com:8080/image", HOST_LIST),
        (LOOPBACK_8080, "http://[::ffff:127.0.0.1]:8080/image", HOST_LIST),
        (LOOPBACK_8080, "http://127.0.0.1/image", PORT),  # no port: the scheme's 80, not listed
        (LOOPBACK_8080, "http://2130706433:8080/image", SPELLING),
        # a disallowed list is obeyed while no allowed list of its kind is set
        (UrlFilter(disallowed_hosts=("evil.example.com",)), "http://EVIL.example.com./image", HOST_LIST),
        (UrlFilter(allowed_ports=(), disallowed_ports=(80,)), "http://images.example.com/image", PORT),
        (UrlFilter(allowed_schemes=(), disallowed_schemes=("HTTP",)), "http://images.example.com/image", SCHEME),
        # an allowed scheme this fetcher does not speak
        (UrlFilter(allowed_schemes=("http", "https", "ftp")), "ftp://images.example.com/image", SCHEME),
    ],
)
def test_filter_lists_refuse(url_filter, url, reason):
    with pytest.raises(WebDownloadRefused) as refused:
        url_filter.check(url)
    assert reason in refused.value.message


@pytest.mark.parametrize(
    ("url_filter", "url"),
    [
        (
            UrlFilter(allowed_hosts=("images.example.com",), disallowed_hosts=("images.example.com",)),
            "http://images.example.com/",
        ),
        (UrlFilter(allowed_ports=(8080,), disallowed_ports=(8080,)), "http://images.example.com:8080/"),
        (UrlFilter(allowed_schemes=("https",), disallowed_schemes=("https",)), "https://images.example.com/"),
        (UrlFilter(allowed_ports=(), disallowed_ports=(80,)), "http://images.example.com:8080/"),
    ],
)
def test_allowed_list_wins_over_disallowed_list(url_filter, url):
    url_filter.check(url)


def test_ports_from_settings_text_are_numbers():
    UrlFilter(allowed_ports=("8080",)).check("http://images.example.com:8080/image")  # type: ignore[arg-type]


def test_both_host_lists_set_refuse_hosts_not_allowed():
    url_filter = UrlFilter(allowed_hosts=("images.example.com",), disallowed_hosts=("evil.example.com",))
    with pytest.raises(WebDownloadRefused, match="host is not allowed"):
        url_filter.check("http://other.example.com/image")


def test_vet_rebuilds_the_url_without_credentials_or_fragment():
    target = LOOPBACK_8080.vet("HTTP://127.0.0.1:8080/a/b?c=d#e")
    assert target == WebTarget("http", "127.0.0.1", 8080, "/a/b?c=d", is_listed=True)
    assert target.url == "http://127.0.0.1:8080/a/b?c=d"


def test_vet_gives_ipv6_origin_in_brackets_and_the_default_port():
    target = DEFAULT.vet("https://[2606:4700:4700:0::1111]")
    assert target.origin == "https://[2606:4700:4700::1111]:443"
    assert target.url == "https://[2606:4700:4700::1111]:443/"
    assert not target.is_listed


@pytest.mark.parametrize("entry", ["0x7f.1", "a..b", "[::1", "fe80::1%eth0", "user@host"])
def test_filter_with_a_bad_host_entry_is_a_configuration_error(entry):
    with pytest.raises(ValueError, match="allowed_hosts"):
        UrlFilter(allowed_hosts=(entry,))


@given(st.text(max_size=300))
def test_check_of_any_text_refuses_or_accepts(text):
    with contextlib.suppress(WebDownloadRefused):  # anything else escaping fails the test
        DEFAULT.check(text)


@given(st.sampled_from(["http://", "https://", "http://[", "http://a@", "http://0x"]), st.text(max_size=200))
def test_check_of_any_url_like_text_refuses_or_accepts(prefix, rest):
    with contextlib.suppress(WebDownloadRefused):  # anything else escaping fails the test
        DEFAULT.check(prefix + rest)
