"""The `s3` store: image data as objects in one S3 bucket (Ceph RGW, AWS, ...), through boto3.

URLs, as Glance writes them: `s3://[<access>:<secret>@]<host>[:<port>][/<path>]/<bucket>/<key>`, also with
the scheme `s3+http` or `s3+https` matching the endpoint's transport (plain `s3` fits either: glance_store
connects to its configured endpoint whatever a URL's scheme). Host, port (the transport's default when
absent), path and bucket must be this store's; credentials, if any, its own (raw or percent-encoded once).
Keys must be names this store writes: an image id, or `<image-id>.<32 hex>.partial` (scratch data: for the
store's own calls, never a location). The data key, and every URL the store writes, is
`s3://<host>[:<port unless default>][/<path>]/<bucket>/<key>`, without credentials.

Writes never hold more than one part (s3_store_large_object_chunk_size): data that fits in one part (and
in s3_store_large_object_size) goes up after ready() in one PUT with `If-None-Match: *`. Larger data is a
multipart upload to the scratch key; after ready(), the final name is claimed by an empty conditional PUT
(RGW ignores If-None-Match on copies and completions) and the scratch object copied over it server-side
(RGW shares the tail: no bytes move), then the scratch object is deleted. An incomplete multipart upload
is data too: get_size sums its parts, delete aborts it, inventory lists it as scratch.

Options, as glance_store names them: s3_store_host (http:// or https://; none means http), _access_key,
_secret_key, _bucket (required), _region_name (us-east-1), _create_bucket_on_put (false),
_bucket_url_format (auto), _large_object_size (MiB, 100, capped at one part), _large_object_chunk_size
(MiB, 10, at least 5), _cacert, _enable_data_integrity_protection (false) with
_request_checksum_calculation and _response_checksum_validation (when_required), _thread_pools (accepted,
unused: parts go up one at a time, to bound memory). locquota's own, so a store that is down fails in
seconds: s3_store_connect_timeout (5 s), s3_store_read_timeout (30 s), s3_store_max_attempts (2, in all).
"""

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

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
from locations.stores.s3_names import BUCKET_NAME, FINAL_KEY, SCRATCH_KEY, Endpoint, S3Names

log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_PARTS = 10_000
COPY_OBJECT_MAX_BYTES = 5 << 30  # S3's limit for one CopyObject (RGW has none); larger data is copied in parts
URL_FORMATS = ("auto", "path", "virtual")
CHECKSUM_MODES = ("when_required", "when_supported")
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
FULL_CODES = frozenset({"QuotaExceeded", "EntityTooLarge", "InsufficientCapacity", "InsufficientStorage"})
TRANSPORT_ERRORS = (BotoCoreError, Urllib3Error, OSError)
UPLOAD_TAG = "locquota-upload"  # object metadata: the scratch name of the upload that wrote the object
OPTIONS = tuple(
    f"s3_store_{name}"
    for name in (
        "host", "access_key", "secret_key", "bucket", "region_name", "create_bucket_on_put", "bucket_url_format",
        "large_object_size", "large_object_chunk_size", "thread_pools", "cacert", "enable_data_integrity_protection",
        "request_checksum_calculation", "response_checksum_validation", "connect_timeout", "read_timeout",
        "max_attempts",
    )
)  # fmt: skip
T = TypeVar("T")


def _choice(options: StoreOptions, option: str, choices: tuple[str, ...]) -> str:
    value = options.text(option, choices[0]).lower()
    if value not in choices:
        raise ValueError(f"{options.key(option)} = {value!r}: expected one of {', '.join(choices)}")
    return value


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


class S3Store:
    """One bucket of an S3 endpoint, through one boto3 client per process (clients are thread-safe)."""

    scheme = "s3"
    is_read_only = False

    def __init__(self, name: str, options: Mapping[str, str]) -> None:
        checked = StoreOptions(name, options, OPTIONS)
        self.name, self.description = name, checked.description
        self.endpoint = Endpoint.from_option(checked.key("s3_store_host"), checked.text("s3_store_host"))
        self.schemes = ("s3", f"s3+{self.endpoint.transport}")
        self._access_key = checked.text("s3_store_access_key")
        self._secret_key = checked.text("s3_store_secret_key")
        self.bucket = checked.text("s3_store_bucket")
        if not BUCKET_NAME.fullmatch(self.bucket):
            raise ValueError(f"{checked.key('s3_store_bucket')}: not a usable bucket name")
        self.region = checked.text("s3_store_region_name", "") or "us-east-1"
        self.creates_bucket = checked.boolean("s3_store_create_bucket_on_put", False)
        self.part_bytes = checked.integer("s3_store_large_object_chunk_size", 10, minimum=5) * MIB
        # One PUT sends a whole buffer: above one part that would be a second, larger buffer.
        self.single_put_bytes = min(checked.integer("s3_store_large_object_size", 100) * MIB, self.part_bytes)
        self.copy_object_max_bytes = COPY_OBJECT_MAX_BYTES
        checked.integer("s3_store_thread_pools", 10, minimum=1)
        self._cacert = checked.text("s3_store_cacert", "") or None
        is_checked = checked.boolean("s3_store_enable_data_integrity_protection", False)
        modes = ("request_checksum_calculation", "response_checksum_validation")
        checksums = [_choice(checked, f"s3_store_{mode}", CHECKSUM_MODES) for mode in modes]
        self._config = Config(
            s3={"addressing_style": _choice(checked, "s3_store_bucket_url_format", URL_FORMATS)},
            connect_timeout=checked.number("s3_store_connect_timeout", 5.0, minimum=0.1),
            read_timeout=checked.number("s3_store_read_timeout", 30.0, minimum=0.1),
            retries={"total_max_attempts": checked.integer("s3_store_max_attempts", 2, minimum=1), "mode": "standard"},
            # RGW (16.2) refuses the aws-chunked checksum trailers botocore sends "when_supported".
            request_checksum_calculation=checksums[0] if is_checked else CHECKSUM_MODES[0],
            response_checksum_validation=checksums[1] if is_checked else CHECKSUM_MODES[0],
        )
        self.names = S3Names(self.endpoint, self.bucket, self.schemes, self._access_key, self._secret_key)
        self._client_of_process: tuple[int, Any] | None = None

    # Names -------------------------------------------------------------------------------------------------

    def url_for(self, key: str) -> str:
        """The canonical URL of a key, which is its data key too."""
        return self.names.url_for(key)

    def plan_upload(self, image_id: uuid.UUID) -> UploadTarget:
        """<image-id>, written first (when larger than one part) as <image-id>.<random hex>.partial."""
        return self.names.upload_target(image_id)

    def validate_url(self, url: str) -> None:
        """Refuse (400) a URL that is not an image object of this bucket; a scratch name is no location."""
        self.names.key_of(url, is_scratch_allowed=False)

    def identify(self, url: str) -> DataIdentity:
        """The canonical URL, without credentials or scheme variant; no network needed."""
        return DataIdentity(self.url_for(self.names.key_of(url, is_scratch_allowed=True)))

    # The client and its errors -----------------------------------------------------------------------------

    def _client(self) -> Any:
        """The client of the calling process, made on first use: a forked worker makes its own (no shared sockets)."""
        made = self._client_of_process
        if made is None or made[0] != os.getpid():
            session = self._call("connect", boto3.session.Session)
            settings = {"region_name": self.region, "verify": self._cacert, "config": self._config}
            keys = {"aws_access_key_id": self._access_key, "aws_secret_access_key": self._secret_key}
            client = self._call("connect", session.client, "s3", endpoint_url=self.endpoint.url, **settings, **keys)
            made = self._client_of_process = (os.getpid(), client)  # two threads racing both make one: harmless
        return made[1]

    def _request(self, operation: str, method: str, **kwargs: Any) -> Any:
        """One call on the bucket; its failure as a StoreError (see _call)."""
        return self._call(operation, getattr(self._client(), method), Bucket=self.bucket, **kwargs)

    def _call(self, operation: str, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a client call; failures become StoreError naming store and operation, never a URL or key."""
        try:
            return method(*args, **kwargs)
        except ClientError as exc:
            code = re.sub(r"[^A-Za-z0-9.]", "", str(exc.response.get("Error", {}).get("Code", "")))[:64]
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = f"s3 store {self.name}: {operation} failed: {code or 'error'} (HTTP {status})"
            if status == 404 and code in MISSING_CODES:
                raise StoreNotFoundError(message) from None
            if status == 412 or code == "PreconditionFailed":  # only the conditional PUTs send a precondition
                raise StoreDuplicateError(f"s3 store {self.name}: data is already stored under this name") from None
            raise (StoreFullError if status == 507 or code in FULL_CODES else StoreError)(message) from None
        except TRANSPORT_ERRORS as exc:
            raise StoreError(f"s3 store {self.name}: {operation} failed: {type(exc).__name__}") from None

    def _pages(self, operation: str, listing: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The pages of a listing, fetched one at a time."""
        pages = iter(self._client().get_paginator(listing).paginate(Bucket=self.bucket, **kwargs))
        while (page := self._call(operation, next, pages, None)) is not None:
            yield page

    # Writing -----------------------------------------------------------------------------------------------

    def add(self, target: UploadTarget, chunks: Iterable[bytes], ready: Callable[[], None] = lambda: None) -> str:
        """Stream through one part-sized buffer; data appears at target.url after ready(), and only if absent.

        What the chunks or ready() raise goes through unchanged, once whatever was written is removed.
        """
        final = self.names.key_of(target.url, is_scratch_allowed=False)
        scratch = self.names.key_of(target.scratch_url, is_scratch_allowed=True)
        if not SCRATCH_KEY.fullmatch(scratch):
            raise ValueError("an upload's scratch name must be the one plan_upload() gave")
        if self.creates_bucket:
            self._ensure_bucket()
        if self._exists(final):  # before the first byte: a duplicate fails fast
            raise StoreDuplicateError(f"s3 store {self.name}: data is already stored under this name")
        buffer, upload = bytearray(), MultipartUpload(self, scratch)
        claimed = placed = False
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    if len(buffer) == self.part_bytes:  # full, and more is coming: not the last part
                        upload.send(buffer)
                        buffer.clear()
                    taken = self.part_bytes - len(buffer)
                    buffer += view[:taken]
                    view = view[taken:]
            if upload.upload_id is None and len(buffer) <= self.single_put_bytes:
                ready()
                self._put_if_absent("put", final, buffer, token=scratch)
                return target.url
            upload.send(buffer)
            buffer.clear()
            upload.complete()
            ready()
            self._put_if_absent("claim", final, b"", token=scratch)
            claimed = True
            self._copy(scratch, final, upload.size_bytes)
            placed = True
        except BaseException:
            upload.discard()
            if claimed and not placed:
                self._delete_quietly(final)
            raise
        self._delete_quietly(scratch)
        return target.url

    def _ensure_bucket(self) -> None:
        try:
            self._request("head bucket", "head_bucket")
        except StoreNotFoundError:
            where = {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
            try:
                self._request("create bucket", "create_bucket", **(where if self.region != "us-east-1" else {}))
            except StoreError:
                self._request("head bucket", "head_bucket")  # made meanwhile by another node, or the error

    def _put_if_absent(self, operation: str, key: str, body: bytes | bytearray, token: str) -> None:
        """PUT with `If-None-Match: *`, tagged with the upload's token.

        A PUT retried after its first try landed (the answer lost) meets its own object: that is no duplicate.
        """
        try:
            self._request(operation, "put_object", Key=key, Body=body, IfNoneMatch="*", Metadata={UPLOAD_TAG: token})
        except StoreDuplicateError:
            if self._head(key).get("Metadata", {}).get(UPLOAD_TAG) != token:
                raise

    def _head(self, key: str) -> dict[str, Any]:
        """The object's HEAD answer; empty when there is none."""
        try:
            return self._request("head", "head_object", Key=key)
        except StoreNotFoundError:
            return {}

    def _exists(self, key: str) -> bool:
        return bool(self._head(key))

    def _copy(self, source: str, key: str, size_bytes: int) -> None:
        """The source's data over the claimed name, server-side; in ranged parts above one CopyObject's limit."""
        origin = {"Bucket": self.bucket, "Key": source}
        if size_bytes <= self.copy_object_max_bytes:
            self._request("copy", "copy_object", Key=key, CopySource=origin)
            return
        copy = MultipartUpload(self, key)
        try:
            for start in range(0, size_bytes, self.copy_object_max_bytes):
                end = min(start + self.copy_object_max_bytes, size_bytes) - 1
                copy.send_copy(origin, f"bytes={start}-{end}")
            copy.complete()
        except BaseException:
            copy.discard()
            raise

    def _delete_quietly(self, key: str) -> None:
        """A clean-up must not hide why an upload failed: what it leaves is found by its name later."""
        try:
            self._delete_key(key)
        except StoreError as exc:
            log.warning("s3 store %s: %s left behind after an upload, for the reaper: %s", self.name, key, exc)

    # Reading, sizing, deleting, listing --------------------------------------------------------------------

    def get(self, url: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream the object in chunks of at most chunk_bytes; missing data fails here, not at the first read."""
        body = self._request("get", "get_object", Key=self.names.key_of(url, is_scratch_allowed=True))["Body"]
        return self._read(body, chunk_bytes)

    def _read(self, body: Any, chunk_bytes: int) -> Iterator[bytes]:
        try:
            while chunk := self._call("read", body.read, chunk_bytes):  # checks the length at the end
                yield chunk
        finally:
            body.close()

    def get_size(self, url: str) -> int:
        """The object's size; for an incomplete multipart upload under the name, the bytes of its parts."""
        key = self.names.key_of(url, is_scratch_allowed=True)
        try:
            return self._request("size", "head_object", Key=key)["ContentLength"]
        except StoreNotFoundError:
            uploads = list(self._uploads_of(key))
            if not uploads:
                raise StoreNotFoundError(f"s3 store {self.name}: size failed: no data under this name") from None
            return sum(self._parts_bytes(key, upload_id) for upload_id in uploads)

    def delete(self, url: str) -> None:
        """Abort the name's incomplete multipart uploads, then delete its object; already gone is fine."""
        self._delete_key(self.names.key_of(url, is_scratch_allowed=True))

    def _delete_key(self, key: str) -> None:
        for upload_id in self._uploads_of(key):  # first: a claimed name keeps its object until the end
            with contextlib.suppress(StoreNotFoundError):
                self._request("abort", "abort_multipart_upload", Key=key, UploadId=upload_id)
        self._request("delete", "delete_object", Key=key)

    def _uploads_of(self, key: str) -> Iterator[str]:
        for page in self._pages("list multipart uploads", "list_multipart_uploads", Prefix=key):
            yield from (upload["UploadId"] for upload in page.get("Uploads", []) if upload["Key"] == key)

    def _parts_bytes(self, key: str, upload_id: str) -> int:
        pages = self._pages("list parts", "list_parts", Key=key, UploadId=upload_id)
        return sum(part["Size"] for page in pages for part in page.get("Parts", []))

    def inventory(self) -> Iterator[StoredData]:
        """Objects by key, then incomplete multipart uploads (scratch); keys this store never writes are skipped."""
        for page in self._pages("list objects", "list_objects_v2"):
            for item in page.get("Contents", []):
                if FINAL_KEY.fullmatch(key := item["Key"]) or SCRATCH_KEY.fullmatch(key):
                    is_scratch = SCRATCH_KEY.fullmatch(key) is not None
                    yield StoredData(self.url_for(key), item["Size"], _naive_utc(item["LastModified"]), is_scratch)
        for page in self._pages("list multipart uploads", "list_multipart_uploads"):
            for upload in page.get("Uploads", []):
                if FINAL_KEY.fullmatch(key := upload["Key"]) or SCRATCH_KEY.fullmatch(key):
                    try:
                        size_bytes = self._parts_bytes(key, upload["UploadId"])
                    except StoreNotFoundError:
                        continue  # completed or aborted while listed
                    yield StoredData(self.url_for(key), size_bytes, _naive_utc(upload["Initiated"]), True)


class MultipartUpload:
    """One multipart upload, started with its first part; discard() leaves nothing of it behind."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store, self.key = store, key
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.size_bytes = 0
        self.is_complete = False

    def _part(self, operation: str, method: str, **kwargs: Any) -> dict[str, Any]:
        if self.upload_id is None:
            self.upload_id = self.store._request("start upload", "create_multipart_upload", Key=self.key)["UploadId"]
        if len(self.parts) >= MAX_PARTS:
            raise StoreError(f"s3 store {self.store.name}: over {MAX_PARTS} parts; raise the part size")
        number = len(self.parts) + 1
        answer = self.store._request(
            operation, method, Key=self.key, UploadId=self.upload_id, PartNumber=number, **kwargs
        )
        self.parts.append({"PartNumber": number, "ETag": answer.get("CopyPartResult", answer)["ETag"]})
        return answer

    def send(self, data: bytearray) -> None:
        """One part, sent from the caller's buffer (no copy of it is made)."""
        self._part("upload part", "upload_part", Body=data)
        self.size_bytes += len(data)

    def send_copy(self, origin: dict[str, str], byte_range: str) -> None:
        """One part copied server-side from a byte range of another object."""
        self._part("copy part", "upload_part_copy", CopySource=origin, CopySourceRange=byte_range)

    def complete(self) -> None:
        """Assemble the parts into the object."""
        parts, upload_id = {"Parts": self.parts}, self.upload_id
        self.store._request(
            "complete upload", "complete_multipart_upload", Key=self.key, UploadId=upload_id, MultipartUpload=parts
        )
        self.is_complete = True

    def discard(self) -> None:
        """Abort the upload, or delete its object once complete; a failure is logged (the name finds it later)."""
        if self.upload_id is None:
            return
        try:
            if self.is_complete:
                self.store._request("delete", "delete_object", Key=self.key)
            else:
                self.store._request("abort upload", "abort_multipart_upload", Key=self.key, UploadId=self.upload_id)
        except StoreError as exc:
            log.warning("s3 store %s: %s left behind, for the reaper: %s", self.store.name, self.key, exc)
