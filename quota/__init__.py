from pyramid.config import Configurator


def includeme(config: Configurator) -> None:
    """Limits, the usage ledger and the usage API (SPEC section 5) are added here by the quota work."""
