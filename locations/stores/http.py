"""The read-only `http` store: image data that lives on a web server locquota does not own (Glance's http store).

Locations are `http://` or `https://` URLs added by PATCH or imported; the data is read (GET) and sized (HEAD),
never written or deleted: deleting such a location only ends its charge, as Glance's scrubber leaves http data
alone. Because a tenant chooses the URL and the server fetches it, the hosts it may reach are the operator's
explicit list (`http_store_allowed_hosts`, a locquota option; `*` is any host), checked for the URL and for every
redirect; credentials in a URL are used for the request, never shown in an error or in the data's key.

Options: http_store_allowed_hosts (required: host or host:port, comma-separated), http_store_timeout (seconds,
default 10), http_store_max_redirects (default 5), and glance_store's https_insecure (default false),
https_ca_certificates_file and store_description.
"""

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import requests

from locations.stores.base import DataIdentity, StoredData, StoreError, StoreNotFoundError, UploadTarget
from locations.stores.options import StoreOptions
from locquota.errors import LocationOutsideStore

MAX_URL_CHARS = 4096
DEFAULT_PORTS = {"http": 80, "https": 443}
OPTIONS = (
    "http_store_allowed_hosts",
    "http_store_timeout",
    "http_store_max_redirects",
    "https_insecure",
    "https_ca_certificates_file",
)


class HttpStore:
    """Data on allowed web servers, read through HTTP; nothing is ever written or deleted there."""

    scheme = "http"
    schemes = ("http", "https")
    is_read_only = True

    def __init__(self, name: str, options: Mapping[str, str]) -> None:
        checked = StoreOptions(name, options, OPTIONS)
        self.name = name
        self.description = checked.description
        hosts = checked.words("http_store_allowed_hosts")
        if not hosts:
            raise ValueError(f"{checked.key('http_store_allowed_hosts')}: required (host[:port], ... or *)")
        self._any_host = "*" in hosts
        self._allowed = frozenset(host.lower() for host in hosts if host != "*")
        self._timeout = checked.number("http_store_timeout", 10.0, minimum=0.1)
        self._max_redirects = checked.integer("http_store_max_redirects", 5)
        insecure = checked.boolean("https_insecure", False)
        self._verify: bool | str = False if insecure else checked.text("https_ca_certificates_file", "") or True
        self._local = threading.local()

    # Names -------------------------------------------------------------------------------------------------------

    def validate_url(self, url: str) -> None:
        """Raise LocationOutsideStore unless url is an http(s) URL on an allowed host."""
        self._split(url)

    def identify(self, url: str) -> DataIdentity:
        """The URL without credentials, scheme and host lower-cased, the scheme's default port dropped."""
        parts = self._split(url)
        return DataIdentity(urlunsplit((parts.scheme.lower(), _host_port(parts), parts.path or "/", parts.query, "")))

    def _split(self, url: str) -> SplitResult:
        if len(url) > MAX_URL_CHARS or any(ord(character) < 0x21 for character in url):
            raise LocationOutsideStore("The location URL is not a usable http URL.")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError:
            raise LocationOutsideStore("The location URL is not a usable http URL.") from None
        if parts.scheme.lower() not in self.schemes or not parts.hostname or parts.fragment:
            raise LocationOutsideStore("The location URL is not a usable http URL.")
        if not self._any_host and {parts.hostname.lower(), _host_port(parts)}.isdisjoint(self._allowed):
            raise LocationOutsideStore("The location URL's host is not one this store may read from.")
        return parts

    # Reading -----------------------------------------------------------------------------------------------------

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the body in chunks of at most chunk_bytes."""
        response = self._request("GET", url)
        return _body(self.name, response, chunk_bytes)

    def get_size(self, url: str) -> int:
        """Content-Length of a HEAD; a server that does not say is an error, never a size of 0."""
        with closing(self._request("HEAD", url)) as response:
            length = response.headers.get("Content-Length", "")
        if not length.isdigit():
            raise StoreError(f"http store {self.name}: the server does not give the data's size")
        return int(length)

    def _request(self, method: str, url: str) -> requests.Response:
        """One request, following at most max_redirects redirects, each to an allowed host."""
        session = self._session()
        self._split(url)
        for _ in range(self._max_redirects + 1):
            try:
                response = session.request(
                    method, url, stream=True, allow_redirects=False, timeout=self._timeout, verify=self._verify
                )
            except requests.RequestException as exc:
                raise StoreError(f"http store {self.name}: {method} failed ({type(exc).__name__})") from None
            if response.is_redirect:
                response.close()
                url = urljoin(url, response.headers["Location"])
                try:
                    self._split(url)
                except LocationOutsideStore:
                    raise StoreError(f"http store {self.name}: redirected to a host it may not read from") from None
                continue
            if response.status_code in (404, 410):
                response.close()
                raise StoreNotFoundError(f"http store {self.name}: {method} answered {response.status_code}")
            if response.status_code != 200:
                response.close()
                raise StoreError(f"http store {self.name}: {method} answered {response.status_code}")
            return response
        raise StoreError(f"http store {self.name}: more than {self._max_redirects} redirects")

    def _session(self) -> requests.Session:
        """One session per thread (requests sessions are not thread-safe); proxies from the environment only."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = ManualRedirects()
        return session

    # What a read-only store does not do --------------------------------------------------------------------------

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """Never: uploads into a read-only store are refused (410) before they get here."""
        raise StoreError(f"http store {self.name}: read-only")

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = lambda: None) -> str:
        """Never, as plan_upload."""
        raise StoreError(f"http store {self.name}: read-only")

    def delete(self, url: str) -> None:
        """Nothing to do: the data belongs to the web server; only the location's charge ends."""

    def inventory(self) -> Iterator[StoredData]:
        """Nothing: a web server's data is not listed, and none of it is locquota's to clean up."""
        return iter(())


class ManualRedirects(requests.Session):
    """A session that never works redirects out itself: the caller checks and follows each one.

    requests reads a redirect's whole body to work out the next request, even with allow_redirects=False,
    so a redirect with an endless body would be buffered in memory (found by web-download's tests).
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        """None, always: the caller reads Location itself."""
        return None


def _host_port(parts: SplitResult) -> str:
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return host if port in (None, DEFAULT_PORTS.get(parts.scheme.lower())) else f"{host}:{port}"


def _body(name: str, response: requests.Response, chunk_bytes: int) -> Iterator[bytes]:
    with closing(response):
        try:
            yield from response.iter_content(chunk_bytes)
        except requests.RequestException as exc:
            raise StoreError(f"http store {name}: reading failed ({type(exc).__name__})") from None
