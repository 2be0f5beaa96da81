from pyramid.config import Configurator

from locquota.settings import LimitsSource
from quota.services.factories import limit_service_factory, usage_reader_factory, usage_service_factory
from quota.services.limits import LimitService
from quota.services.unified_limits import UnifiedLimits
from quota.services.usage import UsageReader, UsageService
from quota.services.usage_cache import UsageCache


def includeme(config: Configurator) -> None:
    """Limits, the usage cache (dropped after each commit that changes usage) and the usage API."""
    settings = config.registry["locquota.settings"]
    if settings.limits_source is LimitsSource.KEYSTONE:
        config.registry["locquota.unified_limits"] = UnifiedLimits(
            settings.unified_limits_config_file, settings.unified_limits_cache_seconds
        )
    usage_cache = UsageCache(config.registry["locquota.cache"], settings.usage_cache_ttl_seconds)
    usage_cache.forget_after_commit(config.registry["locquota.session_factory"])
    config.include(".routes")
    config.register_service(usage_cache, iface=UsageCache)
    config.register_service_factory(limit_service_factory, iface=LimitService)
    config.register_service_factory(usage_reader_factory, iface=UsageReader)
    config.register_service_factory(usage_service_factory, iface=UsageService)
    config.scan(".views")
