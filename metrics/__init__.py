from pyramid.config import Configurator
from pyramid.tweens import INGRESS


def includeme(config: Configurator) -> None:
    """/metrics (its collectors run at scrape time), the request timing tween, and series at zero from the start."""
    config.add_route("metrics", "/metrics")
    config.add_tween("metrics.tween.timing_tween_factory", under=INGRESS)
    config.scan(".views")
    config.include(".families")
