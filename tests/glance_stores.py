"""glance_store configured for a test, in the process-wide cfg.CONF, and undone afterwards.

It has to be cfg.CONF: multi_backend's get(), delete(), get_size_from_uri_and_backend() and the store lookup
of add_with_multihash() read it whatever conf they are given. `enabled_backends` is Glance's own option
(glance_store registers none), so it is registered here and set before register_store_opts(), which
registers each backend's group from it. Overrides only: parsing cfg.CONF again would check the options of
every library that shares it. One configuration at a time per process.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from glance_store import multi_backend
from oslo_config import cfg


@contextmanager
def glance_stores(
    backends: Mapping[str, str], default: str, options: Mapping[str, Mapping[str, object]]
) -> Iterator[cfg.ConfigOpts]:
    """Stores named by backends ({name: type}), options by group; create_multi_stores() done; undone on exit."""
    conf = cfg.CONF
    if "enabled_backends" not in conf:
        conf.register_opt(cfg.DictOpt("enabled_backends"))
    conf.set_override("enabled_backends", dict(backends))
    multi_backend.register_store_opts(conf)
    groups = {"glance_store": {"default_backend": default}, **options}
    try:
        for group, values in groups.items():
            for name, value in values.items():
                conf.set_override(name, value, group=group)
        multi_backend.create_multi_stores(conf)
        yield conf
    finally:
        for group, values in groups.items():
            for name in values:
                conf.clear_override(name, group=group)
        conf.clear_override("enabled_backends")
