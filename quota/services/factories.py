"""Service factories: the only code that looks at the request to build the quota services."""

from pyramid.request import Request

from locquota.clock import Clock
from quota.services.limits import LimitService
from quota.services.usage import UsageReader, UsageService
from quota.services.usage_cache import UsageCache


def limit_service_factory(_context: object, request: Request) -> LimitService:
    """Limits with this deployment's defaults."""
    return LimitService(
        request.db,
        request.find_service(Clock),
        request.settings.default_limits,
        request.registry.get("locquota.unified_limits"),
    )


def usage_reader_factory(_context: object, request: Request) -> UsageReader:
    """Usage read from this request's database session."""
    cache = request.find_service(UsageCache)
    return UsageReader(request.db, request.find_service(Clock), request.find_service(LimitService), cache.ttl_seconds)


def usage_service_factory(_context: object, request: Request) -> UsageService:
    """Usage reads through the shared Redis copy; the database reader is built only on a miss."""
    return UsageService(request.find_service(UsageCache), lambda: request.find_service(UsageReader))
