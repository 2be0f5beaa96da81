"""Every locquota.* setting, parsed and checked once at start-up.

Only this module reads raw settings; the rest of the code reads `request.settings` (a frozen Settings)
or takes values as constructor arguments. A typo in the .ini fails the boot with the key's name.
"""

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.settings import asbool, aslist

from locquota.crypto import parse_key
from locquota.environment import unknown_variables, variable_of

PREFIX = "locquota."
# .ini names kept as Glance spells them, mapped to fields that carry their unit.
RENAMED = {"scrub_time": "scrub_time_seconds", "wakeup_time": "wakeup_time_seconds"}
STORE_PREFIX = "locquota.store."
QUOTA_PREFIX = "locquota.quota."
# Settings whose values are secrets: an error names the key, never the value.
SECRET_SETTINGS = frozenset({"location_encryption_keys"})
# Default limit per quota resource (SPEC section 5); -1 is unlimited. Sizes in MiB, as Glance's unified limits.
DEFAULT_LIMITS = {
    "image_size_total": -1,
    "image_count_total": -1,
    "image_count_uploading": -1,
    "image_stage_total": -1,
    "locations_per_image": 10,  # Glance's image_location_quota
}


class SettingsError(ValueError):
    """A bad .ini value; the message names the key."""


class LimitsSource(StrEnum):
    """Where tenants' limits come from."""

    LOCAL = "local"  # the .ini's defaults and locquota's own per-tenant overrides
    KEYSTONE = "keystone"  # Keystone's unified limits, through oslo.limit


class AuthStrategy(StrEnum):
    """How a request's identity is established (SPEC section 4)."""

    KEYSTONE = "keystone"
    TOKENS = "tokens"
    NOAUTH = "noauth"


def _boolean(value: str) -> bool:
    if value.strip().lower() not in {"true", "false", "yes", "no", "on", "off", "1", "0"}:
        raise ValueError("expected true or false")
    return asbool(value)


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("expected a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("expected zero or a positive integer")
    return number


# The largest limit: just under 2**43 MiB (8 EiB), so its size in bytes fits a signed 64-bit column.
MAX_LIMIT = 2**43 - 1


def _limit(value: str) -> int:
    """A limit: a non-negative integer up to MAX_LIMIT, or -1 for unlimited (Glance's convention)."""
    number = int(value)
    if not -1 <= number <= MAX_LIMIT:
        raise ValueError(f"expected an integer from 0 to {MAX_LIMIT}, or -1 for unlimited")
    return number


def _positive_seconds(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("expected a positive number of seconds")
    return number


def _names(value: str) -> tuple[str, ...]:
    """A list of names separated by commas and/or white space (Glance writes `file, http`)."""
    return tuple(aslist(value.replace(",", " ")))


def _backends(value: str) -> tuple[tuple[str, str], ...]:
    """Glance's enabled_backends: `name:type` pairs (`fast:file, ceph:rbd`), names unique."""
    pairs = []
    for item in _names(value):
        name, sep, kind = item.partition(":")
        if not sep or not name.strip() or not kind.strip():
            raise ValueError(f"{item!r}: expected name:type, as in `fast:file, ceph:rbd`")
        pairs.append((name.strip(), kind.strip()))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("a store name appears twice")
    if not pairs:
        raise ValueError("no store named")
    return tuple(pairs)


IMPORT_METHODS = ("glance-direct", "web-download", "copy-image")


def _import_methods(value: str) -> tuple[str, ...]:
    """Glance's enabled_import_methods (glance-direct, web-download, copy-image); empty turns import off."""
    methods = _names(value.replace("[", " ").replace("]", " ").replace("'", " ").replace('"', " "))
    unknown = [method for method in methods if method not in IMPORT_METHODS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not an import method ({', '.join(IMPORT_METHODS)})")
    return tuple(dict.fromkeys(methods))


def _ports(value: str) -> tuple[int, ...]:
    """TCP ports separated by commas and/or white space."""
    ports = tuple(int(port) for port in _names(value))
    if any(not 0 < port < 65536 for port in ports):
        raise ValueError("expected ports from 1 to 65535")
    return ports


def _lower_names(value: str) -> tuple[str, ...]:
    return tuple(name.lower() for name in _names(value))


def _staging_uri(value: str) -> str:
    """Glance's node_staging_uri: a file:// directory (the staging store's root); empty turns staging off."""
    value = value.strip()
    if value and not value.startswith("file://"):
        raise ValueError("expected a file:// URL of a directory (file:///var/lib/locquota/staging)")
    return value


def _key_ring(value: str) -> tuple[str, ...]:
    """Fernet keys separated by commas and/or white space, primary first; each checked, none echoed."""
    keys = _names(value)
    for number, key in enumerate(keys, start=1):
        try:
            parse_key(key)
        except ValueError as exc:
            raise ValueError(f"key #{number} is {exc}") from None
    return keys


def _read_key_file(path: str) -> str:
    """The keys in a file only the service may read (one a line; blank lines and # comments skipped)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror})") from None
    if mode & 0o077:
        raise ValueError(f"readable or writable by group or others (mode {mode & 0o777:o}); chmod 600 it")
    with open(path, encoding="ascii", errors="replace") as file:
        lines = [line.split("#", 1)[0].strip() for line in file]
    return " ".join(line for line in lines if line)


def _default_limits(raw: Mapping[str, str]) -> dict[str, int]:
    """locquota.quota.<resource> keys over DEFAULT_LIMITS; the quota package overrides them per tenant."""
    limits = dict(DEFAULT_LIMITS)
    for key, value in raw.items():
        if key.startswith(QUOTA_PREFIX):
            resource = key.removeprefix(QUOTA_PREFIX)
            if resource not in DEFAULT_LIMITS:
                raise SettingsError(f"{key}: unknown quota resource (known: {', '.join(DEFAULT_LIMITS)})")
            try:
                limits[resource] = _limit(value)
            except ValueError as exc:
                raise SettingsError(f"{key} = {value!r}: {exc}") from exc
    return limits


def _addresses(value: str) -> tuple[str, ...]:
    """host:port pairs (Redis Sentinel's), separated by commas and/or white space."""
    addresses = _names(value)
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{address!r} is not host:port")
    return addresses


def _from_environment(environ: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The LOCQUOTA_<NAME> variables that are set, as locquota.<name> keys."""
    return {PREFIX + name: environ[variable_of(name)] for name in names if variable_of(name) in environ}


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse LOCQUOTA_* variables nothing reads: a misspelt override would otherwise be ignored in silence."""
    problem = unknown_variables(environ, PARSERS)
    if problem:
        raise SettingsError(problem)


def _store_options(raw: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Group locquota.store.<name>.<option> keys by store name, for the store plug-ins to check."""
    options: dict[str, dict[str, str]] = {}
    for key, value in raw.items():
        if key.startswith(STORE_PREFIX):
            name, _, option = key.removeprefix(STORE_PREFIX).partition(".")
            if not name or not option:
                raise SettingsError(f"{key}: expected locquota.store.<store>.<option>")
            options.setdefault(name, {})[option] = value
    return options


# The parser of every locquota.<name> key, by .ini name (RENAMED maps a few to their field).
PARSERS: dict[str, Callable[[str], object]] = {
    "database_url": str.strip,
    "auto_migrate": _boolean,
    "redis_url": str.strip,
    "redis_timeout_seconds": _positive_seconds,
    "auth_strategy": lambda v: AuthStrategy(v.strip()),
    "allow_insecure_noauth": _boolean,
    "policy_file": str.strip,
    "limits_source": lambda v: LimitsSource(v.strip()),
    "unified_limits_config_file": str.strip,
    "unified_limits_cache_seconds": _positive_seconds,
    "enabled_stores": _names,
    "default_store": str.strip,
    "enabled_backends": _backends,
    "default_backend": str.strip,
    "show_multiple_locations": _boolean,
    "show_image_direct_url": _boolean,
    "max_request_body_bytes": _positive_int,
    "client_idle_timeout_seconds": _positive_seconds,
    "image_size_cap_bytes": _positive_int,
    "upload_chunk_bytes": _positive_int,
    "upload_lease_seconds": _positive_int,
    "limit_param_default": _positive_int,
    "api_limit_max": _positive_int,
    "delayed_delete": _boolean,
    "scrub_time": _non_negative_int,
    "wakeup_time": _positive_int,
    "scrub_pool_size": _positive_int,
    "scrub_batch_size": _positive_int,
    "scrub_lease_seconds": _positive_int,
    "scrub_retry_base_seconds": _positive_int,
    "scrub_retry_max_seconds": _positive_int,
    "usage_cache_ttl_seconds": _positive_int,
    "redis_sentinels": _addresses,
    "redis_sentinel_service": str.strip,
    "metrics_query_timeout_seconds": _positive_seconds,
    "metrics_top_tenants": _non_negative_int,
    "location_encryption_keys": _key_ring,
    "location_encryption_key_file": str.strip,
    "node_staging_uri": _staging_uri,
    "enabled_import_methods": _import_methods,
    "import_allowed_schemes": _lower_names,
    "import_disallowed_schemes": _lower_names,
    "import_allowed_hosts": _lower_names,
    "import_disallowed_hosts": _lower_names,
    "import_allowed_ports": _ports,
    "import_disallowed_ports": _ports,
    "web_download_timeout_seconds": _positive_seconds,
    "import_workers": _positive_int,
    "import_lease_seconds": _positive_int,
    "image_member_quota": int,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed settings. Defaults are the embedded ones: SQLite file, Redis on localhost if it answers."""

    database_url: str = "sqlite:///locquota.sqlite"
    auto_migrate: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_seconds: float = 0.25
    auth_strategy: AuthStrategy = AuthStrategy.TOKENS
    allow_insecure_noauth: bool = False
    policy_file: str = ""  # an oslo.policy YAML file overriding Glance's defaults (locquota.policies)
    enabled_stores: tuple[str, ...] = ("file",)
    default_store: str = "file"
    # Glance's multi-store configuration: `name:type` pairs and the default store's name. When set, they
    # replace enabled_stores/default_store (single-store settings, where each store's name is its type).
    enabled_backends: tuple[tuple[str, str], ...] = ()
    default_backend: str = ""
    store_options: dict[str, dict[str, str]] = field(default_factory=dict)
    show_multiple_locations: bool = False
    show_image_direct_url: bool = False
    max_request_body_bytes: int = 65536
    client_idle_timeout_seconds: float = 30.0
    image_size_cap_bytes: int = 1099511627776
    upload_chunk_bytes: int = 65536
    upload_lease_seconds: int = 300
    limit_param_default: int = 25
    api_limit_max: int = 1000
    delayed_delete: bool = False
    scrub_time_seconds: int = 0
    wakeup_time_seconds: int = 300
    scrub_pool_size: int = 1
    scrub_batch_size: int = 100
    scrub_lease_seconds: int = 300
    scrub_retry_base_seconds: int = 30
    scrub_retry_max_seconds: int = 3600
    default_limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    limits_source: LimitsSource = LimitsSource.LOCAL
    unified_limits_config_file: str = ""  # an oslo.config file whose [oslo_limit] section oslo.limit reads
    unified_limits_cache_seconds: float = 30.0
    usage_cache_ttl_seconds: int = 10
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_service: str = "mymaster"
    metrics_query_timeout_seconds: float = 2.0
    metrics_top_tenants: int = 50
    # The key ring of location URL encryption (primary first); kept out of repr, so never printed or logged.
    location_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    location_encryption_key_file: str = ""
    # Interoperable image import (SPEC section 8b), with Glance's option names: the staging directory (its
    # store is Glance's os_glance_staging_store; empty: no staging, so no glance-direct or web-download),
    # the methods offered, and web-download's URL filter ([import_filtering_opts] in Glance).
    node_staging_uri: str = ""
    enabled_import_methods: tuple[str, ...] = IMPORT_METHODS
    import_allowed_schemes: tuple[str, ...] = ("http", "https")
    import_disallowed_schemes: tuple[str, ...] = ()
    import_allowed_hosts: tuple[str, ...] = ()
    import_disallowed_hosts: tuple[str, ...] = ()
    import_allowed_ports: tuple[int, ...] = (80, 443)
    import_disallowed_ports: tuple[int, ...] = ()
    web_download_timeout_seconds: float = 30.0
    import_workers: int = 2  # import tasks run at once in each API process (threads)
    import_lease_seconds: int = 300
    image_member_quota: int = 128  # projects an image may be shared with (Glance's option; negative: unlimited)

    @property
    def backends(self) -> tuple[tuple[str, str], ...]:
        """The stores as (name, type): enabled_backends, or each of enabled_stores named after its type."""
        return self.enabled_backends or tuple((name, name) for name in self.enabled_stores)

    @property
    def default_backend_name(self) -> str:
        """The store uploads go to when none is asked for."""
        return self.default_backend if self.enabled_backends else self.default_store

    @property
    def import_methods(self) -> tuple[str, ...]:
        """The import methods served: those enabled whose needs are met (staging; several stores to copy to)."""
        needs_staging = ("glance-direct", "web-download")
        return tuple(
            method
            for method in self.enabled_import_methods
            if (self.node_staging_uri or method not in needs_staging)
            and (self.is_multi_store or method != "copy-image")
        )

    @property
    def is_multi_store(self) -> bool:
        """Whether Glance's multi-store API shows (stores on images and locations, /v2/info/stores)."""
        return bool(self.enabled_backends)

    @classmethod
    def from_ini(cls, raw: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Self:
        """Parse every locquota.* key; raise SettingsError naming the key on any bad or unknown one.

        An environment variable LOCQUOTA_<NAME> (LOCQUOTA_DATABASE_URL) overrides locquota.<name>, so
        secrets stay out of committed .ini files.
        """
        check_environment(environ or {})
        raw = {**raw, **_from_environment(environ or {}, PARSERS)}
        values: dict[str, object] = {}
        for key, value in raw.items():
            if not key.startswith(PREFIX) or key.startswith((STORE_PREFIX, QUOTA_PREFIX)):
                continue
            name = key.removeprefix(PREFIX)
            if name not in PARSERS:
                raise SettingsError(f"{key}: unknown setting")
            try:
                values[RENAMED.get(name, name)] = PARSERS[name](value)
            except ValueError as exc:
                shown = key if name in SECRET_SETTINGS else f"{key} = {value!r}"
                raise SettingsError(f"{shown}: {exc}") from None if name in SECRET_SETTINGS else exc
        key_file = values.get("location_encryption_key_file")
        if key_file:
            if values.get("location_encryption_keys"):
                raise SettingsError(
                    "locquota.location_encryption_key_file: set it or locquota.location_encryption_keys, not both"
                )
            try:
                values["location_encryption_keys"] = _key_ring(_read_key_file(str(key_file)))
            except ValueError as exc:
                raise SettingsError(f"locquota.location_encryption_key_file = {key_file!r}: {exc}") from None
        settings = cls(
            **values,  # type: ignore[arg-type]
            store_options=_store_options(raw),
            default_limits=_default_limits(raw),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules that no single parser sees."""
        if self.enabled_backends:
            if self.default_backend not in {name for name, _ in self.enabled_backends}:
                raise SettingsError(
                    f"locquota.default_backend = {self.default_backend!r}: not a store of locquota.enabled_backends"
                )
        elif self.default_store not in self.enabled_stores:
            raise SettingsError(f"locquota.default_store = {self.default_store!r}: not in locquota.enabled_stores")
        if self.auth_strategy is AuthStrategy.NOAUTH and not self.allow_insecure_noauth:
            raise SettingsError(
                "locquota.auth_strategy = noauth trusts any caller's headers; "
                "set locquota.allow_insecure_noauth = true to run it (development only)"
            )
        if self.limit_param_default > self.api_limit_max:
            raise SettingsError("locquota.limit_param_default: larger than locquota.api_limit_max")
        if not self.database_url:
            raise SettingsError("locquota.database_url: empty")
        if self.upload_lease_seconds <= 2 * self.client_idle_timeout_seconds:
            # An upload renews its lease when a chunk arrives past half of it; chunks are at most the idle
            # timeout apart, so a live upload's lease could otherwise run out between two chunks.
            raise SettingsError(
                "locquota.upload_lease_seconds: must be more than twice locquota.client_idle_timeout_seconds"
            )
        if self.import_lease_seconds <= 2 * self.web_download_timeout_seconds:
            # A task renews its lease between reads; reads are at most the timeout apart.
            raise SettingsError(
                "locquota.import_lease_seconds: must be more than twice locquota.web_download_timeout_seconds"
            )
        if self.limits_source is LimitsSource.KEYSTONE and not self.unified_limits_config_file:
            raise SettingsError(
                "locquota.limits_source = keystone: set locquota.unified_limits_config_file to the oslo.config "
                "file whose [oslo_limit] section says how to reach Keystone"
            )
        if self.redis_sentinels and not self.redis_sentinel_service:
            raise SettingsError("locquota.redis_sentinel_service: empty, but locquota.redis_sentinels is set")


def includeme(config: Configurator) -> None:
    """Parse the settings into the registry and expose them as request.settings."""
    config.registry["locquota.settings"] = Settings.from_ini(config.get_settings(), os.environ)
    config.add_request_method(_request_settings, "settings", reify=True)


def _request_settings(request: Request) -> Settings:
    return request.registry["locquota.settings"]
