"""Liveness and readiness probes for load balancers and orchestrators."""

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from locquota.cache import Cache
from locquota.errors import ServiceUnavailable


@view_config(route_name="health.live", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def healthz(_request: Request) -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@view_config(route_name="health.ready", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def readyz(request: Request) -> dict[str, object]:
    """The database answers (else 503); the cache is reported but its outage does not make us unready."""
    try:
        request.db.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("The database is unreachable.", database="down") from exc
    cache = request.find_service(Cache)
    cache_state = "up" if cache.ping() else ("down" if cache.is_enabled else "disabled")
    return {"status": "ok", "database": "up", "cache": cache_state}


def includeme(config: Configurator) -> None:
    """The probe routes, and the OpenAPI document of every route but Glance's (needing no identity either)."""
    config.add_route("health.live", "/healthz")
    config.add_route("health.ready", "/readyz")
    config.scan(__name__)
    config.include("locquota.openapi")
