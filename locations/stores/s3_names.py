"""The s3 store's names: its endpoint, which URLs are objects of its bucket, the URLs it writes (its data keys).

Apart from the I/O of locations/stores/s3.py because naming needs neither boto3 nor the endpoint: URLs are
parsed by hand here, and tested without a server.
"""

import contextlib
import hmac
import re
import uuid
from dataclasses import dataclass
from typing import NoReturn, Self
from urllib.parse import unquote, urlsplit

from locations.stores.base import UploadTarget
from locquota.errors import LocationOutsideStore

MAX_URL_CHARS = 4096
DEFAULT_PORTS = {"http": 80, "https": 443}
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FINAL_KEY = re.compile(UUID, re.IGNORECASE)  # Glance takes image ids in either case; a key keeps its own
SCRATCH_KEY = re.compile(rf"{UUID}\.[0-9a-f]{{32}}\.partial")
URL_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # printable ASCII: no spaces, controls, NUL or look-alikes
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
PORT = re.compile(r"[1-9][0-9]{0,4}")
PATH_SEGMENT = re.compile(r"(?!\.\.?$)[A-Za-z0-9._~-]+")
BUCKET_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the S3 API answers: transport, lower-case host ([bracketed] for IPv6), port, path segments."""

    transport: str
    host: str
    port: int
    path: tuple[str, ...]

    @classmethod
    def from_option(cls, key: str, raw: str) -> Self:
        """s3_store_host, checked at start; without a scheme it is http, as glance_store has it."""
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        transport, host = parts.scheme.lower(), parts.hostname or ""
        try:
            port = parts.port or DEFAULT_PORTS.get(transport, 0)
        except ValueError:
            port = 0
        path = tuple(segment for segment in parts.path.split("/") if segment)
        endpoint = cls(transport, f"[{host}]" if ":" in host else host, port, path)
        is_plain = not ("@" in parts.netloc or parts.query or parts.fragment)
        if transport not in DEFAULT_PORTS or not HOST_NAME.fullmatch(endpoint.host) or not port or not is_plain:
            raise ValueError(f"{key}: expected http(s)://host[:port][/path]")
        if not all(PATH_SEGMENT.fullmatch(segment) for segment in path):
            raise ValueError(f"{key}: expected http(s)://host[:port][/path]")
        return endpoint

    @property
    def url(self) -> str:
        """The endpoint as botocore takes it."""
        return f"{self.transport}://{self.host}:{self.port}" + "".join(f"/{segment}" for segment in self.path)


def _refuse(reason: str) -> NoReturn:
    raise LocationOutsideStore(f"The location URL is not data of this S3 store: {reason}.")


def _same(given: str, expected: str) -> bool:
    """Whether a URL's credential is the configured one, as is or percent-encoded once (in constant time)."""
    spellings = [given]
    with contextlib.suppress(UnicodeDecodeError):
        spellings.append(unquote(given, errors="strict"))
    return any(hmac.compare_digest(spelling.encode(), expected.encode()) for spelling in spellings)


class S3Names:
    """The URLs of one bucket's objects: read strictly by hand, written canonically, without credentials."""

    def __init__(self, endpoint: Endpoint, bucket: str, schemes: tuple[str, ...], access_key: str,
                 secret_key: str) -> None:  # fmt: skip
        self.endpoint, self.bucket, self.schemes = endpoint, bucket, schemes
        self._access_key, self._secret_key = access_key, secret_key
        port = endpoint.port
        self._url_prefix = "s3://{}{}{}/{}/".format(
            endpoint.host,
            "" if port == DEFAULT_PORTS[endpoint.transport] else f":{port}",
            "".join(f"/{segment}" for segment in endpoint.path),
            bucket,
        )

    def url_for(self, key: str) -> str:
        """The canonical URL of a key, which is its data key too."""
        return self._url_prefix + key

    def upload_target(self, image_id: uuid.UUID) -> UploadTarget:
        """<image-id>, written first (when larger than one part) as <image-id>.<random hex>.partial."""
        return UploadTarget(self.url_for(str(image_id)), self.url_for(f"{image_id}.{uuid.uuid4().hex}.partial"))

    def key_of(self, url: str, is_scratch_allowed: bool) -> str:
        """The object key a URL names, parsed strictly by hand: whatever is not understood is refused."""
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS or not URL_CHARACTERS.fullmatch(url):
            _refuse("not a plain S3 URL")
        scheme, separator, rest = url.partition("://")
        if not separator or scheme.lower() not in self.schemes:
            _refuse("not an S3 URL of this store's endpoint")
        if any(character in rest for character in "?#\\"):
            _refuse("a query, fragment or backslash")
        credentials, has_credentials, place = rest.rpartition("@")
        access, has_colon, secret = credentials.partition(":")
        if has_credentials and not (has_colon and _same(access, self._access_key) and _same(secret, self._secret_key)):
            _refuse("credentials that are not this store's")
        if "%" in place:
            _refuse("a percent-encoded name")
        netloc, _, path = place.partition("/")
        if self._host_and_port(netloc) != (self.endpoint.host, self.endpoint.port):
            _refuse("another host or port")
        *folder, key = path.split("/")
        if tuple(folder) != (*self.endpoint.path, self.bucket):
            _refuse("another bucket or path")
        if not (FINAL_KEY.fullmatch(key) or (is_scratch_allowed and SCRATCH_KEY.fullmatch(key))):
            _refuse("not an object name this store writes")
        return key

    def _host_and_port(self, netloc: str) -> tuple[str, int]:
        has_port = netloc.rfind(":") > netloc.rfind("]")
        host, _, port = netloc.rpartition(":") if has_port else (netloc, "", "")
        if not HOST_NAME.fullmatch(host := host.lower()):
            _refuse("not a host name")
        if not has_port:
            return host, DEFAULT_PORTS[self.endpoint.transport]
        if not PORT.fullmatch(port) or int(port) > 65535:
            _refuse("not a port number")
        return host, int(port)
