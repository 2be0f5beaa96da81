"""Every effective setting as an .ini line, where it came from, secrets masked: what `locquota config show` prints."""

from collections.abc import Iterator, Mapping
from enum import StrEnum

from locquota.environment import variable_of
from locquota.masking import masked
from locquota.settings import PARSERS, PREFIX, QUOTA_PREFIX, RENAMED, STORE_PREFIX, Settings

FROM_INI = ".ini"
DEFAULT = "default"


def ini_value(value: object) -> str:
    """A parsed value written back as the .ini would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, tuple):
        return ", ".join(":".join(item) if isinstance(item, tuple) else str(item) for item in value)
    return str(value)


def setting_lines(raw: Mapping[str, str], settings: Settings, environ: Mapping[str, str]) -> Iterator[str]:
    """`key = value  (source)` for every locquota.* setting: parsed ones, default limits, store options.

    The source is the LOCQUOTA_* variable that set it, the .ini, or the default.
    """
    for name in PARSERS:
        key = PREFIX + name
        value = ini_value(getattr(settings, RENAMED.get(name, name)))
        if variable_of(name) in environ:
            source = variable_of(name)
        elif key in raw:
            source = FROM_INI
        elif name == "location_encryption_keys" and settings.location_encryption_key_file:
            source = "locquota.location_encryption_key_file"
        else:
            source = DEFAULT
        yield _line(key, masked(name, value), source)
    for resource, limit in settings.default_limits.items():
        key = QUOTA_PREFIX + resource
        yield _line(key, str(limit), FROM_INI if key in raw else DEFAULT)
    for store, options in sorted(settings.store_options.items()):
        for option, value in sorted(options.items()):
            yield _line(f"{STORE_PREFIX}{store}.{option}", masked(option, value), FROM_INI)


def _line(key: str, value: str, source: str) -> str:
    return f"{key} = {value}  ({source})"
