"""The `swift` store: image data as objects of one container in one Swift account (Glance's single-tenant store).

Writing. An image is the object `<container>/<image-id>`. Data of at most one segment is buffered in memory and,
once ready() allows it, PUT there with `If-None-Match: *`: Swift answers 412 if the name is taken, so nothing is
ever replaced. Larger data goes up as segments `<image-id>.<random>.partial/<n>` (the scratch URL names that
prefix), then, after ready(), a Static Large Object manifest is PUT at the image's name, also with
`If-None-Match: *`, naming the prefix it owns in `X-Object-Meta-Locquota-Segments`. A crash before the manifest
leaves segments under the scratch prefix only; after it, they belong to the image: get_size/delete of the
scratch URL then see nothing, and deleting the image removes them. Segmented data needs Swift's `slo`
middleware (in every stock proxy pipeline): /info is asked before the first segment, and the manifest is
checked after its PUT. A manifest lists at most /info's max_manifest_segments (1000 by default) segments.

Reading and deleting also handle what glance_store 5.7.0 wrote: plain objects and Dynamic Large Objects (a
manifest and `<image-id>-<n>` segments, removed with it).

URLs (Glance's own forms, as glance_store's StoreLocation.parse_uri reads them), this container only, objects
named by an image id or a scratch prefix, nothing percent-decoded but credentials:
    swift+config://<reference>/<container>/<object>      a reference of the config file reaching this account
    swift[+https|+http]://[<user>:<key>@]<auth host[:port]/path>/<container>/<object>   (swift:// is https)
Credentials in a URL must be this store's own; they are never used: every call logs in as the store.
Uploads are named swift+config://<default reference>/... when a config file is used, else
swift+http[s]://<auth address>/<container>/<object>, without credentials. The data key, also the inventory's
URL, is `swift://<auth host>:<port><auth path>/<project>/<container>/<object>`, decided without the network.
Two stores on one Keystone project in different regions would share keys: a collision that only keeps data.

Options: glance_store's own names and defaults: swift_store_auth_address, swift_store_user ("project:user"),
swift_store_key, swift_store_auth_version (3 only), or instead swift_store_config_file and
default_swift_reference (ref1); swift_store_container (glance), swift_store_create_container_on_put (false),
swift_store_large_object_size (MiB, 5120: larger data is segmented), swift_store_large_object_chunk_size (MiB,
200: the segment size, and the one buffer held in memory, so data above it is segmented whatever
large_object_size says; note glance_store's "MB" is 1000 KiB), swift_store_endpoint_type (publicURL),
swift_store_service_type (object-store), swift_store_region, swift_store_endpoint (a storage URL instead of the
catalog's), swift_store_auth_insecure (false), swift_store_cacert; swift_store_multi_tenant and
swift_store_multiple_containers_seed are refused unless off. locquota's own: swift_store_timeout (seconds for
each connect and each read, 10) and swift_store_retries (0 or 1, default 0), so a Swift that is down fails in
seconds. Glance options without meaning here (IGNORED_OPTIONS) are accepted and do nothing.
"""

import configparser
import hashlib
import hmac
import http.client
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self
from urllib.parse import quote, unquote

import requests
import swiftclient
import urllib3
from keystoneauth1 import exceptions as keystone_errors
from keystoneauth1 import session as keystone_session
from keystoneauth1.identity import v3

from locations.stores.base import (
    DataIdentity,
    StoredData,
    StoreDuplicateError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
    UploadTarget,
)
from locations.stores.options import StoreOptions
from locquota.errors import LocationOutsideStore

MIB = 1024 * 1024
MAX_URL_CHARS = 4096
LISTING_PAGE = 1000
DEFAULT_MAX_SEGMENTS = 1000  # Swift's default max_manifest_segments, when its /info does not say
SEGMENTS_META = "x-object-meta-locquota-segments"
DEFAULT_PORTS = {"http": 80, "https": 443}
SCHEME_PROTOCOLS = {"swift": "https", "swift+https": "https", "swift+http": "http"}
CONFIG_SCHEME = "swift+config"
KEY_SCHEME = "swift"
ENDPOINT_INTERFACES = {"publicURL": "public", "internalURL": "internal", "adminURL": "admin"}
URL_TEXT = re.compile(r"[!-~]+")  # printable ASCII without spaces: no NUL, no control or non-ASCII character
PLAIN_NAME = re.compile(r"[A-Za-z0-9._~-]{1,256}")  # a container or reference name, the same in any spelling
HOST = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
PORT = re.compile(r"[0-9]{1,5}")
IMAGE_ID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # Glance's object names
SCRATCH = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[0-9a-f]{32}\.partial"
FINAL_NAME, SCRATCH_NAME = re.compile(IMAGE_ID), re.compile(SCRATCH)
SEGMENT_NAME = re.compile(rf"({SCRATCH})/[0-9]{{8}}")
DOMAIN_OPTIONS = ("user_domain_id", "user_domain_name", "project_domain_id", "project_domain_name")
IGNORED_OPTIONS = (  # Glance options that mean nothing here: a moved Glance section still starts
    "swift_store_ssl_compression",
    "swift_store_retry_get_count",
    "swift_store_expire_soon_interval",
    "swift_store_use_trusts",
    "swift_store_admin_tenants",
    "swift_buffer_on_upload",
    "swift_upload_buffer_dir",
)
CREDENTIAL_OPTIONS = ("swift_store_auth_address", "swift_store_user", "swift_store_key")
OPTIONS = (
    *CREDENTIAL_OPTIONS,
    "swift_store_auth_version",
    "swift_store_config_file",
    "default_swift_reference",
    "swift_store_container",
    "swift_store_create_container_on_put",
    "swift_store_large_object_size",
    "swift_store_large_object_chunk_size",
    "swift_store_endpoint_type",
    "swift_store_service_type",
    "swift_store_region",
    "swift_store_endpoint",
    "swift_store_auth_insecure",
    "swift_store_cacert",
    "swift_store_multi_tenant",
    "swift_store_multiple_containers_seed",
    "swift_store_timeout",
    "swift_store_retries",
    *IGNORED_OPTIONS,
)
# What the client stack raises besides ClientException: Keystone's, requests', urllib3's, sockets', JSON's.
CLIENT_ERRORS = (
    keystone_errors.ClientException,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,  # a body that is not the JSON Swift sends
)


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


@dataclass(slots=True)
class _Process:
    """The clients of one process: a Keystone session its threads share, a Swift connection per thread."""

    pid: int
    session: keystone_session.Session
    local: threading.local = field(default_factory=threading.local)
    max_segments: int | None = None  # from Swift's /info once asked; None: not known


class _ViewReader:
    """A file-like view of bytes already in memory, so a segment is sent without a second copy."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._offset = view, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._offset + size)
        piece = self._view[self._offset : end].tobytes()
        self._offset = end
        return piece

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int) -> None:
        """Swiftclient rewinds a body it sends again (swift_store_retries = 1)."""
        self._offset = offset


class SwiftStore:
    """One container of one Swift account, logged in to through Keystone v3 (Glance's single-tenant store)."""

    scheme = "swift"
    schemes = ("swift", "swift+http", "swift+https", "swift+config")
    is_read_only = False

    def __init__(self, name: str, options: Mapping[str, str]) -> None:
        checked = StoreOptions(name, options, OPTIONS)
        self.name = name
        self.description = checked.description
        if checked.boolean("swift_store_multi_tenant", False):
            raise ValueError(f"{checked.key('swift_store_multi_tenant')}: locquota keeps images in one account only")
        if checked.integer("swift_store_multiple_containers_seed", 0):
            raise ValueError(f"{checked.key('swift_store_multiple_containers_seed')}: only one container (0)")
        if checked.text("swift_store_auth_version", "3") != "3":
            raise ValueError(f"{checked.key('swift_store_auth_version')}: only Keystone v3 (3) is supported")
        container = checked.text("swift_store_container", "glance")
        if not PLAIN_NAME.fullmatch(container) or container in {".", ".."}:
            raise ValueError(f"{checked.key('swift_store_container')}: letters, digits and . _ ~ - only")
        self._reference, accounts, reference_name = _own_reference(checked)
        self.names = SwiftNames(self._reference, accounts, reference_name, container)
        self.container = container
        self._large_object_bytes = checked.integer("swift_store_large_object_size", 5120, minimum=1) * MIB
        self._segment_bytes = checked.integer("swift_store_large_object_chunk_size", 200, minimum=1) * MIB
        self._create_container = checked.boolean("swift_store_create_container_on_put", False)
        endpoint_type = checked.text("swift_store_endpoint_type", "publicURL")
        if endpoint_type not in ENDPOINT_INTERFACES:
            raise ValueError(f"{checked.key('swift_store_endpoint_type')}: one of {', '.join(ENDPOINT_INTERFACES)}")
        self._os_options = {
            "service_type": checked.text("swift_store_service_type", "object-store"),
            "endpoint_type": ENDPOINT_INTERFACES[endpoint_type],
        }
        if region := checked.text("swift_store_region", ""):
            self._os_options["region_name"] = region
        if endpoint := checked.text("swift_store_endpoint", ""):
            self._os_options["object_storage_url"] = endpoint.rstrip("/")
        self._insecure = checked.boolean("swift_store_auth_insecure", False)
        self._cacert = checked.text("swift_store_cacert", "") or None
        self._timeout = checked.number("swift_store_timeout", 10.0, minimum=0.1)
        self._retries = checked.integer("swift_store_retries", 0)
        if self._retries > 1:
            raise ValueError(f"{checked.key('swift_store_retries')}: 0 or 1 (a Swift that is down must fail fast)")
        self._lock = threading.Lock()
        self._process: _Process | None = None

    # Names -----------------------------------------------------------------------------------------------------

    def validate_url(self, url: str) -> None:
        """Raise LocationOutsideStore unless url names an image or scratch object of this container and account."""
        self.names.object_name(url)

    def identify(self, url: str) -> DataIdentity:
        """The data key of the object url names, whatever the spelling; no network."""
        return DataIdentity(self.names.key(self.names.object_name(url)))

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """<container>/<image-id>; its segments, if any, first under <container>/<image-id>.<random>.partial/."""
        final = str(image_id)
        return UploadTarget(self.names.url(final), self.names.url(f"{final}.{uuid.uuid4().hex}.partial"))

    # Clients ---------------------------------------------------------------------------------------------------

    def _clients(self) -> _Process:
        """The clients of the current process, made again after a fork (a connection never crosses processes)."""
        with self._lock:
            if self._process is None or self._process.pid != os.getpid():
                own = self._reference
                auth = v3.Password(auth_url=own.address.url, username=own.username, password=own.key,
                                   project_name=own.project, **dict(own.domains))  # fmt: skip
                verify: bool | str = False if self._insecure else self._cacert or True
                session = keystone_session.Session(auth=auth, verify=verify, timeout=self._timeout)
                self._process = _Process(os.getpid(), session)
            return self._process

    def _new_connection(self) -> swiftclient.Connection:
        """A Swift connection on the shared session: the session renews the token, a 401 is retried once."""
        return swiftclient.Connection(
            session=self._clients().session,
            os_options=dict(self._os_options),
            retries=self._retries,
            starting_backoff=0.5,
            max_backoff=1,
            retry_on_ratelimit=False,
            timeout=self._timeout,
            insecure=self._insecure,
            cacert=self._cacert,
        )

    def _connection(self) -> swiftclient.Connection:
        """The calling thread's connection (swiftclient's are not safe to share between threads)."""
        process = self._clients()
        if getattr(process.local, "connection", None) is None:
            process.local.connection = self._new_connection()
        # keystoneauth renews the token before it runs out: a PUT never meets a 401 it could not resend its body after.
        process.local.connection.token = process.session.get_token()
        return process.local.connection

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        """Every client error as a StoreError naming this store and the operation, never a URL or a credential."""
        try:
            yield
        except swiftclient.ClientException as exc:
            status = exc.http_status
            message = f"swift store {self.name}: {operation}: Swift answered {status or 'nothing'}"
            if status == 404:
                raise StoreNotFoundError(message) from exc
            raise (StoreFullError if status in (413, 507) else StoreError)(message) from exc
        except CLIENT_ERRORS as exc:
            raise StoreError(f"swift store {self.name}: {operation}: {type(exc).__name__}") from exc

    def _head(self, name: str) -> dict[str, str] | None:
        """The object's headers, None when there is no such object."""
        try:
            with self._translated("HEAD"):
                return self._connection().head_object(self.container, name)
        except StoreNotFoundError:
            return None

    def _max_segments(self) -> int:
        """How many segments a manifest may list; StoreError if Swift's /info says it has no SLO."""
        process = self._clients()
        if process.max_segments is None:
            with self._translated("GET /info"):
                try:
                    info = self._connection().get_capabilities()
                except swiftclient.ClientException:
                    return DEFAULT_MAX_SEGMENTS  # /info hidden: the manifest is checked after its PUT
            slo = info.get("slo") if isinstance(info, dict) else None
            if not isinstance(slo, dict):
                raise StoreError(f"swift store {self.name}: this Swift has no Static Large Object support (slo)")
            limit = slo.get("max_manifest_segments")
            process.max_segments = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_SEGMENTS
        return process.max_segments

    # Writing ---------------------------------------------------------------------------------------------------

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = lambda: None) -> str:
        """Buffer one segment: a small image is one conditional PUT, a larger one segments and an SLO manifest.

        What the chunks or ready() raise goes through unchanged, once the segments written are removed. When a
        manifest PUT may have landed (no answer, or a 5xx), the segments stay: the upload's names find them.
        """
        final, scratch = self.names.object_name(target.url), self.names.object_name(target.scratch_url)
        if not self.names.is_final(final) or not scratch.startswith(f"{final}."):
            raise StoreError(f"swift store {self.name}: the upload's names were not planned by this store")
        buffer, segments, manifest_sent = bytearray(), [], False
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) > self._segment_bytes:
                    self._put_segment(scratch, segments, buffer)
            if segments or len(buffer) > self._large_object_bytes:
                while buffer:
                    self._put_segment(scratch, segments, buffer)
            ready()
            manifest_sent = bool(segments)  # from here on, only this store's own calls can fail
            if segments:
                self._put_manifest(final, scratch, segments)
            else:
                self._put_new(final, buffer, {})
        except BaseException as exc:
            if segments and (not manifest_sent or _surely_not_written(exc)):
                self._sweep_quietly(scratch, segments)
            raise
        return target.url

    def _put(self, name: str, data: bytearray | bytes, headers: dict[str, str], query: str | None = None) -> str:
        """PUT bytes already in memory with their MD5 (Swift checks it); the container made first if allowed."""
        with memoryview(data) as view:
            digest = None if query else hashlib.md5(view, usedforsecurity=False).hexdigest()
            for attempt in (1, 2):
                try:
                    with self._translated("PUT"):
                        return self._connection().put_object(
                            self.container, name, _ViewReader(view), content_length=len(view), etag=digest,
                            headers=headers, query_string=query,
                        )  # fmt: skip
                except StoreNotFoundError as exc:
                    if attempt == 2 or not self._create_container:
                        raise StoreError(f"swift store {self.name}: PUT: the container does not exist") from exc
                with self._translated("PUT container"):
                    self._connection().put_container(self.container)
        raise AssertionError("unreachable")  # pragma: no cover

    def _put_new(self, name: str, data: bytes | bytearray, headers: dict[str, str], query: str | None = None) -> None:
        """PUT only if nothing is at the name yet: Swift answers 412 otherwise, and nothing is replaced."""
        try:
            self._put(name, data, {"If-None-Match": "*", **headers}, query)
        except StoreError as exc:
            if _answer(exc) == 412:
                raise StoreDuplicateError(f"swift store {self.name}: data is already stored under this name") from exc
            raise

    def _put_segment(self, scratch: str, segments: list[dict[str, Any]], buffer: bytearray) -> None:
        """Send the buffer's first segment under the scratch prefix and drop it from the buffer."""
        if len(segments) >= self._max_segments():
            raise StoreError(f"swift store {self.name}: the image needs more segments than a manifest may list")
        name, size = f"{scratch}/{len(segments) + 1:08d}", min(len(buffer), self._segment_bytes)
        with memoryview(buffer) as view, view[:size] as piece:
            etag = self._put(name, piece, {})
        del buffer[:size]
        segments.append({"path": f"/{self.container}/{name}", "etag": etag, "size_bytes": size})

    def _put_manifest(self, final: str, scratch: str, segments: list[dict[str, Any]]) -> None:
        """Make the image appear: the manifest PUT fails (412) if anything is already at its name."""
        manifest = json.dumps(segments, separators=(",", ":")).encode()
        self._put_new(final, manifest, {SEGMENTS_META: scratch}, query="multipart-manifest=put")
        head = self._head(final)
        if head is None or head.get("x-static-large-object", "").lower() != "true":
            # A Swift without the slo middleware keeps the manifest's JSON as the object: never leave that there.
            self._delete_object(final)
            raise StoreError(f"swift store {self.name}: Swift did not make a Static Large Object (no slo?)")

    # Reading ---------------------------------------------------------------------------------------------------

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the object on a connection of its own (the caller may read it from any thread, at any pace)."""
        name = self.names.object_name(url)
        if not self.names.is_final(name):
            raise StoreError(f"swift store {self.name}: an upload's scratch data is not an image")
        connection = self._new_connection()
        try:
            with self._translated("GET"):
                connection.token = self._clients().session.get_token()
                headers, body = connection.get_object(self.container, name, resp_chunk_size=chunk_bytes)
        except BaseException:
            connection.close()
            raise
        return self._stream(connection, body, int(headers.get("content-length", -1)))

    def _stream(self, connection: swiftclient.Connection, body: Iterable[bytes], expected: int) -> Iterator[bytes]:
        """Yield the body; a body cut short (a segment lost, the proxy gone) is an error, never a shorter image."""
        received = 0
        try:
            with self._translated("GET"):
                for piece in body:
                    received += len(piece)
                    yield piece
            if 0 <= expected != received:
                raise StoreError(f"swift store {self.name}: GET: the object ended after {received} of {expected} bytes")
        finally:
            connection.close()

    def get_size(self, url: str) -> int:
        """The image's size (an SLO's total), or the bytes of an upload's segments that no image owns yet."""
        name = self.names.object_name(url)
        if not self.names.is_final(name):
            listed = [] if self._is_owned(name) else list(self._listing(f"{name}/"))
            if not listed:
                raise StoreNotFoundError(f"swift store {self.name}: no segments under this scratch name")
            return sum(entry["bytes"] for entry in listed)
        head = self._head(name)
        if head is None:
            raise StoreNotFoundError(f"swift store {self.name}: no such object")
        if not head.get("content-length", "").isdigit():
            raise StoreError(f"swift store {self.name}: HEAD answered no size")
        return int(head["content-length"])

    def _is_owned(self, scratch: str) -> bool:
        """Whether the image's manifest owns these segments (then they are the image's data, not scratch)."""
        head = self._head(scratch.partition(".")[0])
        return head is not None and head.get(SEGMENTS_META) == scratch

    def _listing(self, prefix: str = "") -> Iterator[dict[str, Any]]:
        """The container's objects (under prefix), a page at a time; nothing if the container does not exist."""
        marker = ""
        while True:
            try:
                with self._translated("GET container"):
                    _, page = self._connection().get_container(
                        self.container, marker=marker, limit=LISTING_PAGE, prefix=prefix or None
                    )
            except StoreNotFoundError:
                return
            if not page:
                return
            yield from page
            marker = page[-1]["name"]

    # Deleting --------------------------------------------------------------------------------------------------

    def delete(self, url: str) -> None:
        """Remove the image with its segments, or an upload's segments no image owns; what is gone is fine."""
        name = self.names.object_name(url)
        if not self.names.is_final(name):
            if not self._is_owned(name):
                self._sweep(name)
            return
        head = self._head(name)
        if head is None:
            return
        if head.get("x-static-large-object", "").lower() == "true":
            self._delete_object(name, query="multipart-manifest=delete")
            if (scratch := head.get(SEGMENTS_META, "")) and SCRATCH_NAME.fullmatch(scratch):
                self._sweep(scratch)  # whatever a partial bulk delete left
            return
        if manifest := head.get("x-object-manifest"):  # a Dynamic Large Object, as glance_store writes them
            if unquote(manifest) != f"{self.container}/{name}-":
                raise StoreError(f"swift store {self.name}: a manifest names segments outside its own names")
            for entry in self._listing(f"{name}-"):
                self._delete_object(entry["name"])
        self._delete_object(name)

    def _delete_object(self, name: str, query: str | None = None) -> None:
        with suppress(StoreNotFoundError), self._translated("DELETE"):
            self._connection().delete_object(self.container, name, query_string=query)

    def _sweep(self, scratch: str, known: Iterable[dict[str, Any]] = ()) -> None:
        """Delete every segment under the scratch prefix: those this upload wrote, then any the listing shows."""
        for segment in known:
            self._delete_object(segment["path"].split("/", 2)[2])
        for entry in self._listing(f"{scratch}/"):
            self._delete_object(entry["name"])

    def _sweep_quietly(self, scratch: str, known: Iterable[dict[str, Any]]) -> None:
        """Clean up after a failed upload; if Swift is down too, the reaper and the audit find what is left."""
        with suppress(StoreError):
            self._sweep(scratch, known)

    # Listing ---------------------------------------------------------------------------------------------------

    def inventory(self) -> Iterator[StoredData]:
        """Images by key at their total size, and each upload's segments that no image owns as one scratch item."""
        group: list[Any] = []  # the scratch prefix being summed: name, bytes, newest segment
        for entry in self._listing():
            name, modified = entry["name"], datetime.fromisoformat(entry["last_modified"])
            scratch = self.names.scratch_of_segment(name)
            if group and scratch != group[0]:
                yield from self._scratch_item(*group)
                group = []
            if scratch is not None:
                group = group or [scratch, 0, modified]
                group[1], group[2] = group[1] + entry["bytes"], max(group[2], modified)
            elif self.names.is_final(name):
                size = entry["bytes"] or self._size_if_there(name)  # a DLO manifest is listed with 0 bytes
                if size is not None:
                    yield StoredData(self.names.key(name), size, modified, is_scratch=False)
        if group:
            yield from self._scratch_item(*group)

    def _size_if_there(self, name: str) -> int | None:
        head = self._head(name)
        return None if head is None else int(head.get("content-length") or 0)

    def _scratch_item(self, scratch: str, size: int, modified: datetime) -> Iterator[StoredData]:
        if not self._is_owned(scratch):
            yield StoredData(self.names.key(scratch), size, modified, is_scratch=True)


def _answer(exc: StoreError) -> int | None:
    """The HTTP status Swift answered, when a StoreError comes from an answer."""
    cause = exc.__cause__
    return cause.http_status if isinstance(cause, swiftclient.ClientException) else None


def _surely_not_written(exc: BaseException) -> bool:
    """Whether a failed PUT certainly left nothing: Swift refused it (4xx), or this store decided so itself."""
    if isinstance(exc, StoreDuplicateError):
        return True
    if not isinstance(exc, StoreError):
        return False
    answer = _answer(exc)
    return exc.__cause__ is None or (answer is not None and answer < 500)


def _own_reference(checked: StoreOptions) -> tuple[Reference, dict[str, tuple[AuthAddress, str]], str]:
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
