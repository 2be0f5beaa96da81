from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    """GET /v1/openapi.json."""
    config.add_route("openapi", "/v1/openapi.json")
    config.scan(".views")
