"""The swift store's names: which URLs are its locations, the URLs it writes, and the data key of each.

Apart from the I/O of locations/stores/swift.py because naming needs no client and no network: the URL parser,
the glance_store reference file and the auth address it rests on are read and tested on their own.
"""

import configparser
import hmac
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import quote, unquote

from locations.stores.base import UploadTarget
from locations.stores.options import StoreOptions
from locquota.errors import LocationOutsideStore

MAX_URL_CHARS = 4096
DEFAULT_PORTS = {"http": 80, "https": 443}
SCHEME_PROTOCOLS = {"swift": "https", "swift+https": "https", "swift+http": "http"}
CONFIG_SCHEME = "swift+config"
KEY_SCHEME = "swift"
URL_TEXT = re.compile(r"[!-~]+")  # printable ASCII without spaces: no NUL, no control or non-ASCII character
PLAIN_NAME = re.compile(r"[A-Za-z0-9._~-]{1,256}")  # a container or reference name, the same in any spelling
HOST = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
PORT = re.compile(r"[0-9]{1,5}")
IMAGE_ID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # Glance's object names
SCRATCH = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[0-9a-f]{32}\.partial"
FINAL_NAME, SCRATCH_NAME = re.compile(IMAGE_ID), re.compile(SCRATCH)
SEGMENT_NAME = re.compile(rf"({SCRATCH})/[0-9]{{8}}")
DOMAIN_OPTIONS = ("user_domain_id", "user_domain_name", "project_domain_id", "project_domain_name")
CREDENTIAL_OPTIONS = ("swift_store_auth_address", "swift_store_user", "swift_store_key")


def _outside(reason: str = "is not a location of a configured Swift store") -> LocationOutsideStore:
    return LocationOutsideStore(f"The location URL {reason}.")


def _host_port(netloc: str, protocol: str) -> tuple[str, int] | None:
    """(host, port) of `host[:port]` (an IPv6 address in brackets), the protocol's port when none is given."""
    host, port_text = netloc, ""
    if (colon := netloc.rfind(":")) > netloc.rfind("]"):
        host, port_text = netloc[:colon], netloc[colon + 1 :]
        if not PORT.fullmatch(port_text):
            return None
    host = host.lower()
    port = int(port_text) if port_text else DEFAULT_PORTS[protocol]
    return (host, port) if HOST.fullmatch(host) and 0 < port < 65536 else None


@dataclass(frozen=True, slots=True)
class AuthAddress:
    """Where Keystone listens: protocol, host, port and path segments, as every spelling of it compares."""

    protocol: str
    host: str
    port: int
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, address: str) -> Self | None:
        """A Glance auth address (no scheme means https, as in glance_store); None if it is not plainly one."""
        scheme, has_scheme, rest = address.partition("://")
        protocol, rest = (scheme.lower(), rest) if has_scheme else ("https", address)
        if protocol not in DEFAULT_PORTS or not URL_TEXT.fullmatch(address) or any(c in rest for c in "?#@\\"):
            return None
        netloc, _, path = rest.partition("/")
        segments = tuple(path.strip("/").split("/")) if path.strip("/") else ()
        location = _host_port(netloc, protocol)
        if location is None or "" in segments:
            return None
        return cls(protocol, *location, segments)

    @property
    def netloc(self) -> str:
        """host[:port], the port only when it is not the protocol's own."""
        return self.host if self.port == DEFAULT_PORTS[self.protocol] else f"{self.host}:{self.port}"

    @property
    def path(self) -> str:
        """The path, "" or "/v3"."""
        return "".join(f"/{segment}" for segment in self.segments)

    @property
    def url(self) -> str:
        """The address Keystone's client is given."""
        return f"{self.protocol}://{self.netloc}{self.path}"


@dataclass(frozen=True, slots=True)
class Reference:
    """One glance_store swift reference: where to log in and as whom (credentials in a section are one too)."""

    address: AuthAddress
    user: str  # "project:user", as Glance writes it
    key: str = field(repr=False)
    domains: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, values: Mapping[str, str | None], where: str) -> Self:
        """A reference from its keys (a config file section, or the store's own options)."""
        if values.get("application_credential_id") or values.get("application_credential_secret"):
            raise ValueError(f"{where}: application credentials are not supported")
        address = AuthAddress.parse(values.get("auth_address") or "")
        if address is None:
            raise ValueError(f"{where}: the auth address must be http(s)://host[:port][/path]")
        user, key = values.get("user") or "", values.get("key") or ""
        project, _, username = user.partition(":")
        if not project or not username or ":" in username or not key:
            raise ValueError(f"{where}: user must be project:user, with its key")
        if (values.get("auth_version") or "3") != "3":
            raise ValueError(f"{where}: only Keystone v3 (auth_version 3) is supported")
        domains = {option: value for option in DOMAIN_OPTIONS if (value := values.get(option))}
        for kind in ("user", "project"):  # glance_store's default: the domain of id `default`
            if f"{kind}_domain_id" not in domains and f"{kind}_domain_name" not in domains:
                domains[f"{kind}_domain_id"] = "default"
        return cls(address, user, key, tuple(sorted(domains.items())))

    @property
    def project(self) -> str:
        """The Keystone project (Glance's "tenant") whose account holds the data."""
        return self.user.partition(":")[0]

    @property
    def username(self) -> str:
        """The Keystone user."""
        return self.user.partition(":")[2]

    @property
    def account(self) -> tuple[AuthAddress, str]:
        """Which account the reference reaches: one Keystone, one project (whoever the user is)."""
        return self.address, self.project


def read_references(path: str, where: str) -> dict[str, Reference]:
    """The usable sections of a glance_store swift_store_config_file (quotes stripped as glance_store does)."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, UnicodeDecodeError, configparser.Error):
        raise ValueError(f"{where}: cannot be read as a file of swift references") from None
    references: dict[str, Reference] = {}
    for section in parser.sections():
        try:
            values = {option: _unquoted(parser.get(section, option)) for option in parser.options(section)}
            references[section] = Reference.parse(values, f"{where} [{section}]")
        except (ValueError, configparser.Error):
            continue  # as glance_store does: a broken section is no reference
    return references


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        return value[1:-1]
    return value


class SwiftNames:
    """The names of this store's data: URLs it accepts (by hand, strictly), the URLs it writes and the data keys."""

    def __init__(self, own: Reference, accounts: Mapping[str, tuple[AuthAddress, str]], reference: str,
                 container: str) -> None:  # fmt: skip
        self._own, self._accounts, self.container = own, dict(accounts), container
        self._project = quote(own.project, safe="")
        address = own.address
        self._url_prefix = (
            f"{CONFIG_SCHEME}://{reference}/{container}"
            if reference
            else f"swift+{address.protocol}://{address.netloc}{address.path}/{container}"
        )
        self._key_prefix = f"{KEY_SCHEME}://{address.host}:{address.port}{address.path}/{self._project}/{container}"

    def url(self, name: str) -> str:
        """The URL this store writes for an object: credential-free."""
        return f"{self._url_prefix}/{name}"

    def key(self, name: str) -> str:
        """The data key of an object: account (Keystone and project), container, name; a URL this store accepts."""
        return f"{self._key_prefix}/{name}"

    def upload_target(self, image_id: uuid.UUID) -> UploadTarget:
        """<container>/<image-id>; its segments, if any, first under <container>/<image-id>.<random>.partial/."""
        final = str(image_id)
        return UploadTarget(self.url(final), self.url(f"{final}.{uuid.uuid4().hex}.partial"))

    @staticmethod
    def is_final(name: str) -> bool:
        """An image's object (not an upload's scratch prefix)."""
        return FINAL_NAME.fullmatch(name) is not None

    @staticmethod
    def scratch_of_segment(name: str) -> str | None:
        """The scratch prefix a segment object belongs to, None for any other object."""
        found = SEGMENT_NAME.fullmatch(name)
        return found.group(1) if found else None

    def object_name(self, url: str) -> str:
        """The object url names in this store's container; LocationOutsideStore (never echoing it) otherwise."""
        if len(url) > MAX_URL_CHARS or not URL_TEXT.fullmatch(url) or any(c in url for c in "?#\\"):
            raise _outside("is not a plain Swift location")
        scheme, has_scheme, rest = url.partition("://")
        netloc, has_path, path = rest.partition("/")
        scheme = scheme.lower()
        if not has_scheme or not has_path or "://" in rest:
            raise _outside("is not a plain Swift location")
        if scheme == CONFIG_SCHEME:
            if self._accounts.get(netloc) != self._own.account:
                raise _outside("names a swift reference that does not reach this store's account")
            tail = path.split("/")
        elif scheme in SCHEME_PROTOCOLS:
            tail = self._tail_after_auth_address(scheme, netloc, path.split("/"))
        else:
            raise _outside("is not a Swift location")
        if len(tail) != 2 or tail[0] != self.container:
            raise _outside("names another container, or is not container/object")
        if not FINAL_NAME.fullmatch(tail[1]) and not SCRATCH_NAME.fullmatch(tail[1]):
            raise _outside("names an object this store does not write")
        return tail[1]

    def _tail_after_auth_address(self, scheme: str, netloc: str, segments: list[str]) -> list[str]:
        """What follows this store's auth address in a swift[+http[s]] URL: container/object (or the key's form)."""
        userinfo, has_credentials, host_port = netloc.rpartition("@")
        if has_credentials:
            self._check_credentials(userinfo)
        address, protocol = self._own.address, SCHEME_PROTOCOLS[scheme]
        if _host_port(host_port, protocol) != (address.host, address.port):
            raise _outside("names another Swift authentication host or port")
        count = len(address.segments)
        if tuple(segments[:count]) != address.segments:
            raise _outside("names another Swift authentication address")
        tail = segments[count:]
        if scheme == KEY_SCHEME and not has_credentials and len(tail) == 3 and tail[0] == self._project:
            return tail[1:]  # the data key's own spelling: swift://host:port/path/<project>/<container>/<object>
        if protocol != address.protocol:
            raise _outside("names another Swift authentication address")
        return tail

    def _check_credentials(self, userinfo: str) -> None:
        """Credentials in a URL (project:user:key, quoted as glance_store does) must be this store's own."""
        if "@" in userinfo or ":" not in userinfo:
            raise _outside("carries malformed credentials")
        user, _, key = unquote(userinfo).rpartition(":")
        same_user = hmac.compare_digest(user.encode(), self._own.user.encode())
        if not (hmac.compare_digest(key.encode(), self._own.key.encode()) and same_user):
            raise _outside("carries credentials that are not this store's")


def own_reference(checked: StoreOptions) -> tuple[Reference, dict[str, tuple[AuthAddress, str]], str]:
    """The store's reference; the account of each reference a swift+config URL may name; the name its URLs use."""
    reference_name = checked.text("default_swift_reference", "ref1")
    if not PLAIN_NAME.fullmatch(reference_name):
        raise ValueError(f"{checked.key('default_swift_reference')}: letters, digits and . _ ~ - only")
    config_file = checked.text("swift_store_config_file", "")
    if config_file:
        if given := [option for option in CREDENTIAL_OPTIONS if checked.text(option, "")]:
            raise ValueError(f"{checked.key(given[0])}: give credentials here or in swift_store_config_file, not both")
        references = read_references(config_file, checked.key("swift_store_config_file"))
        if reference_name not in references:
            raise ValueError(f"{checked.key('default_swift_reference')}: no usable section of that name in the file")
        accounts = {name: reference.account for name, reference in references.items()}
        return references[reference_name], accounts, reference_name
    values = {"auth_address": checked.text(CREDENTIAL_OPTIONS[0]), "user": checked.text(CREDENTIAL_OPTIONS[1]),
              "key": checked.text(CREDENTIAL_OPTIONS[2])}  # fmt: skip
    own = Reference.parse(values, checked.key("swift_store_auth_address/_user/_key"))
    # glance_store names the section's credentials by default_swift_reference too: swift+config://ref1/... works.
    return own, {reference_name: own.account}, ""
