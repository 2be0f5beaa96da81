"""At-rest encryption of location URLs (SPEC section 9): a key ring, sealing, opening, and keyed hashes.

Fernet (from `cryptography`) seals each URL: AES-128-CBC with an HMAC-SHA256 over the whole token, so a
changed byte is detected instead of decrypting to garbage; MultiFernet tries every key of the ring and
rotates a token to the primary key. A sealed URL is stored as "enc:" + the token; anything else is a
plaintext row (a deployment without keys, or one whose `locquota locations encrypt` is under way).
No store URL scheme is "enc", so the two never mix up.

Lookups never decrypt: a location's data_key_hash holds HMAC-SHA256 of its data key (the store's canonical
name of the data, so every spelling of one file hashes alike) under a hash key derived from the primary
key. Without keys it is the plain SHA-256, so unencrypted deployments need no key.
"""

import base64
import hashlib
import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyramid.config import Configurator

SEALED_PREFIX = "enc:"
HASH_KEY_INFO = b"locquota-url-hash"


class UrlNotReadableError(Exception):
    """A sealed URL that no key of the ring opens: tampered, truncated, or sealed under a key not configured."""


def plain_digest(url: str) -> str:
    """The hash of a deployment without keys: SHA-256 of the text (a data key)."""
    return hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()


def is_sealed(stored: str) -> bool:
    """Whether a stored url column value is a sealed token rather than a plaintext URL."""
    return stored.startswith(SEALED_PREFIX)


def parse_key(text: str) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) as bytes; ValueError, without the key's text, if it is not one."""
    key = text.strip().encode("ascii", "replace")
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise ValueError("not a Fernet key (urlsafe base64 of 32 bytes)") from None
    return key


def _hash_key(key: bytes) -> bytes:
    # A key of its own for hashing: the Fernet key's signing half must not double as the lookup HMAC key.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HASH_KEY_INFO).derive(
        base64.urlsafe_b64decode(key)
    )


class UrlVault:
    """Seals and opens location URLs under a key ring; the first key is the primary (it seals and hashes)."""

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        self._fernets = [Fernet(key) for key in keys]
        self._ring = MultiFernet(self._fernets) if self._fernets else None
        self._hash_keys = [_hash_key(key) for key in keys]

    @property
    def is_enabled(self) -> bool:
        """Whether URLs are sealed (keys are configured)."""
        return self._ring is not None

    def seal(self, url: str) -> str:
        """The text to store for url: sealed under the primary key, or url itself without keys."""
        if self._ring is None:
            return url
        return SEALED_PREFIX + self._ring.encrypt(url.encode("utf-8", "surrogateescape")).decode("ascii")

    def open(self, stored: str) -> str:
        """The URL a stored value holds; UrlNotReadableError for a sealed value no key opens."""
        if not is_sealed(stored):
            return stored
        if self._ring is None:
            raise UrlNotReadableError("a sealed location URL, and no location encryption key is configured")
        try:
            return self._ring.decrypt(stored.removeprefix(SEALED_PREFIX).encode("ascii")).decode(
                "utf-8", "surrogateescape"
            )
        except (InvalidToken, UnicodeError):
            raise UrlNotReadableError("a sealed location URL no configured key opens (tampered or wrong key)") from None

    def digest(self, url: str) -> str:
        """The hash to store for a data key (or URL) written now (hex, 64 characters)."""
        if not self._hash_keys:
            return plain_digest(url)
        return self._keyed(self._hash_keys[0], url)

    def digests(self, url: str) -> list[str]:
        """Every hash a row of this data key may carry, for lookups: no half-done migration hides a duplicate.

        One per key of the ring (a rotation under way) and the plain SHA-256 (an `encrypt` under way).
        """
        return [*(self._keyed(key, url) for key in self._hash_keys), plain_digest(url)]

    def resealed(self, stored: str) -> tuple[str, str] | None:
        """A stored value sealed under the primary key, with the URL it holds; None if it is sealed so already.

        Raises UrlNotReadableError if no key of the ring opens it: it cannot be rotated, only reported.
        """
        if self._ring is None:
            return None
        if not is_sealed(stored):
            return self.seal(stored), stored
        try:
            self._fernets[0].decrypt(stored.removeprefix(SEALED_PREFIX).encode("ascii"))
        except InvalidToken:
            url = self.open(stored)  # under an older key of the ring, or UrlNotReadableError
            return self.seal(url), url
        return None

    def needs_rotation(self, stored: str) -> bool:
        """Whether a stored value is not sealed under the primary key (plaintext, or an older key's token)."""
        return self.resealed(stored) is not None

    @staticmethod
    def _keyed(key: bytes, url: str) -> str:
        return hmac.new(key, url.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


PLAINTEXT = UrlVault()  # no keys: URLs stored as given, hashed with SHA-256 (the default of every service)


def includeme(config: Configurator) -> None:
    """The deployment's vault, built from the parsed key ring, as a service and in the registry."""
    keys = config.registry["locquota.settings"].location_encryption_keys
    vault = UrlVault([key.encode("ascii") for key in keys])
    config.registry["locquota.url_vault"] = vault
    config.register_service(vault, iface=UrlVault)
