"""The web-download fetcher: stream an image from a URL a user gave, never reaching an address it must not.

Each hop (the URL, then every redirect, followed here and never by requests) is checked as text by the UrlFilter,
and its host resolved and every answer checked before the request. The connection then resolves again through the
same resolver, checks those answers before connecting and the socket's peer after: a name that re-binds to an
internal address between the first check and the connection is refused before a byte of the request is sent.
Errors name at most scheme://host:port, never a query string or credentials.
"""

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.connection import create_connection

from locations.services.image_import.web_source_filter import UrlFilter, WebTarget, is_public_address, normalise_host
from locations.stores.http import ManualRedirects
from locquota.errors import WebDownloadFailed, WebDownloadRefused

Resolver = Callable[[str, int], list[str]]
REDIRECTS = (301, 302, 303, 307, 308)
# Identity: the image is the bytes as served, and Content-Length and max_bytes count those bytes (no gzip bomb).
REQUEST_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "locquota-web-download"}
TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError)


def system_resolve(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for a TCP connection to host:port, in its order, once each."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(answer[4][0]) for answer in answers))


class AddressGuard:
    """Which addresses a host may be reached at: public ones, or any for a host the operator listed."""

    def __init__(self, url_filter: UrlFilter, resolve: Resolver) -> None:
        self._filter, self._resolve = url_filter, resolve

    def addresses(self, host: str, port: int) -> list[str]:
        """Resolve host and check every answer: one address that is not allowed refuses them all."""
        host = normalise_host(host)
        try:
            answers = [host] if _address(host) is not None else self._resolve(host, port)
        except (OSError, UnicodeError):
            raise WebDownloadFailed(f"The web server's name {host} could not be resolved.") from None
        if not answers:
            raise WebDownloadFailed(f"The web server's name {host} resolves to no address.")
        for answer in answers:
            self.check_peer(host, answer)
        return answers

    def check_peer(self, host: str, address: str) -> None:
        """Refuse an address (a resolver's answer, or a connected socket's peer) that host may not be reached at."""
        if self._filter.is_listed(normalise_host(host)):
            return
        parsed = _address(address)
        if parsed is None or not is_public_address(parsed):
            raise WebDownloadRefused(f"The web server {host} is at a non-public address, which is not allowed.")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class _GuardedConnect:
    """urllib3's connection, connecting only to addresses its guard allows (the pool hands the guard over)."""

    host: str
    port: int
    default_port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def __init__(self, *args: Any, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def _new_conn(self) -> socket.socket:
        port = self.port or self.default_port
        error: Exception = urllib3.exceptions.NewConnectionError(self, "no address")  # type: ignore[arg-type]
        for address in self._guard.addresses(self.host, port):
            try:
                sock = create_connection((address, port), self.timeout, self.source_address, self.socket_options)
            except TimeoutError:
                error = urllib3.exceptions.ConnectTimeoutError(self, f"Connection to {self.host} timed out.")
                continue
            except OSError as exc:
                error = urllib3.exceptions.NewConnectionError(self, f"Failed to connect: {exc}")  # type: ignore[arg-type]
                continue
            try:
                self._guard.check_peer(self.host, str(sock.getpeername()[0]))
            except WebDownloadRefused:
                sock.close()
                raise
            return sock
        raise error


class _GuardedHTTPConnection(_GuardedConnect, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnect, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedPoolManager(PoolManager):
    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        self._guard = guard

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        # After the pool key is made (the guard is no key field), so every connection of the pool gets the guard.
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.conn_kw["guard"] = self._guard
        return pool


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard  # before super().__init__, which builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """The hook requests documents for subclasses: our pool manager instead of urllib3's."""
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = _GuardedPoolManager(
            self._guard, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )


class WebSource:
    """An opened web-download: the size the server declared, and its body in chunks, max_bytes at most in all."""

    declared_size: int | None  # the final answer's Content-Length; None for a body sent without one

    def __init__(
        self,
        session: requests.Session,
        response: requests.Response,
        target: WebTarget,
        max_bytes: int,
        chunk_bytes: int,
    ) -> None:
        self._session, self._response, self._target = session, response, target
        self._max_bytes, self._chunk_bytes = max_bytes, chunk_bytes
        self.declared_size = _declared_size(response, target)
        if self.declared_size is not None and self.declared_size > max_bytes:
            self.close()
            raise WebDownloadFailed(
                f"The web server {target.origin} declares {self.declared_size} bytes, over the {max_bytes} allowed."
            )

    def chunks(self) -> Iterator[bytes]:
        """The body as served, in chunks of at most chunk_bytes; never read past max_bytes + 1. Closes at the end."""
        received, declared, origin = 0, self.declared_size, self._target.origin
        try:
            while data := self._response.raw.read(
                min(self._chunk_bytes, self._max_bytes + 1 - received), decode_content=False
            ):
                received += len(data)
                if received > self._max_bytes:
                    raise WebDownloadFailed(f"The data from {origin} is larger than {self._max_bytes} bytes.")
                if declared is not None and received > declared:
                    raise WebDownloadFailed(f"The data from {origin} is longer than its Content-Length {declared}.")
                yield data
        except (TimeoutError, urllib3.exceptions.ReadTimeoutError, requests.Timeout):
            raise WebDownloadFailed(f"{origin} stopped sending data for longer than the timeout.") from None
        except TRANSPORT_ERRORS as exc:
            if declared is not None and received < declared:  # urllib3's IncompleteRead, or the connection dropped
                raise WebDownloadFailed(
                    f"The data from {origin} ended after {received} of its {declared} bytes."
                ) from None
            raise WebDownloadFailed(f"Reading from {origin} failed after {received} bytes ({_kind(exc)}).") from None
        finally:
            self.close()
        if declared is not None and received != declared:
            raise WebDownloadFailed(f"The data from {origin} ended after {received} of its {declared} bytes.")

    def close(self) -> None:
        """Drop the connection; safe to call more than once."""
        self._response.close()
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def open_url(
    url: str,
    url_filter: UrlFilter,
    *,
    timeout_seconds: float,
    max_bytes: int,
    chunk_bytes: int,
    max_redirects: int = 5,
    resolve: Resolver = system_resolve,
) -> WebSource:
    """Check, connect, follow redirects: the final 2xx answer, its body unread. Close it (or read it to the end)."""
    target = url_filter.vet(url)
    guard = AddressGuard(url_filter, resolve)
    session = ManualRedirects()
    session.trust_env = False  # no proxy, .netrc or CA bundle from the environment
    adapter = _GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        for _hop in range(max_redirects + 1):
            guard.addresses(target.host, target.port)
            response = _get(session, target, timeout_seconds)
            if response.status_code not in REDIRECTS:
                break
            location = response.headers.get("Location", "")
            response.close()
            target = _redirect(url_filter, target, location)
        else:
            raise WebDownloadFailed(f"The web server {target.origin} redirected more than {max_redirects} times.")
        if not 200 <= response.status_code < 300:
            response.close()
            raise WebDownloadFailed(f"The web server {target.origin} answered {response.status_code}.")
    except BaseException:
        session.close()
        raise
    return WebSource(session, response, target, max_bytes, chunk_bytes)


def _get(session: requests.Session, target: WebTarget, timeout_seconds: float) -> requests.Response:
    try:
        return session.get(
            target.url,
            headers=REQUEST_HEADERS,
            stream=True,
            allow_redirects=False,
            timeout=(timeout_seconds, timeout_seconds),
        )
    except requests.Timeout:
        raise WebDownloadFailed(f"The web server {target.origin} did not answer in time.") from None
    except TRANSPORT_ERRORS as exc:
        raise WebDownloadFailed(f"Fetching from {target.origin} failed ({_kind(exc)}).") from None


def _redirect(url_filter: UrlFilter, target: WebTarget, location: str) -> WebTarget:
    if not location:
        raise WebDownloadFailed(f"The web server {target.origin} redirected without a Location.")
    with contextlib.suppress(UnicodeError):  # if not UTF-8, left as it is: the filter refuses what is not printable
        location = location.encode("latin-1").decode("utf-8")  # header text arrives as latin-1; URLs are UTF-8
    try:
        return url_filter.vet(urljoin(target.url, location))
    except (WebDownloadRefused, ValueError) as exc:
        reason = exc.message if isinstance(exc, WebDownloadRefused) else "it cannot be parsed."
        raise WebDownloadRefused(
            f"The web server {target.origin} redirected to a URL that is refused: {reason}"
        ) from None


def _declared_size(response: requests.Response, target: WebTarget) -> int | None:
    text = response.headers.get("Content-Length")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        response.close()
        raise WebDownloadFailed(f"The web server {target.origin} sent an invalid Content-Length.")
    return int(text)


def _kind(exc: BaseException) -> str:
    """The error's class name: what went wrong, without the URL its message may carry."""
    return type(exc).__name__
