"""The `swift` store: image data as objects of one container in one Swift account (Glance's single-tenant store).

Writing. An image is the object `<container>/<image-id>`. Data of at most one 4 MiB buffer (less if the
segment or large-object size is smaller) is held in memory and, once ready() allows it, PUT there with
`If-None-Match: *`: Swift answers 412 if the name is taken, so nothing is ever replaced. Larger data is
streamed, as it arrives, as segments `<image-id>.<random>.partial/<n>` (the scratch URL names that prefix),
then, after ready(), a Static Large Object manifest is PUT at the image's name, also with
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
swift_store_large_object_size (MiB, 5120), swift_store_large_object_chunk_size (MiB, 200: the segment size;
data above the 4 MiB buffer is segmented whatever large_object_size says, since it is not held in memory; note
glance_store's "MB" is 1000 KiB), swift_store_endpoint_type (publicURL),
swift_store_service_type (object-store), swift_store_region, swift_store_endpoint (a storage URL instead of the
catalog's), swift_store_auth_insecure (false), swift_store_cacert; swift_store_multi_tenant and
swift_store_multiple_containers_seed are refused unless off. locquota's own: swift_store_timeout (seconds for
each connect and each read, 10) and swift_store_retries (0 or 1, default 0), so a Swift that is down fails in
seconds. Glance options without meaning here (IGNORED_OPTIONS) are accepted and do nothing.
"""

import hashlib
import http.client
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

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
from locations.stores.request_bodies import Incoming, ViewReader
from locations.stores.swift_names import CREDENTIAL_OPTIONS, PLAIN_NAME, SCRATCH_NAME, SwiftNames, own_reference

MIB = 1024 * 1024
LISTING_PAGE = 1000
DEFAULT_MAX_SEGMENTS = 1000  # Swift's default max_manifest_segments, when its /info does not say
SEGMENTS_META = "x-object-meta-locquota-segments"
ENDPOINT_INTERFACES = {"publicURL": "public", "internalURL": "internal", "adminURL": "admin"}
IGNORED_OPTIONS = (  # Glance options that mean nothing here: a moved Glance section still starts
    "swift_store_ssl_compression",
    "swift_store_retry_get_count",
    "swift_store_expire_soon_interval",
    "swift_store_use_trusts",
    "swift_store_admin_tenants",
    "swift_buffer_on_upload",
    "swift_upload_buffer_dir",
)
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
BUFFER_BYTES = 4 * MIB  # what an upload holds in memory: a small image whole, else one piece of a segment
CLIENT_ERRORS = (
    keystone_errors.ClientException,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,  # a body that is not the JSON Swift sends
)


@dataclass(slots=True)
class _Process:
    """The clients of one process: a Keystone session its threads share, a Swift connection per thread."""

    pid: int
    session: keystone_session.Session
    local: threading.local = field(default_factory=threading.local)
    max_segments: int | None = None  # from Swift's /info once asked; None: not known


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
        self._reference, accounts, reference_name = own_reference(checked)
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
        return self.names.upload_target(image_id)

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
        """A small image is one conditional PUT from memory; a larger one is streamed as segments, then an SLO.

        Memory holds at most one buffer (BUFFER_BYTES, or the segment size if smaller) whatever the image's
        size: segments go up as chunked PUTs fed straight from the incoming chunks. What the chunks or ready()
        raise goes through unchanged, once the segments written are removed. When a manifest PUT may have
        landed (no answer, or a 5xx), the segments stay: the upload's names find them.
        """
        final, scratch = self.names.object_name(target.url), self.names.object_name(target.scratch_url)
        if not self.names.is_final(final) or not scratch.startswith(f"{final}."):
            raise StoreError(f"swift store {self.name}: the upload's names were not planned by this store")
        incoming = Incoming(iter(chunks))
        segments: list[dict[str, Any]] = []
        manifest_sent = False
        try:
            small = min(BUFFER_BYTES, self._segment_bytes, self._large_object_bytes)
            head = incoming.take(small + 1)
            if len(head) <= small:  # all of it: one PUT
                ready()
                self._put_new(final, head, {})
                return target.url
            incoming.give_back(head)
            if self._create_container:  # a streamed body cannot be sent again after a 404 for the container
                with self._translated("PUT container"):
                    self._connection().put_container(self.container)
            while incoming.has_more():
                self._put_streamed_segment(scratch, segments, incoming)
            ready()
            manifest_sent = True  # from here on, only this store's own calls can fail
            self._put_manifest(final, scratch, segments)
        except BaseException as exc:
            if segments and (not manifest_sent or _surely_not_written(exc)):
                self._sweep_quietly(scratch, segments)
            if incoming.failure is not None and exc is not incoming.failure:
                raise incoming.failure from None  # the client's own error, whatever the HTTP library made of it
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
                            self.container, name, ViewReader(view), content_length=len(view), etag=digest,
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

    def _put_streamed_segment(self, scratch: str, segments: list[dict[str, Any]], incoming: Incoming) -> None:
        """Send the next segment under the scratch prefix as a chunked PUT, hashed on the way (Swift's ETag checked)."""
        if len(segments) >= self._max_segments():
            raise StoreError(f"swift store {self.name}: the image needs more segments than a manifest may list")
        name, digest, sent = f"{scratch}/{len(segments) + 1:08d}", hashlib.md5(usedforsecurity=False), 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            while sent < self._segment_bytes:
                piece = incoming.take(min(self._segment_bytes - sent, BUFFER_BYTES))
                if not piece:
                    return
                digest.update(piece)
                sent += len(piece)
                yield piece

        with self._translated("PUT"):
            etag = self._connection().put_object(self.container, name, body())
        if incoming.failure is not None:
            raise incoming.failure
        if etag != digest.hexdigest():
            raise StoreError(f"swift store {self.name}: PUT: Swift stored other bytes than were sent")
        segments.append({"path": f"/{self.container}/{name}", "etag": etag, "size_bytes": sent})

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
