"""Service factories: the only code that looks at the request to build the quota services."""

from pyramid.request import Request

from locquota.clock import Clock
from quota.services.limits import LimitService
from quota.services.usage import UsageService
from quota.services.usage_cache import UsageCache


def limit_service_factory(_context: object, request: Request) -> LimitService:
    """Limits with this deployment's defaults."""
    return LimitService(request.db, request.find_service(Clock), request.settings.default_limits)


def usage_service_factory(_context: object, request: Request) -> UsageService:
    """Usage reads through the shared Redis copy."""
    return UsageService(
        request.db, request.find_service(Clock), request.find_service(LimitService), request.find_service(UsageCache)
    )
