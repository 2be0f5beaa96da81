"""Request timing by route name (never the raw path: a flood of 404 paths would be unbounded labels)."""

import time
from collections.abc import Callable

from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response

from metrics.instruments import HTTP_REQUEST_DURATION

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def timing_tween_factory(handler: Callable[[Request], Response], _registry: Registry) -> Callable[[Request], Response]:
    """Observe every request's duration, including its commit, by route, method and status."""

    def timing_tween(request: Request) -> Response:
        started, status = time.perf_counter(), 500
        try:
            response = handler(request)
            status = response.status_code
            return response
        finally:
            route = request.matched_route.name if request.matched_route is not None else "unmatched"
            method = request.method if request.method in KNOWN_METHODS else "other"
            HTTP_REQUEST_DURATION.labels(route, method, str(status)).observe(time.perf_counter() - started)

    return timing_tween
