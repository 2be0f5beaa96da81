"""The web-download fetcher against real HTTP servers on 127.0.0.1: bytes, redirects, limits, refusals.

"Refused before connecting" is asserted with the second server's accepted-connection count, taken after a
request of the test's own (quiet_point): connections are accepted in order, so an earlier one would be counted.
"""

import socket
import zlib
from collections.abc import Callable
from urllib.parse import quote

import pytest

from locations.services.image_import.web_source import AddressGuard, WebSource, open_url
from locations.services.image_import.web_source_filter import UrlFilter
from locquota.errors import WebDownloadFailed, WebDownloadRefused
from tests.web_source_servers import DATA, ENDLESS_CAP, GZIPPED, WebSourceServer, serve_fixture  # noqa: F401  (the `serve` fixture)

LIMITS = {"timeout_seconds": 5.0, "max_bytes": 1 << 20, "chunk_bytes": 8192}


def loopback(*servers: WebSourceServer, hosts: tuple[str, ...] = ("127.0.0.1",)) -> UrlFilter:
    """The filter an operator would write to let web-download read these test servers."""
    return UrlFilter(allowed_hosts=hosts, allowed_ports=tuple(server.server_port for server in servers))


def fetch(url: str, url_filter: UrlFilter, **options: object) -> tuple[int | None, list[bytes]]:
    with open_url(url, url_filter, **{**LIMITS, **options}) as source:
        return source.declared_size, list(source.chunks())


def drain(source: WebSource, into: list[bytes]) -> None:
    """Read every chunk into a list the test keeps, so what came before an error can be asserted."""
    into.extend(source.chunks())


def resolver(answers: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A name server for names that exist only in this test (no /etc/hosts, no network)."""
    return lambda host, _port: answers[host]


def redirect_to(server: WebSourceServer, location: str) -> str:
    return f"{server.base}/to?{quote(location, safe='')}"


@pytest.fixture
def web(serve):
    return serve()


@pytest.fixture
def other(serve):
    return serve()


# What a fetch gives ----------------------------------------------------------------------------------------------


def test_fetch_yields_exactly_the_served_bytes(web):
    declared, chunks = fetch(f"{web.base}/image", loopback(web))
    assert declared == len(DATA)
    assert b"".join(chunks) == DATA
    assert max(len(chunk) for chunk in chunks) <= LIMITS["chunk_bytes"]


def test_fetch_of_a_chunked_body_declares_no_size(web):
    declared, chunks = fetch(f"{web.base}/chunked", loopback(web))
    assert declared is None
    assert b"".join(chunks) == DATA


def test_fetch_keeps_compressed_bytes_as_served(web):
    declared, chunks = fetch(f"{web.base}/gzip", loopback(web))
    assert declared == len(GZIPPED)
    assert b"".join(chunks) == GZIPPED
    assert zlib.decompress(b"".join(chunks), wbits=31) == DATA


def test_fetch_follows_redirects_up_to_the_limit(web):
    _declared, chunks = fetch(f"{web.base}/hop/2", loopback(web), max_redirects=3)  # /hop/n: n + 1 redirects
    assert b"".join(chunks) == DATA
    assert [line.split()[1] for line in web.requests_seen] == ["/hop/2", "/hop/1", "/hop/0", "/image"]


def test_a_redirect_body_is_never_read(web):
    """requests' Session reads a redirect's whole body even with allow_redirects=False; the fetcher must not."""
    _declared, chunks = fetch(f"{web.base}/redirect-endless", loopback(web))
    assert b"".join(chunks) == DATA
    assert web.endless_done.wait(timeout=30)
    assert web.endless_sent < ENDLESS_CAP


def test_fetch_follows_a_redirect_to_another_listed_host_and_port(web, other):
    url_filter = loopback(web, other, hosts=("127.0.0.1", "mirror.example.test"))
    answers = resolver({"mirror.example.test": ["127.0.0.1"]})
    url = redirect_to(web, f"http://mirror.example.test:{other.server_port}/image")
    with open_url(url, url_filter, resolve=answers, **LIMITS) as source:
        assert b"".join(source.chunks()) == DATA
    assert [line.split()[1] for line in other.requests_seen] == ["/image"]


def test_fetch_connects_to_the_address_the_resolver_checked(web):
    """The name exists only for the injected resolver: the connection used that answer, not the system's."""
    url_filter = UrlFilter(allowed_hosts=("images.example.test",), allowed_ports=(web.server_port,))
    answers = resolver({"images.example.test": ["127.0.0.1"]})
    with open_url(f"http://images.example.test:{web.server_port}/image", url_filter, resolve=answers, **LIMITS) as s:
        assert b"".join(s.chunks()) == DATA


def test_fetch_ignores_proxies_from_the_environment(web, monkeypatch):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    _declared, chunks = fetch(f"{web.base}/image", loopback(web))
    assert b"".join(chunks) == DATA


# Refused before any connection -----------------------------------------------------------------------------------


def test_redirect_to_a_port_not_allowed_is_refused_before_connecting(web, other):
    url = redirect_to(web, f"http://127.0.0.1:{other.server_port}/image")
    with pytest.raises(WebDownloadRefused, match=f"port {other.server_port} is not allowed"):
        open_url(url, loopback(web), **LIMITS)
    assert other.quiet_point() == 0


def test_redirect_to_localhost_is_refused_before_connecting(web, other):
    url = redirect_to(web, f"http://localhost:{other.server_port}/image")
    with pytest.raises(WebDownloadRefused, match=r"redirected to a URL that is refused: .*host is not allowed"):
        open_url(url, loopback(web, other), **LIMITS)
    assert other.quiet_point() == 0


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
    ],
)
def test_redirect_to_the_metadata_service_is_refused(web, location):
    url_filter = UrlFilter(allowed_hosts=("127.0.0.1",), allowed_ports=(80, web.server_port))
    with pytest.raises(WebDownloadRefused, match="redirected to a URL that is refused"):
        open_url(redirect_to(web, location), url_filter, **LIMITS)


def test_localhost_is_refused_when_only_its_address_is_listed(web):
    with pytest.raises(WebDownloadRefused, match="host is not allowed"):
        open_url(f"http://localhost:{web.server_port}/image", loopback(web), **LIMITS)
    assert web.quiet_point() == 0


@pytest.mark.parametrize(
    "answers",
    [["127.0.0.1"], ["10.0.0.5"], ["93.184.215.14", "127.0.0.1"], ["::ffff:127.0.0.1"], ["169.254.169.254"], ["::1"]],
)
def test_unlisted_name_resolving_to_a_non_public_address_is_refused_before_connecting(web, answers):
    url_filter = UrlFilter(allowed_ports=(web.server_port,))  # no host list: any public host
    with pytest.raises(WebDownloadRefused, match=r"images\.example\.test is at a non-public address"):
        open_url(
            f"http://images.example.test:{web.server_port}/image",
            url_filter,
            resolve=resolver({"images.example.test": answers}),
            **LIMITS,
        )
    assert web.quiet_point() == 0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_dns_rebinding_between_check_and_connect_is_refused(web, scheme):
    """The first answer (the check) is public; the connection's own lookup gets 127.0.0.1 and refuses it."""
    calls: list[str] = []

    def rebinding(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["93.184.215.14"] if len(calls) == 1 else ["127.0.0.1"]

    url_filter = UrlFilter(allowed_ports=(web.server_port,))
    with pytest.raises(WebDownloadRefused, match="non-public address"):
        open_url(f"{scheme}://rebind.example.test:{web.server_port}/image", url_filter, resolve=rebinding, **LIMITS)
    assert calls == ["rebind.example.test", "rebind.example.test"]
    assert web.quiet_point() == 0


@pytest.mark.parametrize(
    ("host", "address", "is_allowed"),
    [
        ("images.example.com", "127.0.0.1", False),
        ("images.example.com", "::ffff:10.0.0.1", False),
        ("images.example.com", "fe80::1%lo", False),
        ("images.example.com", "not an address", False),
        ("images.example.com", "93.184.215.14", True),  # public (host lists are check()'s business)
        ("mirror.example.test", "127.0.0.1", True),  # listed: the operator allowed it wherever it is
    ],
)
def test_peer_check(host, address, is_allowed):
    guard = AddressGuard(UrlFilter(allowed_hosts=("mirror.example.test",)), resolver({}))
    if is_allowed:
        guard.check_peer(host, address)
    else:
        with pytest.raises(WebDownloadRefused):
            guard.check_peer(host, address)


# Failures of the web server --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 500, 304, 403])
def test_an_answer_that_is_not_2xx_fails_naming_the_status(web, status):
    with pytest.raises(WebDownloadFailed, match=f"answered {status}"):
        open_url(f"{web.base}/status/{status}?token=secret", loopback(web), **LIMITS)


def test_failure_messages_show_no_query_string(web):
    with pytest.raises(WebDownloadFailed) as failed:
        open_url(f"{web.base}/status/404?token=secret", loopback(web), **LIMITS)
    assert failed.value.message == f"The web server http://127.0.0.1:{web.server_port} answered 404."
    assert "secret" not in failed.value.message
    assert failed.value.status == 502


def test_endless_redirects_fail(web):
    with pytest.raises(WebDownloadFailed, match="redirected more than 3 times"):
        open_url(f"{web.base}/loop", loopback(web), max_redirects=3, **LIMITS)
    assert len(web.requests_seen) == 4


def test_redirect_without_location_fails(web):
    with pytest.raises(WebDownloadFailed, match="without a Location"):
        open_url(f"{web.base}/to", loopback(web), **LIMITS)


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://[::1",
        "http://user:secret@127.0.0.1/image",
        "gopher://127.0.0.1:11211/_stats",
        "//localhost/image",
        "http://0x7f.1/image",
        "/" + "a" * 3000,
    ],
)
def test_hostile_redirect_is_refused(web, location):
    with pytest.raises(WebDownloadRefused) as refused:
        open_url(redirect_to(web, location), loopback(web), **LIMITS)
    assert "secret" not in refused.value.message


def test_a_closed_port_fails(web):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    url_filter = UrlFilter(allowed_hosts=("127.0.0.1",), allowed_ports=(port,))
    with pytest.raises(WebDownloadFailed, match=r"Fetching from http://127\.0\.0\.1:\d+ failed \(ConnectionError\)"):
        open_url(f"http://127.0.0.1:{port}/image", url_filter, **LIMITS)


def test_https_to_a_server_that_speaks_no_tls_fails(web):
    url = f"https://127.0.0.1:{web.server_port}/image"
    with pytest.raises(WebDownloadFailed, match=r"failed \(SSLError\)"):
        open_url(url, loopback(web), **LIMITS)


@pytest.mark.parametrize("answer", [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), []])
def test_a_name_that_does_not_resolve_fails(web, answer):
    def resolve(_host: str, _port: int) -> list[str]:
        if isinstance(answer, Exception):
            raise answer
        return answer

    url_filter = UrlFilter(allowed_ports=(web.server_port,))
    with pytest.raises(WebDownloadFailed, match=r"images\.example\.test"):
        open_url(f"http://images.example.test:{web.server_port}/", url_filter, resolve=resolve, **LIMITS)


def test_a_server_that_does_not_answer_times_out(web):
    with pytest.raises(WebDownloadFailed, match="did not answer in time"):
        open_url(f"{web.base}/stall-headers", loopback(web), **{**LIMITS, "timeout_seconds": 0.2})


def test_a_server_that_stops_sending_times_out(web):
    source = open_url(f"{web.base}/stall-body", loopback(web), **{**LIMITS, "timeout_seconds": 0.2})
    received: list[bytes] = []
    with pytest.raises(WebDownloadFailed, match="stopped sending data"):
        drain(source, received)
    assert DATA.startswith(b"".join(received))


# Sizes -----------------------------------------------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_fails(web):
    source = open_url(f"{web.base}/short", loopback(web), **LIMITS)
    with pytest.raises(WebDownloadFailed, match=f"ended after {len(DATA) // 2} of its {len(DATA)} bytes"):
        list(source.chunks())


def test_a_chunked_body_longer_than_its_content_length_fails(web):
    source = open_url(f"{web.base}/chunked-longer", loopback(web), **LIMITS)
    assert source.declared_size == 100
    with pytest.raises(WebDownloadFailed, match="longer than its Content-Length 100"):
        list(source.chunks())


def test_bytes_past_the_content_length_never_reach_the_image(web):
    """HTTP/1.1 framing ends the body at its Content-Length: what follows is not read, and the connection closes."""
    declared, chunks = fetch(f"{web.base}/trailing", loopback(web))
    assert declared == 100
    assert b"".join(chunks) == DATA[:100]


def test_conflicting_content_lengths_fail(web):
    with pytest.raises(WebDownloadFailed, match="failed"):
        open_url(f"{web.base}/bad-length", loopback(web), **LIMITS)


def test_a_body_of_exactly_max_bytes_is_read(web):
    _declared, chunks = fetch(f"{web.base}/chunked", loopback(web), max_bytes=len(DATA))
    assert b"".join(chunks) == DATA


def test_a_declared_size_over_max_bytes_fails_before_reading(web):
    with pytest.raises(WebDownloadFailed, match=f"declares {len(DATA)} bytes, over the {len(DATA) - 1} allowed"):
        open_url(f"{web.base}/image", loopback(web), **{**LIMITS, "max_bytes": len(DATA) - 1})


def test_a_huge_declared_size_fails_before_reading(web):
    with pytest.raises(WebDownloadFailed, match="declares 1000000000000 bytes"):
        open_url(f"{web.base}/huge-declared", loopback(web), **LIMITS)


def test_an_undeclared_body_is_cut_while_streaming_at_max_bytes(web):
    max_bytes = 300_000
    source = open_url(f"{web.base}/endless", loopback(web), **{**LIMITS, "max_bytes": max_bytes})
    assert source.declared_size is None
    received: list[bytes] = []
    with pytest.raises(WebDownloadFailed, match=f"larger than {max_bytes} bytes"):
        drain(source, received)
    assert max(len(chunk) for chunk in received) <= LIMITS["chunk_bytes"]
    assert sum(len(chunk) for chunk in received) == max_bytes - max_bytes % LIMITS["chunk_bytes"]
    assert web.endless_done.wait(timeout=30)
    assert web.endless_sent < ENDLESS_CAP  # the client went away: it read no further than max_bytes + 1


def test_web_source_is_a_context_manager_that_closes(web):
    with open_url(f"{web.base}/image", loopback(web), **LIMITS) as source:
        assert isinstance(source, WebSource)
    source.close()  # a second close is harmless
