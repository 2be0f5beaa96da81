"""GET /metrics: the Prometheus text format, or OpenMetrics when the scraper asks for it."""

import os

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from locquota.cache import Cache
from locquota.clock import Clock
from metrics.collectors import ScrapeCollector


class ProcessInstruments:
    """The instruments of the one process serving (the default registry), outside multiprocess mode."""

    def collect(self) -> list[Metric]:
        """Everything the default registry holds."""
        return list(REGISTRY.collect())


@view_config(route_name="metrics", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def metrics(request: Request) -> Response:
    """One scrape: the instruments of every process (multiprocess mode) or of this one, and the gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # sums the files every worker (and scrubber) wrote
    else:
        registry.register(ProcessInstruments())
    settings = request.settings
    collector = ScrapeCollector(
        request.registry["locquota.session_factory"],
        request.find_service(Clock),
        request.find_service(Cache),
        settings.default_limits,
        unified=request.registry.get("locquota.unified_limits"),
        top_tenants=settings.metrics_top_tenants,
        timeout_seconds=settings.metrics_query_timeout_seconds,
    )
    registry.register(collector)
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(body=encode(registry))
    response.headers["Content-Type"] = content_type
    return response
