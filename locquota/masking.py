"""Settings and URLs fit to print: secrets masked, so what the CLI shows can be pasted into a ticket.

A setting is secret when a word of its name says so (`swift_store_key`, `s3_store_secret_key`,
`location_encryption_keys`), unless the name ends in a word for where a secret lives (`..._key_file`):
a path is shown. In every other value a URL's password, and query parameters with secret names, are masked.
"""

import re

MASK = "***"
# Words that mark a secret wherever they appear in a name (`sslpassword`), and whole words that do (`swift_store_key`).
SECRET_PARTS = ("password", "passwd", "secret", "token", "credential")
SECRET_WORDS = frozenset({"key", "keys", "pwd"})
PLACE_WORDS = frozenset({"file", "dir", "path"})
QUERY_PARAMETER = re.compile(r"(?P<name>[^&=;]+)=(?P<value>[^&;]*)")


def is_secret_name(name: str) -> bool:
    """Whether a setting or parameter of this name holds a secret (its value is never shown)."""
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]
    if not words or words[-1] in PLACE_WORDS:
        return False
    return any(word in SECRET_WORDS or any(part in word for part in SECRET_PARTS) for word in words)


def mask_url(text: str) -> str:
    """The URL with its password and secret query parameters masked; text that is no URL as it is.

    Done on the text, not by parsing and rebuilding, so the rest stays as written (`sqlite:////var/x`).
    """
    scheme, separator, rest = text.partition("://")
    if not separator:
        return text
    cut = min((index for index in (rest.find("?"), rest.find("#")) if index >= 0), default=len(rest))
    base, tail = rest[:cut], rest[cut:]
    userinfo, at, host = base.rpartition("@")
    if at and ":" in userinfo:
        base = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query, hash_mark, fragment = tail.partition("#")
    query = QUERY_PARAMETER.sub(
        lambda match: f"{match['name']}={MASK}" if is_secret_name(match["name"]) else match[0], query
    )
    return f"{scheme}{separator}{base}{query}{hash_mark}{fragment}"


def masked(name: str, value: str) -> str:
    """A setting's value as it may be printed: all of it masked if the name is secret, else its URLs' secrets."""
    if is_secret_name(name):
        return MASK if value else ""
    return mask_url(value)
