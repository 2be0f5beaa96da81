"""Limits from Keystone's unified limits (limits_source = keystone), read through oslo.limit.

Keystone holds the registered limit of each of Glance's resources (image_size_total and image_stage_total
in MiB, image_count_total, image_count_uploading) and per-project overrides. locquota only reads them:
admission stays exact in its own ledger (a conditional UPDATE of the usage row), never oslo.limit's
count-then-check. A project's limits are cached for `unified_limits_cache_seconds` (in this process), so
admission costs no Keystone round trip while the cache is warm. A resource Keystone has no limit for is
0, as oslo.limit and Glance read it (register every resource). Keystone unreachable: 503, never "unlimited".

oslo.limit reads its options (auth_url, the service user, endpoint_id, ...) from the `[oslo_limit]`
section of oslo.config's global configuration: the file `locquota.unified_limits_config_file` names.
"""

import configparser
import threading
import time
from collections.abc import Callable, Collection

from keystoneauth1 import loading
from keystoneauth1.exceptions import ClientException
from openstack.exceptions import SDKException
from oslo_config import cfg
from oslo_limit import limit

from locquota.errors import KeystoneUnavailable
from locquota.settings import SettingsError
from quota.models import TENANT_RESOURCES, Resource

RESOURCE_NAMES = [resource.value for resource in TENANT_RESOURCES]
GROUP = "oslo_limit"
# What reaching Keystone can raise: keystoneauth1's (connection, auth, HTTP) and openstacksdk's errors.
KEYSTONE_ERRORS = (ClientException, SDKException, OSError)


class UnifiedLimits:
    """Each project's limits as Keystone says, for a few seconds at a time; thread-safe."""

    def __init__(self, config_file: str, cache_seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        configure_oslo_limit(config_file)
        self._ttl, self._monotonic = cache_seconds, monotonic
        self._enforcer: limit.Enforcer | None = None
        self._cache: dict[str | None, tuple[float, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def for_project(self, project_id: str) -> tuple[dict[Resource, int], frozenset[Resource]]:
        """The project's limits (MiB for sizes), and which of them the project overrides in Keystone."""
        registered = self._cached(None, lambda enforcer: dict(enforcer.get_registered_limits(RESOURCE_NAMES)))
        own = self._cached(project_id, lambda enforcer: dict(enforcer.get_project_limits(project_id, None)))
        values = {Resource(name): int(own.get(name, registered.get(name, 0))) for name in RESOURCE_NAMES}
        return values, frozenset(Resource(name) for name in RESOURCE_NAMES if name in own)

    def _cached(self, key: str | None, read: Callable[[limit.Enforcer], dict[str, int]]) -> dict[str, int]:
        now = self._monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            value = read(self._connected())
        except KEYSTONE_ERRORS as exc:
            raise KeystoneUnavailable(
                "Keystone, where this deployment's limits live, cannot be reached; try again later."
            ) from exc
        with self._lock:
            self._cache[key] = (now + self._ttl, value)
        return value

    def _connected(self) -> limit.Enforcer:
        """oslo.limit's enforcer, made on first use: making it asks Keystone for the service's endpoint."""
        if self._enforcer is None:
            self._enforcer = limit.Enforcer(_no_usage, cache=False)
        return self._enforcer


def configure_oslo_limit(config_file: str) -> None:
    """Give oslo.limit the [oslo_limit] options of config_file.

    oslo.limit reads only the process-global cfg.CONF, and parsing that again would check the required
    options of every library sharing it (keystonemiddleware's among them): the options are set as
    overrides in their group instead, the auth plugin's registered first. It also keeps one Keystone
    connection per process, made from them: dropped, so the one made next uses these.
    """
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(config_file) or not parser.has_section(GROUP):
        raise SettingsError(f"locquota.unified_limits_config_file = {config_file!r}: no [{GROUP}] section there")
    options = dict(parser.items(GROUP))
    if auth_type := options.get("auth_type"):
        plugin = loading.get_auth_plugin_conf_options(loading.get_plugin_loader(auth_type))
        cfg.CONF.register_opts([opt for opt in plugin if opt.dest not in cfg.CONF[GROUP]], group=GROUP)
    for name, value in options.items():
        try:
            cfg.CONF.set_override(name, value, group=GROUP)
        except (cfg.NoSuchOptError, ValueError) as exc:
            raise SettingsError(f"{config_file}: [{GROUP}] {name}: {exc}") from None
    limit._SDK_CONNECTION = None  # oslo.limit offers no reset


def _no_usage(_project_id: str, _resource_names: Collection[str]) -> dict[str, int]:
    """oslo.limit's usage callback, never called: locquota admits in its own ledger, not with enforce()."""
    return {}
