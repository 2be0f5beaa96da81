"""Which URLs web-download may fetch: Glance's `[import_filtering_opts]` lists, plus locquota's address rule.

Glance's semantics: of an allowed and a disallowed list of one kind, only the allowed one is obeyed when both are
set. Unlike Glance, a URL without a port is checked as the scheme's default port, not let through. locquota's own
rule: a host that is (or resolves to) a non-public address is refused unless the operator lists that host in
allowed_hosts. This module only reads text; resolving names and checking the answers is the fetcher's job.
Refusal messages name the reason and never echo credentials.
"""

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import idna

from locquota.errors import WebDownloadRefused

MAX_URL_CHARS = 2048
SUPPORTED_SCHEMES = {"http": 80, "https": 443}  # what the fetcher speaks, whatever the lists say
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# WHATWG's "ends in a number": a host whose last label is numeric is an IPv4 address to every URL parser and to
# inet_aton (127.1, 0x7f.1, 2130706433, 0177.0.0.1); only the canonical dotted quad is accepted.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# Prefixes that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052 and RFC 8215).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def is_public_address(address: IPAddress) -> bool:
    """False for anything but a global unicast address, including IPv6 forms that embed a non-public IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and any(address in network for network in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def normalise_host(text: str) -> str:
    """A host in the form lists are compared in: lower case, IDNA A-labels, no trailing dot, IPs canonical.

    IPv6 comes without brackets; an IPv4 address in any spelling but the dotted quad is refused.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            raise WebDownloadRefused("The web-download URL's host is not a valid IPv6 address.")
    if ":" in text:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            address = None
        if address is None or address.scope_id is not None:  # a zone (fe80::1%eth0) names this host's interface
            raise WebDownloadRefused("The web-download URL's host is not a valid IPv6 address.")
        return str(address)
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise WebDownloadRefused("The web-download URL's host is not a valid international host name.") from None
    host = text.lower().removesuffix(".")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            if str(ipaddress.IPv4Address(host)) == host:
                return host
        except ValueError:
            pass
        raise WebDownloadRefused("The web-download URL's host is an IPv4 address in a non-standard spelling.")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise WebDownloadRefused("The web-download URL's host is not a valid host name.")
    return host


@dataclass(frozen=True, slots=True)
class WebTarget:
    """A checked URL, rebuilt from its parts so the fetcher sends exactly what was checked."""

    scheme: str
    host: str  # normalised (see normalise_host)
    port: int
    path_and_query: str
    is_listed: bool  # the host is in allowed_hosts: non-public addresses are allowed for it

    @property
    def origin(self) -> str:
        """scheme://host:port, the only part of a URL an error message may show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to request: no credentials, no fragment, the port explicit."""
        return self.origin + self.path_and_query


@dataclass(frozen=True, slots=True)
class UrlFilter:
    """Glance's import filtering options, normalised on construction (a bad entry is a ValueError)."""

    allowed_schemes: tuple[str, ...] = ("http", "https")
    disallowed_schemes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    disallowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = (80, 443)
    disallowed_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for field in ("allowed_hosts", "disallowed_hosts"):
            try:
                hosts = tuple(normalise_host(entry) for entry in getattr(self, field))
            except WebDownloadRefused as exc:
                raise ValueError(f"UrlFilter.{field}: {exc.message}") from None
            object.__setattr__(self, field, hosts)
        for field in ("allowed_schemes", "disallowed_schemes"):
            object.__setattr__(self, field, tuple(scheme.lower() for scheme in getattr(self, field)))
        for field in ("allowed_ports", "disallowed_ports"):
            object.__setattr__(self, field, tuple(int(port) for port in getattr(self, field)))

    def check(self, url: object) -> None:
        """Raise WebDownloadRefused unless url may be fetched, judging its text only (no name is resolved)."""
        self.vet(url)

    def is_listed(self, host: str) -> bool:
        """Whether the operator listed this normalised host in allowed_hosts."""
        return host in self.allowed_hosts

    def vet(self, url: object) -> WebTarget:
        """check(), returning the parts the fetcher needs."""
        parts = _split(url)
        scheme = parts.scheme.lower()
        if scheme not in SUPPORTED_SCHEMES or not _obeyed(scheme, self.allowed_schemes, self.disallowed_schemes):
            shown = f" {scheme!r}" if _SCHEME.fullmatch(scheme) else ""
            raise WebDownloadRefused(f"The web-download URL's scheme{shown} is not allowed.")
        host, port = _host_and_port(parts.netloc, SUPPORTED_SCHEMES[scheme])
        if not _obeyed(host, self.allowed_hosts, self.disallowed_hosts):
            raise WebDownloadRefused("The web-download URL's host is not allowed.")
        if not _obeyed(port, self.allowed_ports, self.disallowed_ports):
            raise WebDownloadRefused(f"The web-download URL's port {port} is not allowed.")
        is_listed = self.is_listed(host)
        if not is_listed and not _may_be_public(host):
            raise WebDownloadRefused("The web-download URL's host is not a public address.")
        path_and_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return WebTarget(scheme, host, port, path_and_query, is_listed)


def _obeyed(value: object, allowed: tuple[object, ...], disallowed: tuple[object, ...]) -> bool:
    # Glance: when both lists are set, only the allowed one is obeyed.
    return value in allowed if allowed else value not in disallowed


def _split(url: object) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise WebDownloadRefused("The web-download URL is missing or not a string.")
    if len(url) > MAX_URL_CHARS:
        raise WebDownloadRefused(f"The web-download URL is longer than {MAX_URL_CHARS} characters.")
    # isprintable() is False for C0/C1 controls and every separator but the ASCII space, refused on its own.
    # A backslash is a path separator to some parsers and not others: never let two of them disagree on the host.
    if not url.isprintable() or " " in url or "\\" in url:
        raise WebDownloadRefused("The web-download URL contains spaces, control characters or backslashes.")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise WebDownloadRefused("The web-download URL cannot be parsed.") from None
    if not parts.scheme:
        raise WebDownloadRefused("The web-download URL has no scheme.")
    return parts


def _host_and_port(netloc: str, default_port: int) -> tuple[str, int]:
    if "@" in netloc:
        raise WebDownloadRefused("The web-download URL carries credentials, which are not accepted.")
    if netloc.startswith("["):
        end = netloc.find("]")
        host_text, port_text = netloc[: end + 1], netloc[end + 1 :]
    else:
        host_text, colon, port_text = netloc.partition(":")
        port_text = colon + port_text
    if not host_text:
        raise WebDownloadRefused("The web-download URL has no host.")
    host = normalise_host(host_text)
    if not port_text:
        return host, default_port
    digits = port_text[1:]
    if not port_text.startswith(":") or not (digits.isascii() and digits.isdigit()) or not 0 < int(digits) < 65536:
        raise WebDownloadRefused("The web-download URL's port is not a valid port number.")
    return host, int(digits)


def _may_be_public(host: str) -> bool:
    """From the text alone: an IP literal must be public; localhost names (RFC 6761) never are."""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return is_public_address(ipaddress.ip_address(host))
    except ValueError:
        return True  # a name: the fetcher checks what it resolves to
