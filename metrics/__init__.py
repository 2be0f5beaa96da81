from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    """Prometheus instruments and /metrics (SPEC section 7) are added here by the metrics work."""
