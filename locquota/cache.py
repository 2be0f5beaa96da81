"""Redis as a cache that may vanish: every call degrades to a miss, never to an error.

The database is the source of truth; callers fall back to it whenever this answers None.
"""

import json
import logging

import redis
from pyramid.config import Configurator
from redis.connection import parse_url
from redis.sentinel import Sentinel

from metrics.instruments import CACHE_ERRORS

log = logging.getLogger(__name__)


class Cache:
    """A JSON cache in Redis; `None` client means caching is switched off."""

    def __init__(self, client: redis.Redis | None) -> None:
        self._client = client

    @property
    def is_enabled(self) -> bool:
        """Whether a Redis URL is configured at all."""
        return self._client is not None

    def ping(self) -> bool:
        """Whether Redis answers right now."""
        if self._client is None:
            return False
        try:
            return bool(self._client.ping())
        except redis.RedisError as exc:
            log.warning("cache unreachable: %s", exc)
            CACHE_ERRORS.labels("ping").inc()
            return False

    def get_json(self, key: str) -> object | None:
        """The cached value, or None on a miss or any Redis failure."""
        if self._client is None:
            return None
        try:
            raw = self._client.get(key)
        except redis.RedisError as exc:
            log.warning("cache read failed: %s", exc)
            CACHE_ERRORS.labels("get").inc()
            return None
        return None if raw is None else json.loads(raw)

    def set_json(self, key: str, value: object, ttl_seconds: int) -> None:
        """Store a value; a failure only costs a later miss."""
        if self._client is None:
            return
        try:
            self._client.set(key, json.dumps(value), ex=ttl_seconds)
        except redis.RedisError as exc:
            log.warning("cache write failed: %s", exc)
            CACHE_ERRORS.labels("set").inc()

    def forget(self, *keys: str) -> bool:
        """Drop keys; False (logged) when Redis could not be told, so the caller may try again later."""
        if self._client is None or not keys:
            return True
        try:
            self._client.delete(*keys)
        except redis.RedisError as exc:
            log.warning("cache delete failed: %s", exc)
            CACHE_ERRORS.labels("delete").inc()
            return False
        return True


def make_cache(
    redis_url: str, timeout_seconds: float, sentinels: tuple[str, ...] = (), sentinel_service: str = ""
) -> Cache:
    """A Cache on this URL, or on the master that Sentinel names (the URL then gives the database and credentials).

    Short timeouts, so a dead Redis costs milliseconds, not seconds.
    """
    timeouts = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    if sentinels:
        options = parse_url(redis_url) if redis_url else {}
        options.pop("host", None)
        options.pop("port", None)
        addresses = [_host_and_port(address) for address in sentinels]
        sentinel = Sentinel(addresses, sentinel_kwargs=timeouts, **timeouts)
        return Cache(sentinel.master_for(sentinel_service, retry=None, **options, **timeouts))
    if not redis_url:
        return Cache(None)
    return Cache(redis.Redis.from_url(redis_url, retry=None, **timeouts))


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")  # settings checked the form
    return host, int(port)


def includeme(config: Configurator) -> None:
    """The cache as a service."""
    settings = config.registry["locquota.settings"]
    cache = make_cache(
        settings.redis_url, settings.redis_timeout_seconds, settings.redis_sentinels, settings.redis_sentinel_service
    )
    config.registry["locquota.cache"] = cache  # for what is wired at start-up (quota's cache invalidation)
    config.register_service(cache, iface=Cache)
